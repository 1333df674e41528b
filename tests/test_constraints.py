"""Hard orthogonality constraints keep W^T W = g^2 I (or the singular values in a band) every step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isometry.engine import constraints as C
from isometry.theory.initializers import get_initializer

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


# ---------------------------------------------------------------------------------------------
# Riemannian Adam / SGD. Known optima, on the manifold at every step, against Adam + projection.
#
# Measured (Brockett on St(8, 4) at gain 1.5, Procrustes on O(6); relative gap to the optimum):
# riemannian_adam(0.2) reaches 1e-6 in 197 / 131 steps, riemannian_sgd(0.02, momentum 0.9) in
# 121 / 122 steps; optax.adam + stiefel_projection (lr 0.002 to 0.05) stalls at gaps of 0.17 to
# 1.1 after 600 steps: elementwise Adam's direction is not tangent, and the fixed points of
# "Adam step, then project" are where the projection of m / sqrt(v) (not of the gradient)
# vanishes, which are not critical points of the loss on the manifold. Not asserted (a property
# of these problems, not a theorem for every one): the test records the baseline's gap.

RIEMANNIAN = {"adam": lambda lr, g: C.riemannian_adam(lr, g),
              "sgd": lambda lr, g: C.riemannian_sgd(lr, g, momentum=0.9)}
RIEMANNIAN_LR = {"adam": 0.2, "sgd": 0.02}
OPT_STEPS = 300
# Gap to the optimum, relative: float32 evaluation of a loss of size ~50 rounds at ~1e-7
# relative, and both optimizers are below 1e-6 by step 200 in the measurements above; 1e-5
# leaves room and still fails a method stalled at any visible distance.
OPT_GAP = 1e-5


def _quadratic(a, n_mat, c):
  """f(W) = tr(W^T A W N) - 2 tr(W^T C): Brockett (C = 0) and Procrustes (A = A0^T A0, N = I,
  C = A0^T B, up to the constant ||B||^2) in one form, so problems of one shape share a
  compiled program."""
  return lambda w: jnp.trace(w.T @ a @ w @ n_mat) - 2.0 * jnp.sum(w * c)


def _minimize(make_tx, lr, gain, w0, a, n_mat, c, steps=OPT_STEPS):
  loss = _quadratic(a, n_mat, c)
  tx = make_tx(lr, gain)

  def body(carry, _):
    w, state = carry
    updates, state = tx.update(jax.grad(loss)(w), state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), (loss(w), _deviation(w, gain))

  _, (losses, devs) = jax.lax.scan(body, (w0, tx.init(w0)), None, length=steps)
  return losses, devs


@pytest.fixture(scope="module")
def brockett():
  """St(8, 4), A symmetric, N = diag(4, 3, 2, 1): min over gain * St of tr(W^T A W N) is
  gain^2 sum_i mu_i lambda_i, mu descending against A's eigenvalues lambda ascending (von
  Neumann's trace inequality; the minimizer is A's bottom eigenvectors, scaled)."""
  rng = np.random.default_rng(0)
  m = rng.standard_normal((8, 8))
  a = (m + m.T) / 2
  mus = np.arange(4, 0, -1).astype(np.float64)
  lam = np.linalg.eigvalsh(a)
  return (jnp.asarray(a, jnp.float32), jnp.asarray(np.diag(mus), jnp.float32),
          jnp.zeros((8, 4), jnp.float32), float(np.sum(mus * lam[:4])))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_riemannian_reaches_the_brockett_minimum(key, brockett, name):
  a, n_mat, c, unit_min = brockett
  gains = jnp.array([1.0, 1.5])
  w0 = jax.vmap(lambda g, k: get_initializer("orthogonal", 1.0)(k, (8, 4), jnp.float32) * g)(
      gains, jax.random.split(key, 2))
  # Traced per-member gain and learning rate: the whole run is vmapped over both.
  run = jax.jit(jax.vmap(lambda lr, g, w: _minimize(RIEMANNIAN[name], lr, g, w, a, n_mat, c)))
  losses, devs = run(jnp.full((2,), RIEMANNIAN_LR[name]), gains, w0)
  optimum = np.asarray(gains)**2 * unit_min
  gap = (np.asarray(losses[:, -1]) - optimum) / np.abs(optimum)
  assert np.all(np.abs(gap) < OPT_GAP), gap
  assert float(devs.max()) < PROJECTION_TOL


@pytest.fixture(scope="module")
def procrustes():
  """min ||A X - B||_F over O(6): X* = U V^T from A^T B = U S V^T (Schoenemann 1966)."""
  rng = np.random.default_rng(1)
  a0, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
  left, _, right = np.linalg.svd(a0.T @ b)
  x_star = left @ right
  return a0, b, x_star, float(np.sum(np.square(a0 @ x_star - b)))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_riemannian_solves_orthogonal_procrustes(key, procrustes, name):
  a0, b, x_star, optimum = procrustes
  w0 = np.array(get_initializer("orthogonal", 1.0)(key, (6, 6), jnp.float32))
  # A retraction stays in the connected component of O(6) it starts in: start in X*'s.
  if np.linalg.det(w0) * np.linalg.det(x_star) < 0:
    w0[:, 0] *= -1
  args = (jnp.asarray(a0.T @ a0, jnp.float32), jnp.eye(6, dtype=jnp.float32),
          jnp.asarray(a0.T @ b, jnp.float32))
  losses, devs = jax.jit(lambda w: _minimize(RIEMANNIAN[name], RIEMANNIAN_LR[name], 1.0, w,
                                             *args))(jnp.asarray(w0))
  gap = (float(losses[-1]) + float(np.sum(b**2)) - optimum) / optimum
  assert abs(gap) < OPT_GAP, gap
  assert float(devs.max()) < PROJECTION_TOL


def test_adam_then_project_baseline_is_recorded(brockett, key, record_property):
  """Adam + stiefel_projection on the Brockett problem: recorded, not asserted (see above)."""
  a, n_mat, c, unit_min = brockett
  w0 = get_initializer("orthogonal", GAIN)(key, (8, 4), jnp.float32)
  baseline = lambda lr, g: optax.chain(optax.adam(lr), C.stiefel_projection(g))
  losses, devs = jax.jit(lambda w: _minimize(baseline, 0.01, GAIN, w, a, n_mat, c))(w0)
  gap = (float(losses[-1]) - GAIN**2 * unit_min) / abs(GAIN**2 * unit_min)
  record_property("adam_projection_brockett_gap", gap)
  print(f"adam + projection, Brockett, {OPT_STEPS} steps: relative gap {gap:.3g}")
  assert np.isfinite(gap) and float(devs.max()) < PROJECTION_TOL


def test_riemannian_step_is_tangent_and_first_order(key):
  """One step of each from rest moves W by -lr P_W(G) (SGD) or -lr P_W(G) / rms(G) (Adam's
  first step, eps = 0) up to the retraction's O(lr^2) (float64, tall W)."""
  lr = 1e-5

  @jax.jit
  def steps(w, g):
    sgd, adam = C.riemannian_sgd(lr, GAIN, momentum=0.0), C.riemannian_adam(lr, GAIN, eps=0.0)
    u_sgd, _ = sgd.update(g, sgd.init(w), w)
    u_adam, state = adam.update(g, adam.init(w), w)
    return u_sgd, u_adam, state.mu

  with jax.enable_x64(True):
    k1, k2 = jax.random.split(key)
    w = get_initializer("orthogonal", GAIN)(k1, (7, 3), jnp.float64)
    g = jax.random.normal(k2, (7, 3), jnp.float64)
    u_sgd, u_adam, mu = steps(w, g)
    x = np.asarray(w) / GAIN
    r = np.asarray(g) - x @ (0.5 * (x.T @ g + np.asarray(g).T @ x))
    # |u + lr r| = O(lr^2 |r|^2 / gain) ~ 1e-9 for the second-order polar retraction.
    np.testing.assert_allclose(u_sgd, -lr * r, atol=1e-8)
    np.testing.assert_allclose(u_adam, -lr * r / np.sqrt(np.mean(np.square(g))), atol=1e-8)
    np.testing.assert_allclose(x.T @ r + r.T @ x, 0.0, atol=1e-12)   # r is tangent at W
    w_new = np.asarray(w + u_adam)
    mu = np.asarray(mu)
    np.testing.assert_allclose(w_new.T @ mu + mu.T @ w_new, 0.0, atol=1e-12)   # transported


def test_riemannian_adam_in_multi_transform_with_selection_labels(key):
  from isometry.engine import selection
  params = {"rnn": {"recurrent": {"kernel": get_initializer("orthogonal", GAIN)(
      key, (N, N), jnp.float32)}, "input": {"kernel": jnp.ones((3, N))}}}
  labels = selection.labels(params, {"stiefel": "*/recurrent/kernel"}, default="adam")
  tx = optax.multi_transform({"stiefel": C.riemannian_adam(1e-2, GAIN), "adam": optax.adam(0.1)},
                             labels)
  grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(_deviation(new["rnn"]["recurrent"]["kernel"], GAIN)) < PROJECTION_TOL
  assert float(jnp.abs(updates["rnn"]["recurrent"]["kernel"]).max()) > 1e-3
  # Adam's first step is -lr sign(g) on the free leaves.
  np.testing.assert_allclose(updates["rnn"]["input"]["kernel"],
                             -0.1 * np.sign(grads["rnn"]["input"]["kernel"]), atol=1e-6)


def test_riemannian_rejects_wide_matrices_and_bad_arguments():
  with pytest.raises(ValueError, match="tall"):
    C.riemannian_adam(0.1).init(jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match="momentum"):
    C.riemannian_sgd(0.1, momentum=1.0)
  with pytest.raises(ValueError, match="gain"):
    C.riemannian_adam(0.1, gain=-1.0)
  assert {"riemannian_adam", "riemannian_sgd"} <= set(C.REPLACES_OPTIMIZER)
