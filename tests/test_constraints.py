"""Hard orthogonality constraints keep W^T W = g^2 I (or the singular values in a band) every step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isometry import constraints as C
from isometry.initializers import get_initializer

N = 16
GAIN = 1.5
STEPS = 200
# Tolerances on max |W^T W / g^2 - I| in float32 (eps 1.2e-7). A projection recomputed every
# step: rounding of polar/svd and of the 16-term dot products, a few n * eps ~ 2e-6 at worst;
# 1e-5 leaves room (measured 4e-7 for polar, 1.6e-6 for svd). The Cayley step is not
# re-projected, so its rounding accumulates over the 200 steps: measured 3e-6 at the settings
# below, bound 1e-4 (and 8e-5 at lr 10 with gradients of size 1000, hence reorthogonalize).
PROJECTION_TOL = 1e-5
CAYLEY_TOL = 1e-4


def _deviation(w, gain):
  return jnp.max(jnp.abs(w.T @ w / gain**2 - jnp.eye(w.shape[1], dtype=w.dtype)))


def _run(tx, w0, key, grad_scale, steps=STEPS):
  """Applies `steps` random Gaussian gradients of size grad_scale; returns the trajectory."""
  def body(carry, k):
    w, state = carry
    grad = grad_scale * jax.random.normal(k, w.shape, w.dtype)
    updates, state = tx.update(grad, state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), w

  _, ws = jax.lax.scan(body, (w0, tx.init(w0)), jax.random.split(key, steps))
  return ws


@pytest.fixture
def w0(key):
  return get_initializer("orthogonal", GAIN)(jax.random.fold_in(key, 0), (N, N), jnp.float32)


@pytest.mark.parametrize("grad_scale", [1.0, 1e3])
def test_projection_after_adam_stays_on_the_set(key, w0, grad_scale):
  tx = optax.chain(optax.adam(0.1), C.get_constraint("projection", GAIN))
  ws = _run(tx, w0, key, grad_scale)
  devs = jax.vmap(_deviation, in_axes=(0, None))(ws, GAIN)
  assert float(devs.max()) < PROJECTION_TOL
  # The weights did move (so the check is not vacuous).
  assert float(jnp.abs(ws[-1] - w0).max()) > 0.1


@pytest.mark.parametrize("lr,grad_scale,reorth", [(0.1, 1.0, False), (1e-3, 1e3, False),
                                                   (10.0, 1e3, True)])
def test_cayley_stays_on_the_set(key, w0, lr, grad_scale, reorth):
  tx = C.get_constraint("cayley", GAIN, learning_rate=lr, reorthogonalize=reorth)
  ws = _run(tx, w0, key, grad_scale)
  devs = jax.vmap(_deviation, in_axes=(0, None))(ws, GAIN)
  assert float(devs.max()) < (PROJECTION_TOL if reorth else CAYLEY_TOL)
  assert float(jnp.abs(ws[-1] - w0).max()) > 0.1


def test_cayley_is_a_descent_curve_with_the_riemannian_slope(key):
  # Wen & Yin: d/dtau L(Y(tau)) at 0 = -||A||_F^2 / 2 with A = G W^T - W G^T.
  with jax.enable_x64(True):
    k1, k2 = jax.random.split(key)
    w = get_initializer("orthogonal", GAIN)(k1, (6, 4), jnp.float64)
    target = jax.random.normal(k2, (6, 4), jnp.float64)
    loss = lambda w: jnp.sum(jnp.square(w - target))
    g = jax.grad(loss)(w)
    a = g @ w.T - w @ g.T
    tau = 1e-6
    tx = C.cayley_retraction(GAIN, tau)
    u, _ = tx.update(g, tx.init(w), w)
    slope = (loss(w + u) - loss(w)) / tau
    # Forward difference: error O(tau * second derivative) ~ 1e-6 relative.
    np.testing.assert_allclose(slope, -0.5 * jnp.sum(jnp.square(a)), rtol=1e-4)
    assert float(_deviation(w + u, GAIN)) < 1e-12  # tall W: W^T W preserved too.


def test_cayley_schedule_uses_step_count(key, w0):
  grad = jax.random.normal(key, w0.shape)
  schedule = lambda count: jnp.where(count == 0, 0.0, 0.1)
  tx = C.cayley_retraction(GAIN, schedule)
  state = tx.init(w0)
  u0, state = tx.update(grad, state, w0)
  u1, state = tx.update(grad, state, w0)
  assert float(jnp.abs(u0).max()) == 0.0
  assert float(jnp.abs(u1).max()) > 0.0
  assert int(state.count) == 2


@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_spectral_margin_keeps_singular_values_in_band(key, w0, margin):
  tx = optax.chain(optax.adam(0.1), C.get_constraint("margin", GAIN, margin=margin))
  ws = _run(tx, w0, key, 1.0)
  s = jnp.linalg.svd(ws, compute_uv=False)
  tol = PROJECTION_TOL * GAIN
  assert float(s.min()) > GAIN * (1 - margin) - tol
  assert float(s.max()) < GAIN * (1 + margin) + tol
  # The band is used, not collapsed to the orthogonal set: the spread reaches its edges.
  assert float(s.max() - s.min()) > GAIN * margin


def test_margin_zero_equals_projection(key):
  y = jax.random.normal(key, (N, N))
  w = jnp.zeros((N, N))
  u_proj, _ = C.stiefel_projection(GAIN).update(y, optax.EmptyState(), w)
  u_margin, _ = C.spectral_margin(GAIN, 0.0).update(y, optax.EmptyState(), w)
  # qdwh-polar against svd, both float32 on entries of size ~g / sqrt(n).
  np.testing.assert_allclose(u_margin, u_proj, atol=1e-5)


def test_projection_is_the_nearest_point(key):
  # Fan & Hoffman: the nearest g * Stiefel point to Y is g U V^T from Y's SVD (dense reference).
  with jax.enable_x64(True):
    y = np.asarray(jax.random.normal(key, (7, 5), jnp.float64))
    left, _, right = np.linalg.svd(y, full_matrices=False)
    u, _ = C.stiefel_projection(GAIN).update(jnp.asarray(y), optax.EmptyState(),
                                             jnp.zeros((7, 5)))
    np.testing.assert_allclose(u, GAIN * left @ right, atol=1e-10)


def test_wide_matrix_projection_has_orthonormal_rows(key):
  y = jax.random.normal(key, (4, 9))
  u, _ = C.stiefel_projection(GAIN).update(y, optax.EmptyState(), jnp.zeros((4, 9)))
  np.testing.assert_allclose(u @ u.T / GAIN**2, np.eye(4), atol=PROJECTION_TOL)


def test_masked_applies_only_to_the_kernel(key):
  params = {"kernel": get_initializer("orthogonal", GAIN)(key, (N, N), jnp.float32),
            "bias": jnp.zeros((N,))}
  mask = {"kernel": True, "bias": False}
  tx = optax.chain(optax.adam(0.1), optax.masked(C.stiefel_projection(GAIN), mask))
  grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert float(_deviation(new["kernel"], GAIN)) < PROJECTION_TOL
  adam_only, _ = optax.adam(0.1).update(grads["bias"], optax.adam(0.1).init(params["bias"]))
  np.testing.assert_allclose(updates["bias"], adam_only, rtol=1e-6)


def test_cayley_through_multi_transform(key):
  params = {"kernel": get_initializer("orthogonal", GAIN)(key, (N, N), jnp.float32),
            "bias": jnp.zeros((N,))}
  labels = {"kernel": "cayley", "bias": "adam"}
  tx = optax.multi_transform({"cayley": C.cayley_retraction(GAIN, 0.1), "adam": optax.adam(0.1)},
                             labels)
  grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(_deviation(new["kernel"], GAIN)) < CAYLEY_TOL
  assert float(jnp.abs(new["bias"]).max()) > 0


def test_projection_vmaps_over_gain(key):
  y = jax.random.normal(key, (N, N))
  gains = jnp.array([0.5, 1.0, 2.0])
  def project(gain):
    u, _ = C.stiefel_projection(gain).update(y, optax.EmptyState(), jnp.zeros((N, N)))
    return _deviation(u, gain)
  assert float(jax.jit(jax.vmap(project))(gains).max()) < PROJECTION_TOL


def test_expm_parametrization_is_scaled_orthogonal_for_random_a(key, w0):
  params = C.init_expm(w0, GAIN)
  # At a = 0 it reproduces the initial orthogonal weights.
  np.testing.assert_allclose(C.expm_parametrization(*params, gain=GAIN), w0, atol=1e-5)
  a = 3.0 * jax.random.normal(key, (N, N))
  w = C.expm_parametrization(params.base, a, GAIN)
  # expm of a skew matrix of norm ~ 3 sqrt(2 n) in float32 (Pade with scaling and squaring).
  assert float(_deviation(w, GAIN)) < 1e-4
  assert float(jnp.abs(w - w0).max()) > 0.1
  # Gradients flow into a.
  grad = jax.grad(lambda a: jnp.sum(C.expm_parametrization(params.base, a, GAIN)[0]))(a)
  assert float(jnp.abs(grad).max()) > 0


def test_expm_rejects_wrong_shapes():
  with pytest.raises(ValueError, match="n_in >= n_out"):
    C.init_expm(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="a must be"):
    C.expm_parametrization(jnp.eye(3), jnp.zeros((2, 2)))


def test_get_constraint_names_and_errors():
  for name in C.NAMES:
    assert isinstance(C.get_constraint(name, GAIN), optax.GradientTransformation)
  with pytest.raises(ValueError, match="none, projection, cayley, expm, margin"):
    C.get_constraint("qr", GAIN)
  with pytest.raises(ValueError, match="gain"):
    C.get_constraint("projection", 0.0)
  with pytest.raises(ValueError, match="margin"):
    C.get_constraint("margin", GAIN, margin=1.5)


def test_projection_needs_params_and_matrices():
  tx = C.stiefel_projection(GAIN)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones((2, 2)), tx.init(None))
  with pytest.raises(ValueError, match="matrices"):
    tx.update(jnp.ones((3,)), tx.init(None), jnp.ones((3,)))
