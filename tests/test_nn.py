"""flax faces: the tanh cell against the engine's RNN, the mean-field MLP against the theory, the
delta-orthogonal conv, and the project's initializers as flax kernel_init.

Tolerances: float32 forward and backward passes of a few matmuls of size <= 8 computed in two
orders agree to ~1e-6; 1e-5 leaves room and fails on any wrong term (a dropped bias or a
transposed kernel changes the outputs by O(0.1)).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isometry.theory import diagnostics
from isometry.theory import freeprob
from isometry.theory import initializers
from isometry.theory import meanfield
from isometry.engine import models
from isometry.engine import nn as inn

B, T, D, H, C = 3, 5, 4, 6, 10
GAIN = 1.3


class _Classifier(nn.Module):
  """RNN(RNNCell) then a Dense read-out of the last state, as models.rnn_apply."""
  fast: bool = False

  @nn.compact
  def __call__(self, xs):
    if self.fast:
      h = inn.FastRNN(H, GAIN, name="rnn")(xs)
    else:
      # parent=None: the RNN adopts the cell ("rnn/cell", as FastRNN names it); a cell built
      # bound inside a compact method would stay the parent's ("RNNCell_0").
      h = nn.RNN(inn.RNNCell(H, GAIN, parent=None), name="rnn")(xs)[:, -1]
    return nn.Dense(C, name="readout")(h)


def _engine(params):
  return {**inn.engine_params(params["rnn"]["cell"]),
          "readout": {"w": params["readout"]["kernel"], "b": params["readout"]["bias"]}}


def test_rnn_cell_matches_the_engine_forward_and_gradient(key):
  k_init, k_x, k_y, k_b = jax.random.split(key, 4)
  xs = jax.random.normal(k_x, (B, T, D))
  labels = jax.random.randint(k_y, (B,), 0, C)
  params = jax.jit(_Classifier().init)(k_init, xs)["params"]
  # Nonzero biases, so a dropped bias term shows.
  params["rnn"]["cell"]["input"]["bias"] = 0.1 * jax.random.normal(k_b, (H,))
  # The fast module has the same params as nn.RNN(RNNCell): one tree serves both.
  fast_shapes = jax.eval_shape(_Classifier(fast=True).init, k_init, xs)["params"]
  assert jax.tree.structure(fast_shapes) == jax.tree.structure(params)

  def loss(logits):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  @jax.jit
  def all_three(params):
    scan = jax.value_and_grad(lambda p: loss(_Classifier().apply({"params": p}, xs)))(params)
    fast = jax.value_and_grad(lambda p: loss(_Classifier(True).apply({"params": p}, xs)))(params)
    engine = jax.value_and_grad(lambda p: loss(models.rnn_apply(p, xs)))(_engine(params))
    # One step of the cell against flax's SimpleCell with the same weights.
    cell_params = params["rnn"]["cell"]
    h0 = jnp.full((B, H), 0.3)
    ours = inn.RNNCell(H, GAIN).apply({"params": cell_params}, h0, xs[:, 0])[0]
    theirs = nn.SimpleCell(H).apply(
        {"params": {"i": cell_params["input"], "h": cell_params["recurrent"]}}, h0, xs[:, 0])[0]
    return scan, fast, engine, ours, theirs

  scan, fast, (e_value, e_grads), ours, theirs = all_three(params)
  for value, grads in (scan, fast):
    np.testing.assert_allclose(value, e_value, rtol=1e-5)
    for name, got in _engine(grads).items():
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, e_grads[name])
  np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_rnn_cell_initialization(key):
  cell = inn.RNNCell(H, GAIN)
  carry = cell.initialize_carry(key, (B, D))
  np.testing.assert_array_equal(carry, np.zeros((B, H)))
  params = jax.jit(cell.init)(key, carry, jnp.ones((B, D)))["params"]
  w = params["recurrent"]["kernel"]
  np.testing.assert_allclose(w.T @ w, GAIN**2 * np.eye(H), atol=1e-5 * GAIN**2)
  np.testing.assert_array_equal(params["input"]["bias"], 0.0)
  # Glorot-uniform input kernel: |U| <= sqrt(6 / (D + H)).
  assert float(jnp.abs(params["input"]["kernel"]).max()) <= np.sqrt(6 / (D + H))


def test_initializers_are_flax_kernel_inits(key):
  """Every 2-d initializer fits Dense's kernel_init (shape and dtype); values checked for the
  orthogonal one (W^T W = g^2 I) and the Gaussian one (variance g^2 / fan_in)."""
  x = jnp.ones((1, 64))
  for name in initializers.NAMES:
    if name == "delta_orthogonal":
      continue   # a conv kernel: see the delta-orthogonal conv test
    dense = nn.Dense(32, kernel_init=initializers.get_initializer(name, GAIN))
    shape = jax.eval_shape(dense.init, key, x)["params"]["kernel"]
    assert (shape.shape, shape.dtype) == ((64, 32), jnp.float32), name

  @jax.jit
  def kernels(key):
    return [nn.Dense(32, kernel_init=initializers.get_initializer(name, GAIN)).init(
        key, x)["params"]["kernel"] for name in ("orthogonal", "gaussian")]

  orthogonal, gaussian = kernels(key)
  np.testing.assert_allclose(orthogonal.T @ orthogonal, GAIN**2 * np.eye(32), atol=1e-5 * GAIN**2)
  # 2048 draws: the sample variance's relative standard deviation is sqrt(2 / 2048) = 3%.
  assert float(jnp.var(gaussian)) == pytest.approx(GAIN**2 / 64, rel=0.15)


def test_critical_mlp_scales_and_errors():
  mlp = inn.critical_mlp("tanh", depth=3, width=16, q_star=1.0)
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", 1.0))
  assert (mlp.sigma_w, mlp.sigma_b) == (sigma_w, sigma_b)
  assert float(meanfield.chi("tanh", mlp.sigma_w, mlp.sigma_b)) == pytest.approx(1.0, abs=1e-9)
  assert inn.critical_mlp("tanh", 3, 16, sigma_w=sigma_w, sigma_b=sigma_b) == mlp
  assert mlp.theory() == diagnostics.Theory("tanh", sigma_w, sigma_b, "orthogonal")
  with pytest.raises(ValueError, match="not 1"):
    inn.critical_mlp("tanh", 3, 16, sigma_w=1.0, sigma_b=0.5)
  with pytest.raises(ValueError, match="either"):
    inn.critical_mlp("tanh", 3, 16, q_star=1.0, sigma_w=sigma_w, sigma_b=sigma_b)
  with pytest.raises(ValueError, match="weights"):
    inn.critical_mlp("tanh", 3, 16, q_star=1.0, weights="uniform")


def test_mean_field_mlp_layers_have_the_stated_law(key):
  mlp = inn.MeanFieldMLP(depth=2, width=256, sigma_w=1.5, sigma_b=0.3, weights="gaussian",
                         num_outputs=3)
  params = jax.jit(mlp.init)(key, jnp.ones((5, 256)))["params"]
  assert set(params) == {"layer_0", "layer_1", "readout"}
  w, b = params["layer_1"]["kernel"], params["layer_1"]["bias"]
  # 65536 weights (relative std of the sample variance 0.55%) and 256 biases (8.8%).
  assert float(jnp.var(w)) == pytest.approx(1.5**2 / 256, rel=0.03)
  assert float(jnp.std(b)) == pytest.approx(0.3, rel=0.3)
  assert mlp.apply({"params": params}, jnp.ones((5, 256))).shape == (5, 3)


def test_critical_orthogonal_mlp_spread_matches_theory(key):
  """Spread of the squared singular values of a critical orthogonal tanh MLP against freeprob.

  q* = 1/16, depth 8, width 128: predicted mean 1 and spread L (mu_2 / mu_1**2 - 1) = 0.154.
  One network's moments fluctuate around the theory's at finite width (at small q* the
  variance wanders from layer to layer, THEORY.md): the dense spectra of six such networks
  (four inputs each) gave means 0.957-1.049 and spreads 0.144-0.175, about as wide at width
  256. Hence 10% on the mean and 25% on the spread, which still fail a non-critical network
  (chi = 1.05 moves the mean by 48%) or Gaussian weights (spread +L = +8).
  """
  q, depth, width = 1 / 16, 8, 128
  mlp = inn.critical_mlp("tanh", depth, width, q_star=q)
  params = jax.jit(mlp.init)(key, jnp.ones((width,)))["params"]
  xs = jnp.tanh(np.sqrt(q) * jax.random.normal(jax.random.fold_in(key, 1), (4, width)))

  @jax.jit
  def moments(params, xs, key):
    f = lambda x: mlp.apply({"params": params}, x)
    return jax.vmap(lambda x, k: diagnostics.spectral_moments(f, x, k, 32))(
        xs, jax.random.split(key, xs.shape[0]))

  result = moments(params, xs, jax.random.fold_in(key, 2))
  mean, variance = float(jnp.mean(result.mean)), float(jnp.mean(result.variance))
  p_mean, p_variance = freeprob.jacobian_moments(*mlp.theory()[:3], depth, mlp.weights)
  spread, p_spread = variance / mean**2, p_variance / p_mean**2
  assert p_spread > 0.05   # the comparison is not of two zeros
  assert mean == pytest.approx(p_mean, rel=0.1), (mean, p_mean)
  assert spread == pytest.approx(p_spread, rel=0.25), (spread, p_spread)


def test_delta_orthogonal_conv_is_an_isometry_times_gain(key):
  conv = inn.delta_orthogonal_conv(4, (3, 3), gain=GAIN)
  shape = (1, 5, 5, 4)
  params = jax.jit(conv.init)(key, jnp.ones(shape))

  def f(x):
    return conv.apply(params, x.reshape(shape)).reshape(-1)

  lam = diagnostics.jacobian_spectrum(f, jnp.zeros(int(np.prod(shape))))
  np.testing.assert_allclose(lam, GAIN**2, rtol=1e-5)
  with pytest.raises(ValueError, match="odd"):
    inn.delta_orthogonal_conv(4, (2, 2))
