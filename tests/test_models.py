"""Models against plain Python loops and closed-form backpropagation, on tiny shapes.

Tolerances: float32 forward passes of a few matmuls of size <= 8 agree with a reference built
from the same operations in another order to ~1e-6; 1e-5 leaves room and still fails on any
wrong term (a missing bias or a transposed kernel changes the outputs by O(0.1)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.theory import initializers
from isometry.engine import models

B, T, D, H, C = 3, 5, 4, 6, 10


def _rnn_params(key, gain=1.0):
  params = models.init_rnn(key, D, H, C, initializers.get_initializer("orthogonal", gain))
  # Nonzero biases, so a dropped bias term shows.
  k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
  params["bias"] = 0.1 * jax.random.normal(k1, (H,))
  params["readout"]["b"] = 0.1 * jax.random.normal(k2, (C,))
  return params


def _loop_rnn_states(params, x):
  x, u, w, b = (np.asarray(a, np.float64) for a in
                (x, params["input"], params["recurrent"], params["bias"]))
  h = np.zeros((x.shape[0], w.shape[0]))
  states = []
  for t in range(x.shape[1]):
    h = np.tanh(x[:, t] @ u + h @ w + b)
    states.append(h)
  return np.stack(states)


@pytest.mark.parametrize("unroll", [1, 2, 4])  # 2 does not divide T = 5.
def test_rnn_matches_python_loop(key, unroll):
  params = _rnn_params(key)
  x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, D))
  states = _loop_rnn_states(params, x)
  logits = states[-1] @ np.asarray(params["readout"]["w"]) + np.asarray(params["readout"]["b"])
  np.testing.assert_allclose(models.rnn_hidden_states(params, x, unroll), states, atol=1e-5)
  np.testing.assert_allclose(models.rnn_apply(params, x, unroll), logits, atol=1e-5)
  # The perturbed path (used for gradients through time) computes the same forward pass.
  np.testing.assert_allclose(models.rnn_apply(params, x, unroll, jnp.zeros((T, B, H))), logits,
                             atol=1e-5)


@pytest.mark.parametrize("unroll", [1, 2])
def test_tanh_recurrence_gradient_matches_autodiff_of_the_loop(key, unroll):
  """The hand-written backward pass (dW batched after the loop) against autodiff of a Python loop.

  float64, so the only difference is summation order: agreement to 1e-12 relative.
  """
  with jax.enable_x64(True):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    w = 0.5 * jax.random.normal(k1, (H, H), jnp.float64)
    drive = jax.random.normal(k2, (T, B, H), jnp.float64)
    h0 = 0.3 * jax.random.normal(k3, (B, H), jnp.float64)
    c = jax.random.normal(k4, (B, H), jnp.float64)

    def loop(w, drive, h0):
      h = h0
      for t in range(T):
        h = jnp.tanh(drive[t] + h @ w)
      return jnp.sum(jnp.sin(h) * c)

    custom = lambda w, drive, h0: jnp.sum(jnp.sin(models.tanh_recurrence(w, drive, h0, unroll)) * c)
    np.testing.assert_allclose(custom(w, drive, h0), loop(w, drive, h0), rtol=1e-12)
    expected = jax.grad(loop, argnums=(0, 1, 2))(w, drive, h0)
    got = jax.grad(custom, argnums=(0, 1, 2))(w, drive, h0)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)
    # Batched over a leading sweep axis (how the training sweep calls it).
    batched = jax.vmap(jax.grad(custom), in_axes=(0, None, None))(jnp.stack([w, 2 * w]), drive, h0)
    np.testing.assert_allclose(batched[1], jax.grad(loop)(2 * w, drive, h0), rtol=1e-12, atol=1e-14)


def test_rnn_gradient_through_time_matches_backprop_recursion(key):
  """dL/dh_t from the zero perturbation equals the BPTT recursion written out by hand.

  h_{t+1} = tanh(x_{t+1} U + h_t W + b), so dL/dh_t = (dL/dh_{t+1} * (1 - h_{t+1}^2)) W^T, and for
  L = sum(logits * c), dL/dh_{T-1} = c V^T.
  """
  params = _rnn_params(key, gain=1.1)
  x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, D))
  c = jax.random.normal(jax.random.fold_in(key, 3), (B, C))
  grad = jax.grad(lambda e: jnp.sum(models.rnn_apply(params, x, 1, e) * c))(jnp.zeros((T, B, H)))

  states = _loop_rnn_states(params, x)
  w = np.asarray(params["recurrent"], np.float64)
  delta = np.asarray(c, np.float64) @ np.asarray(params["readout"]["w"], np.float64).T
  expected = [delta]
  for t in range(T - 2, -1, -1):
    delta = (delta * (1 - states[t + 1] ** 2)) @ w.T
    expected.append(delta)
  np.testing.assert_allclose(grad, np.stack(expected[::-1]), atol=1e-5)


def test_lstm_matches_python_loop_and_gate_blocks(key):
  gain = 1.3
  params = models.init_lstm(key, D, H, C, initializers.get_initializer("orthogonal", gain))
  assert params["input"].shape == (D, 4 * H) and params["recurrent"].shape == (H, 4 * H)
  assert params["bias"].shape == (4 * H,)
  np.testing.assert_array_equal(params["bias"][H:2 * H], 1.0)  # Forget gate starts open.
  blocks = models.lstm_recurrent_blocks(params["recurrent"])
  assert blocks.shape == (4, H, H)
  # Every gate block is gain * orthogonal: W^T W = g^2 I (float32 QR, 1e-5).
  for block in blocks:
    np.testing.assert_allclose(block.T @ block, gain**2 * np.eye(H), atol=1e-5)
  np.testing.assert_array_equal(blocks[2], params["recurrent"][:, 2 * H:3 * H])

  x = jax.random.normal(jax.random.fold_in(key, 2), (B, T, D))
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  u, w, b = (np.asarray(params[k], np.float64) for k in ("input", "recurrent", "bias"))
  h = c = np.zeros((B, H))
  xs = np.asarray(x, np.float64)
  for t in range(T):
    z = xs[:, t] @ u + h @ w + b
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
  logits = h @ np.asarray(params["readout"]["w"]) + np.asarray(params["readout"]["b"])
  np.testing.assert_allclose(models.lstm_apply(params, x, unroll=2), logits, atol=1e-5)


def _dense_mlp(params, x, depth, phi=np.tanh):
  """The depth-`depth` network written out without scan or mask."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = phi(np.asarray(x, np.float64) @ p["input"]["w"] + p["input"]["b"])
  for l in range(depth - 1):
    h = phi(h @ p["hidden"]["w"][l] + p["hidden"]["b"][l])
  return h @ p["readout"]["w"] + p["readout"]["b"]


def test_masked_mlp_equals_unmasked_network_of_that_depth(key):
  max_depth, width = 5, 8
  params = models.init_mlp(key, D, C, max_depth, width,
                           initializers.get_initializer("gaussian", 1.2), sigma_b=0.3)
  assert params["hidden"]["w"].shape == (max_depth - 1, width, width)
  x = jax.random.normal(jax.random.fold_in(key, 1), (B, D))
  depths = jnp.arange(1, max_depth + 1)
  # All depths in one program: depth is a traced, vmapped argument.
  logits = jax.jit(jax.vmap(lambda d: models.mlp_apply(params, x, d)))(depths)
  for depth in range(1, max_depth + 1):
    np.testing.assert_allclose(logits[depth - 1], _dense_mlp(params, x, depth), atol=1e-5)
    # The same as a network built with exactly `depth` layers (no masked layers at all).
    truncated = {**params, "hidden": jax.tree.map(lambda a: a[:depth - 1], params["hidden"])}
    np.testing.assert_allclose(logits[depth - 1], models.mlp_apply(truncated, x, depth),
                               atol=1e-5)


def test_mlp_perturbation_gradient_vanishes_on_masked_layers(key):
  max_depth, width, depth = 4, 8, 2
  params = models.init_mlp(key, D, C, max_depth, width, initializers.get_initializer("orthogonal"))
  x = jax.random.normal(jax.random.fold_in(key, 1), (B, D))
  grad = jax.grad(lambda e: jnp.sum(models.mlp_apply(params, x, depth, "tanh", e)))(
      jnp.zeros((max_depth, B, width)))
  assert np.all(np.abs(grad[:depth]).sum(axis=(1, 2)) > 0)
  np.testing.assert_array_equal(grad[depth:], 0.0)


@pytest.mark.parametrize("name", ["orthogonal", "glorot_uniform", "glorot_normal", "gaussian"])
def test_mixed_initializer_selects_and_scales(key, name):
  names = ("gaussian", "glorot_normal", "glorot_uniform", "orthogonal")
  gain = 1.7
  init = jax.jit(lambda i, g: models.mixed_initializer(names, i, g)(key, (H, H)))
  got = init(names.index(name), gain)
  # gain * f_1(key) against f_gain(key): equal up to float32 rounding of the scale.
  np.testing.assert_allclose(got, initializers.get_initializer(name, gain)(key, (H, H)),
                             rtol=1e-5, atol=1e-6)


def test_unknown_cell():
  with pytest.raises(ValueError, match="unknown cell"):
    models.get_recurrent_cell("gru")
