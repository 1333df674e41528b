"""Jacobian-spectrum diagnostics against dense spectra, closed forms and free probability.

  - Dense: jacobian_spectrum against the chain rule written out in float64 numpy.
  - Matrix-free against dense (critical tanh network, width 64): Hutchinson moments within 4 of
    their own standard errors; SLQ with as many Lanczos steps as the width (exact in exact
    arithmetic), whose CDF then differs from the dense one by probe noise only; the top Ritz
    value and its residual bound.
  - Closed forms: a product of gain x orthogonal matrices has every squared singular value equal
    to gain**(2L) (moments exact, variance 0, every Ritz value there); products of L Gaussian
    N(0, 1/N) matrices have E m_1 = 1 and E m_2 from the exact finite-N recursion below, which
    tends to the Fuss-Catalan value L + 1.
  - Free probability: a critical orthogonal tanh network at width 256 against
    freeprob.jacobian_spectral_density through `summary`.
  - A flax.linen model (non-square, vmapped over inputs).

Cost: every matrix-free quantity of a network comes from one compiled program (`summary`, or
one jitted vmap), shared by the tests through module fixtures.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.theory import diagnostics as D
from isometry.theory import initializers
from isometry.theory import meanfield

SE_FACTOR = 4.0    # an estimate within 4 of its standard errors (two-sided normal: p = 6e-5)


def _mlp(weights, biases):
  """x_l = tanh(x_{l-1} W_l + b_l) over stacked (L, N, N) weights."""
  def f(x):
    def layer(h, wb):
      w, b = wb
      return jnp.tanh(h @ w + b), None
    return jax.lax.scan(layer, x, (weights, biases))[0]
  return f


def _critical_network(key, q_star, depth, width):
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", q_star))
  k_w, k_b, k_x = jax.random.split(key, 3)
  init = initializers.get_initializer("orthogonal", sigma_w)
  weights = jax.vmap(lambda k: init(k, (width, width), jnp.float32))(jax.random.split(k_w, depth))
  biases = sigma_b * jax.random.normal(k_b, (depth, width), jnp.float32)
  return weights, biases, (sigma_w, sigma_b)


def _inputs_at_q(key, q, width):
  """x_0 = tanh(h_0), h_0 ~ N(0, q): a layer's output at variance q (the network then starts at
  its fixed point when q = q*; as `meanfield.sample_inputs_at_q`, in float32)."""
  return jnp.tanh(np.sqrt(q) * jax.random.normal(key, (width,), jnp.float32))


# ------------------------------------------------------------------ critical tanh, width 64

WIDTH, DEPTH = 64, 4


@pytest.fixture(scope="module")
def small():
  """Critical tanh (q* = 1), orthogonal, width 64, depth 4: a wide spectrum (spread ~2.3)."""
  key = jax.random.key(64)
  weights, biases, _ = _critical_network(key, 1.0, DEPTH, WIDTH)
  x = _inputs_at_q(jax.random.fold_in(key, 1), 1.0, WIDTH)
  f = _mlp(weights, biases)
  # num_steps = width: Lanczos spans the whole space, so the quadrature is exact up to float32.
  result = D.summary(f, x, jax.random.fold_in(key, 2), depth=DEPTH, num_probes=32,
                     num_steps=WIDTH, dense=True)
  return weights, biases, x, result


def test_dense_spectrum_is_the_chain_rule(small):
  weights, biases, x, result = small
  w, b, h = np.asarray(weights, np.float64), np.asarray(biases, np.float64), np.asarray(x)
  jac = np.eye(WIDTH)
  for layer in range(DEPTH):
    pre = h @ w[layer] + b[layer]
    h = np.tanh(pre)
    jac = (1.0 - h**2)[:, None] * (w[layer].T @ jac)    # x @ W: d x_l / d x_{l-1} = D W^T
  expected = np.sort(np.linalg.eigvalsh(jac @ jac.T))
  # J from float32 forward passes: ~1e-6 relative in each entry, on eigenvalues up to ~7.
  np.testing.assert_allclose(result.dense, expected, atol=1e-5 * expected[-1])


def test_moments_within_standard_errors_of_dense(small):
  *_, result = small
  lam = result.dense
  mean, variance = lam.mean(), lam.var()
  assert abs(result.mean - mean) < SE_FACTOR * result.mean_se
  assert abs(result.variance - variance) < SE_FACTOR * result.variance_se
  # The standard errors are informative (below 10% here), not vacuously wide.
  assert result.mean_se < 0.1 * mean and result.variance_se < 0.1 * variance
  assert result.chi == pytest.approx(result.mean**(1 / DEPTH))
  assert result.spread == pytest.approx(result.variance / result.mean**2)


def test_exact_lanczos_cdf_matches_dense(small):
  *_, result = small
  lam, quad = result.dense, result.quadrature
  np.testing.assert_allclose(quad.weights.sum(axis=1), 1.0, atol=1e-5)
  # float32 Lanczos resolves eigenvalues above ~1e-7 lambda_max (module docstring): compare the
  # CDFs from 1e-6 lambda_max up.
  grid = np.concatenate([lam, np.geomspace(1e-6 * lam[-1], 2 * lam[-1], 500)])
  grid = np.sort(grid[grid >= 1e-6 * lam[-1]])
  dense_cdf = np.searchsorted(lam, grid, side="right") / lam.size
  slq_cdf = np.asarray(D.quadrature_cdf(D.Quadrature(*(jnp.asarray(v) for v in quad)), grid))
  # With exact nodes, F_hat(lambda) = mean_p u_p^T Pi u_p / m (Pi: projector on the eigenvectors
  # below lambda), of standard deviation sqrt(2 F (1 - F) / (m P)) <= 0.0156 for m = 64,
  # P = 32; 0.07 is ~4.5 of those at the worst point.
  assert np.max(np.abs(slq_cdf - dense_cdf)) < 0.07
  # The kernel-smoothed density integrates to the mass above its floor (the trapezoid rule in
  # log lambda on 400 points over 8.3 decades, and the kernel's tails beyond the grid: 2%).
  est = jax.jit(D.smooth_density)(D.Quadrature(*(jnp.asarray(v) for v in quad)))
  lambdas, density = np.asarray(est.lambdas), np.asarray(est.density)
  assert np.all(density >= 0)
  mass = np.trapezoid(density * lambdas, np.log(lambdas))
  assert mass == pytest.approx(1.0 - float(est.zero_mass), abs=0.02)
  assert float(est.zero_mass) == pytest.approx(np.mean(lam <= float(est.floor)), abs=0.07)


def test_top_ritz_value(small):
  *_, result = small
  top = result.dense[-1]
  # Lanczos over the whole space: the top Ritz value is s_max**2 to float32 rounding.
  assert result.s_max2 == pytest.approx(top, rel=1e-5)
  assert result.s_max2_residual < 1e-4 * top


# --------------------------------------------------------------------------- closed forms

def test_scaled_orthogonal_product_is_exact(key):
  """J = (g Q_1)(g Q_2)(g Q_3) (x @ W form): every squared singular value is g**6."""
  gain, depth, width = 1.1, 3, 32
  init = initializers.get_initializer("orthogonal", gain)
  ws = [init(k, (width, width), jnp.float32) for k in jax.random.split(key, depth)]

  def f(x):
    for w in ws:
      x = x @ w
    return x

  result = D.summary(f, jnp.ones((width,)), jax.random.fold_in(key, 1), depth=depth,
                     num_probes=8, num_steps=4)
  exact = gain**(2 * depth)
  # Rademacher probes: ||J^T u||^2 = g^6 m for every u, so the mean is exact and its standard
  # error 0, up to float32 rounding of a few 32-term products (1e-6 relative).
  assert result.mean == pytest.approx(exact, rel=1e-5)
  assert result.mean_se < 1e-5 * exact
  assert abs(result.variance) < 1e-5 * exact**2 and abs(result.spread) < 1e-5
  np.testing.assert_allclose(result.dense, exact, rtol=1e-5)
  assert result.s_max2 == pytest.approx(exact, rel=1e-5)
  # Every probe's quadrature puts (almost) all its weight on g**6.
  at_exact = np.abs(result.quadrature.nodes - exact) < 1e-4 * exact
  np.testing.assert_allclose(np.sum(result.quadrature.weights * at_exact, axis=1), 1.0,
                             atol=1e-4)
  assert result.near_zero_fraction == 0.0


def _gaussian_product_second_moment(width: int, depth: int) -> float:
  """E[tr((J J^T)^2) / N] for J a product of `depth` N x N matrices with N(0, 1/N) entries.

  With A' = W A W^T, Wick's theorem gives E tr(A'^2) = (1 + 1/N) tr(A^2) + (tr A)^2 / N and
  E (tr A')^2 = (tr A)^2 + 2 tr(A^2) / N; in x = tr(A^2) / N, y = (tr A)^2 / N^2, from A = I:
  x' = (1 + 1/N) x + y, y' = y + 2 x / N^2. (L = 1: 2 + 1/N, the Wishart value; N -> inf:
  x = L + 1, the Fuss-Catalan number FC_L(2) = binom(2L + 2, 2) / (2L + 1).) Checked against
  Monte-Carlo at N = 8, 16, 32 within one standard error.
  """
  x, y = 1.0, 1.0
  for _ in range(depth):
    x, y = (1.0 + 1.0 / width) * x + y, y + 2.0 * x / width**2
  return x


def test_gaussian_products_fuss_catalan(key):
  width, depth, networks, probes = 128, 3, 8, 32
  expected = _gaussian_product_second_moment(width, depth)
  assert expected == pytest.approx(depth + 1, rel=0.05)   # finite-N correction ~ L^2 / N

  def moments(k):
    k_w, k_p = jax.random.split(k)
    ws = jax.random.normal(k_w, (depth, width, width)) / np.sqrt(width)

    def f(x):
      return jax.lax.scan(lambda h, w: (h @ w, None), x, ws)[0]
    return D.spectral_moments(f, jnp.zeros((width,)), k_p, probes)

  result = jax.jit(jax.vmap(moments))(jax.random.split(key, networks))
  # Across networks the estimates vary by probe noise and network-to-network fluctuation
  # together: their sample standard error covers both.
  for estimate, target in ((result.mean, 1.0), (result.second_moment, expected),
                           (result.variance, expected - 1.0)):
    values = np.asarray(estimate, np.float64)
    se = values.std(ddof=1) / np.sqrt(networks)
    assert abs(values.mean() - target) < SE_FACTOR * se, (values.mean(), target, se)
    assert se < 0.1 * target


# ----------------------------------------------------------------------- free probability

@pytest.mark.slow
def test_critical_tanh_against_free_probability():
  """Orthogonal critical tanh, q* = 1/4, depth 4, width 256, two inputs pooled.

  KS tolerances: between free probability and Monte-Carlo THEORY.md measured <= 0.02 at
  N = 1000; finite-width effects grow as N shrinks (0.012 measured here at N = 256), so 0.04 for
  the dense spectrum. The SLQ estimate adds probe noise of standard deviation
  sqrt(2 F (1 - F) / (m P)) <= 0.008 (m = 256, P = 2 x 16) and the discreteness of 32-node
  quadratures (each within one node weight of its probe's CDF); 0.06 covers 4 sigma of noise
  on top of the finite-width error. Moments: a single network's mean and spread fluctuate at
  O(1/sqrt(N)) relative around the theory's (2% seen); 10% is the bound.
  """
  q, depth, width = 0.25, 4, 256
  key = jax.random.key(256)
  weights, biases, (sigma_w, sigma_b) = _critical_network(key, q, depth, width)
  x = jnp.stack([_inputs_at_q(k, q, width) for k in jax.random.split(jax.random.fold_in(key, 1))])
  theory = D.Theory("tanh", sigma_w, sigma_b, "orthogonal")
  # A 300-point grid: the density solver compiles per grid size, and test_freeprob's is 300.
  result = D.summary(_mlp(weights, biases), x, jax.random.fold_in(key, 2), depth=depth,
                     theory=theory, num_probes=16, num_steps=32, grid_points=300)
  assert result.ks_dense < 0.04
  assert result.ks_slq < 0.06
  assert result.predicted_mean == pytest.approx(1.0)
  assert result.mean == pytest.approx(result.predicted_mean, rel=0.1)
  assert result.spread == pytest.approx(result.predicted_spread, rel=0.1)
  assert result.s_max2 == pytest.approx(result.predicted_s_max2, rel=0.1)
  assert result.chi == pytest.approx(1.0, abs=0.03)
  # 32 steps on 256 eigenvalues: every Ritz value is within its residual of an eigenvalue (of
  # its input's J; checked against the pooled ones), and the top ones are lower bounds on
  # s_max**2.
  lam, quad = result.dense, result.quadrature
  distance = np.min(np.abs(quad.nodes[..., None] - lam), axis=-1)
  assert np.all(distance <= quad.residuals + 1e-5 * lam[-1])
  assert np.all(quad.nodes[:, -1] <= lam[-1] * (1 + 1e-5))
  assert result.s_max2 > 0.98 * lam[-1]
  record = result.as_dict()
  assert record["theory"]["weights"] == "orthogonal" and "quadrature" not in record
  fig = D.summary_figure(result)
  ax = fig.axes[0]
  assert len(ax.lines) == 2 and len(ax.patches) >= 1   # SLQ, theory; dense histogram


# ------------------------------------------------------------------------------ flax, vmap

class _FlaxMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(16)(x))
    return nn.Dense(20)(x)


def test_flax_apply_vmapped_over_inputs(key):
  """A non-square flax model (12 -> 20): moments of the 20 eigenvalues of J J^T (8 are zero)."""
  model = _FlaxMLP()
  params = model.init(key, jnp.zeros((12,)))
  xs = jax.random.normal(jax.random.fold_in(key, 1), (3, 12))

  def moments(x, k):
    return D.spectral_moments(lambda x: model.apply(params, x), x, k, 64)

  result = jax.jit(jax.vmap(moments))(xs, jax.random.split(jax.random.fold_in(key, 2), 3))
  lam = D.jacobian_spectrum(lambda x: model.apply(params, x), xs)
  assert lam.shape == (3, 20)
  np.testing.assert_array_equal(lam[:, :8], 0.0)   # rank <= n = 12: 20 - 12 zeros
  assert np.all(lam[:, 8:] > 0)
  for i in range(3):
    assert abs(float(result.mean[i]) - lam[i].mean()) < SE_FACTOR * float(result.mean_se[i])
    assert abs(float(result.variance[i]) - lam[i].var()) < (
        SE_FACTOR * float(result.variance_se[i]))


def test_bad_arguments(key):
  with pytest.raises(ValueError, match="1-d array"):
    D.spectral_moments(lambda x: jnp.outer(x, x), jnp.ones(3), key)
  with pytest.raises(ValueError, match="one input vector"):
    D.spectral_moments(lambda x: x, jnp.ones((2, 3)), key)
  with pytest.raises(ValueError, match="num_probes"):
    D.spectral_moments(lambda x: x, jnp.ones(3), key, num_probes=1)
  with pytest.raises(ValueError, match="probe"):
    D.spectral_moments(lambda x: x, jnp.ones(3), key, probe="sobol")
  with pytest.raises(ValueError, match="depth"):
    D.summary(lambda x: x, jnp.ones(3), key, theory=D.Theory("tanh", 1.0, 0.0, "orthogonal"))
