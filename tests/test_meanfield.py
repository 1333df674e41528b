"""Mean field against closed forms, scipy quadrature, THEORY.md's numbers and Monte-Carlo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from isometry.theory import correlations
from isometry.theory import gaussian
from isometry.theory import meanfield as mf
from isometry.theory.activations import ACTIVATIONS, Activation

BOUNDED = ("tanh", "erf", "hard_tanh")


def _scipy_expectation(f, q):
  """E[f(h)], h ~ N(0, q), by adaptive quadrature in h (kinks at +-1 passed as breakpoints)."""
  s = np.sqrt(q)
  points = [p for p in (-1.0, 0.0, 1.0) if abs(p) < 12 * s]
  return integrate.quad(lambda h: f(h) * stats.norm.pdf(h, scale=s), -12 * s, 12 * s,
                        points=points, epsabs=1e-15, epsrel=1e-13, limit=500)[0]


@pytest.mark.parametrize("activation", BOUNDED + ("relu",))
@pytest.mark.parametrize("sigma_w,sigma_b", [(0.8, 0.05), (1.3, 0.3), (2.5, 0.6)])
def test_q_star_is_fixed_point(activation, sigma_w, sigma_b):
  if activation == "relu" and sigma_w**2 >= 2:
    pytest.skip("relu has no finite fixed point here (tested below)")
  q = mf.q_star(activation, sigma_w, sigma_b)
  assert q.dtype == jnp.float64
  assert abs(mf.q_map(activation, q, sigma_w, sigma_b) - q) <= 1e-12 * (1 + q)


def test_theory_md_critical_points():
  # THEORY.md: tanh q* = 1/64 -> (1.0152, 0.00216); q* = 1 -> (1.4674, 0.3885), to their digits.
  sw, sb = mf.critical_point("tanh", 1 / 64)
  np.testing.assert_allclose(sw, 1.0152, atol=5e-5)
  np.testing.assert_allclose(sb, 0.00216, atol=5e-6)
  sw, sb = mf.critical_point("tanh", 1.0)
  np.testing.assert_allclose([sw, sb], [1.4674, 0.3885], atol=5e-5)


@pytest.mark.parametrize("activation", BOUNDED)
@pytest.mark.parametrize("q", [1 / 64, 0.2, 1.0, 3.0])
def test_critical_point_has_chi_one_and_its_q_star(activation, q):
  if activation == "hard_tanh" and q < 0.03:
    # hard_tanh is linear up to 8 standard deviations at q = 1/64: the critical point is
    # sigma_w^2 = 1 + 1.5e-15, where the q-map's slope is 1 - 8e-14 and q* is not determined by
    # float64 (every q nearby is a fixed point to ~1e-16): refused, not returned wrong.
    with pytest.raises(ValueError, match="not an isolated fixed point"):
      mf.critical_point(activation, q)
    return
  sw, sb = mf.critical_point(activation, q)
  np.testing.assert_allclose(mf.chi(activation, sw, sb), 1.0, rtol=1e-11)
  np.testing.assert_allclose(mf.q_star(activation, sw, sb), q, rtol=1e-10)


@pytest.mark.parametrize("activation,qs", [
    ("tanh", (1e-6, 1e-5, 1e-3, 0.1, 10.0, 100.0)),
    ("erf", (1e-6, 1e-4, 1e-2, 10.0, 100.0)),
    ("hard_tanh", (0.05, 10.0, 100.0)),
])
def test_critical_point_returns_the_q_star_asked_for(activation, qs):
  # The contract across the range the density code is used on: the fixed point at the returned
  # scales is q* to 1e-9, and chi is 1 to its rounding (CHI_TOLERANCE).
  for q in qs:
    sw, sb = mf.critical_point(activation, q)
    np.testing.assert_allclose(mf.q_star(activation, sw, sb), q, rtol=1e-9, err_msg=str(q))
    assert abs(mf.chi(activation, sw, sb) - 1.0) <= mf.CHI_TOLERANCE, q


@pytest.mark.parametrize("q", [1e-3, 0.02])
def test_hard_tanh_small_q_star_is_not_isolated(q):
  # The q-map at the critical point is the identity to within ~exp(-1 / (2 q)): refused with the
  # reason, not answered with another fixed point (it used to return q* = 0.0161 for 1e-3).
  with pytest.raises(ValueError, match=r"not an isolated fixed point.*choose a larger q\*"):
    mf.critical_point("hard_tanh", q)
  with jax.enable_x64(True):
    sw, sb = jax.jit(lambda x: mf.critical_point("hard_tanh", x))(q)
  assert np.isnan(sb)


def test_critical_point_homogeneous():
  for q in (0.1, 2.0):
    np.testing.assert_allclose(mf.critical_point("relu", q), (np.sqrt(2), 0.0), atol=1e-15)
    np.testing.assert_allclose(mf.critical_point("linear", q), (1.0, 0.0), atol=1e-15)


def test_critical_point_without_solution():
  # phi = 1 + tanh: E[phi^2] >= 1 while mu_1 <= 1, so sigma_b^2 = q - E[phi^2] / mu_1 < 0 for q < 1.
  tanh = ACTIVATIONS["tanh"]
  shifted = Activation("shifted_tanh", lambda h: 1.0 + jnp.tanh(h), tanh.derivative, False)
  with pytest.raises(ValueError, match="no critical point"):
    mf.critical_point(shifted, 0.5)
  sw, sb = jax.jit(lambda q: mf.critical_point(shifted, q))(0.5)
  assert np.isfinite(sw) and np.isnan(sb)


@pytest.mark.parametrize("sigma_w", [0.5, 1.0, np.sqrt(2), 1.7])
def test_relu_and_linear_chi(sigma_w):
  np.testing.assert_allclose(mf.chi("relu", sigma_w, 0.1), sigma_w**2 / 2, rtol=1e-15)
  np.testing.assert_allclose(mf.chi("linear", sigma_w, 0.1), sigma_w**2, rtol=1e-15)


def test_relu_and_linear_q_star_closed_forms():
  np.testing.assert_allclose(mf.q_star("relu", 1.2, 0.3), 0.09 / (1 - 0.72), rtol=1e-14)
  np.testing.assert_allclose(mf.q_star("linear", 0.6, 0.3), 0.09 / (1 - 0.36), rtol=1e-14)
  np.testing.assert_allclose(mf.q_star("relu", 1.2, 0.0), 0.0, atol=0)
  for activation, sigma_w in (("relu", 1.5), ("linear", 1.1)):    # sigma_w^2 c > 1: q explodes
    with pytest.raises(ValueError, match="no unique finite fixed point"):
      mf.q_star(activation, sigma_w, 0.1)
  with pytest.raises(ValueError, match="no unique"):       # every q is a fixed point
    mf.q_star("relu", np.sqrt(2), 0.0)
  traced = jax.jit(lambda s: mf.q_star("relu", s, 0.1))(1.5)
  assert np.isinf(traced)


@pytest.mark.parametrize("q", [0.01, 0.3, 1.0, 5.0])
def test_hard_tanh_closed_forms_against_scipy(q):
  p = 2 * stats.norm.cdf(1 / np.sqrt(q)) - 1                   # P(|h| < 1)
  np.testing.assert_allclose(mf.mu("hard_tanh", q, 1), p, rtol=1e-13)
  np.testing.assert_allclose(mf.mu("hard_tanh", q, 2), p, rtol=1e-13)  # D^2 is 0/1
  expected = _scipy_expectation(lambda h: np.clip(h, -1, 1)**2, q)
  np.testing.assert_allclose(mf.q_map("hard_tanh", q, 1.0, 0.0), expected, rtol=1e-11)


@pytest.mark.parametrize("q", [1e-3, 0.3, 1.0, 4.5, 20.0])
def test_tanh_quadrature_against_scipy(q):
  # The module's trapezoid rule is claimed accurate to ~1e-13 for tanh with q <= 30; scipy's
  # adaptive quad reaches ~1e-14 here, so 1e-11 leaves room for both and still catches e.g.
  # 200-point Gauss-Hermite (error 4e-5 at q = 4.5).
  sech2 = lambda h: 1 - np.tanh(h)**2
  np.testing.assert_allclose(mf.q_map("tanh", q, 1.0, 0.0),
                             _scipy_expectation(lambda h: np.tanh(h)**2, q), atol=1e-11)
  np.testing.assert_allclose(mf.mu("tanh", q, 1), _scipy_expectation(lambda h: sech2(h)**2, q),
                             atol=1e-11)
  np.testing.assert_allclose(mf.mu("tanh", q, 2), _scipy_expectation(lambda h: sech2(h)**4, q),
                             atol=1e-11)


def test_gaussian_expectation_closed_form():
  for q in (0.0, 0.5, 3.0):     # E[cos(sqrt(q) z)] = exp(-q / 2); E[h^4] = 3 q^2
    np.testing.assert_allclose(
        gaussian.gaussian_expectation(jnp.cos, q), np.exp(-q / 2), atol=1e-14)
    np.testing.assert_allclose(gaussian.gaussian_expectation(lambda h: h**4, q), 3 * q**2,
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("q", [0.05, 1.0, 6.0])
def test_erf_closed_forms_against_quadrature(q):
  # The same phi under another name takes the generic quadrature paths (1-d and 2-d).
  erf = ACTIVATIONS["erf"]
  quadrature = Activation("erf_by_quadrature", erf.fn, erf.derivative, False)
  for k in (1, 2):
    np.testing.assert_allclose(mf.mu("erf", q, k), mf.mu(quadrature, q, k), atol=1e-13)
  np.testing.assert_allclose(mf.q_map("erf", q, 1.3, 0.2), mf.q_map(quadrature, q, 1.3, 0.2),
                             atol=1e-13)
  for c in (0.0, 0.6, 0.95):
    np.testing.assert_allclose(correlations.correlation_map("erf", c, q, 1.3, 0.2),
                               correlations.correlation_map(quadrature, c, q, 1.3, 0.2), atol=1e-12)
  np.testing.assert_allclose(correlations.depth_scales("erf", 1.3, 0.2),
                             correlations.depth_scales(quadrature, 1.3, 0.2), rtol=1e-8)


def _nested_quad_kernel(f, q, c):
  """E[f(u1) f(u2)], u1, u2 ~ N(0, q) with correlation c, by conditioning on z1.

  Adaptive quad over z1 of f(sqrt(q) z1) E[f(u2) | z1], the inner expectation itself by adaptive
  quad over z2 (u2 = sqrt(q) (c z1 + s z2)); break points at the centre of f's transition
  (z1 = 0, z2 = -c z1 / s) and 4 widths either side. Truncation at 9 standard deviations
  (2e-19 of the mass).
  """
  s, r = np.sqrt(1.0 - c * c), np.sqrt(q)
  pdf = lambda z: np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)

  def inner(z1):
    if s == 0.0:
      return f(r * c * z1)
    mid, width = -c * z1 / s, 1.0 / (r * s)
    points = [p for p in (mid - 4 * width, mid, mid + 4 * width) if -9 < p < 9]
    return integrate.quad(lambda z2: f(r * (c * z1 + s * z2)) * pdf(z2), -9, 9,
                          points=points or None, epsabs=1e-14, epsrel=1e-12, limit=200)[0]

  points = [p for p in (-4 / r, 0.0, 4 / r) if -9 < p < 9]
  return integrate.quad(lambda z1: f(r * z1) * inner(z1) * pdf(z1), -9, 9, points=points,
                        epsabs=1e-14, epsrel=1e-12, limit=200)[0]


@pytest.mark.parametrize("q,c", [
    (0.01, 0.5), (1.0, -0.999999), (4.5, 0.0), (15.0, 0.3), (15.0, -0.9999), (30.0, 0.99999),
    (50.0, 0.9), (50.0, 0.0), (50.0, -0.5), (50.0, 1.0)])
def test_tanh_kernels_against_nested_quadrature(q, c):
  """Both c-map kernels of tanh within 1e-9 relative of nested adaptive quadrature, q <= 50.

  The former fixed 81 x 81 rule was off by 3.4e-4 in E[phi' phi'] at q = 15 and 8e-3 at q = 30
  (tanh's poles at +-i pi / 2 narrow the strip of analyticity in z = h / sqrt(q) like
  1 / sqrt(q)). The rule's own estimate is ~1e-12 (`meanfield._kernel_rule`); scipy's quad
  reaches ~1e-14 here. K(0) = E[tanh]^2 = 0 for this odd phi, hence the absolute floor.
  """
  sech2 = lambda h: 1.0 / np.cosh(h)**2
  c_next, chi_c = correlations.correlation_map("tanh", c, q, 1.0, 0.0)
  np.testing.assert_allclose(c_next * q, _nested_quad_kernel(np.tanh, q, c), rtol=1e-9,
                             atol=1e-13)
  np.testing.assert_allclose(chi_c, _nested_quad_kernel(sech2, q, c), rtol=1e-9, atol=1e-13)


def test_c_star_and_xi_c_where_the_kernels_were_coarse():
  # (3, 1): q* = 7.51, chaotic. The issue measured xi_c off by 1.3e-5 relative with the old rule.
  # Check c* as a fixed point of the c-map built on nested quadrature, and xi_c from its slope.
  sw, sb = 3.0, 1.0
  q = float(mf.q_star("tanh", sw, sb))
  c = float(correlations.c_star("tanh", sw, sb))
  k = _nested_quad_kernel(np.tanh, q, c)
  np.testing.assert_allclose((sw**2 * k + sb**2) / q, c, rtol=0, atol=1e-11)
  chi_c = sw**2 * _nested_quad_kernel(lambda h: 1.0 / np.cosh(h)**2, q, c)
  np.testing.assert_allclose(
      correlations.depth_scales("tanh", sw, sb)[1], -1 / np.log(chi_c), rtol=1e-9)


@pytest.mark.parametrize("activation,sigma_w", [
    ("tanh", 1.0), ("hard_tanh", 1.0), ("erf", np.sqrt(np.pi) / 2)])
def test_exactly_critical_at_zero_bias(activation, sigma_w):
  # sigma_b = 0, sigma_w**2 phi'(0)**2 = 1: q* = 0 exactly and chi = sigma_w**2 phi'(0)**2 = 1 up to
  # the rounding of sigma_w itself; the point is critical: c* = 1, xi_c = inf, and the q-map's slope
  # at 0 is 1 too, xi_q = inf. (Before: chi = 1 + 2.2e-16 sent it down the chaotic branch, xi_c =
  # 1.4e7, c* = 1 - 2.5e-7, on the versions of numpy/jax of a fresh machine.)
  assert mf.q_star(activation, sigma_w, 0.0) == 0.0
  assert abs(mf.chi(activation, sigma_w, 0.0) - 1.0) <= 4e-16
  assert correlations.c_star(activation, sigma_w, 0.0) == 1.0
  assert correlations.depth_scales(activation, sigma_w, 0.0) == (np.inf, np.inf)
  # Below: ordered, q* = 0, chi = sigma_w**2 phi'(0)**2 in closed form.
  np.testing.assert_allclose(mf.chi(activation, 0.9 * sigma_w, 0.0), 0.81, rtol=1e-15)
  assert mf.q_star(activation, 0.9 * sigma_w, 0.0) == 0.0


@pytest.mark.parametrize("ulps", [-3, -1, 1, 3])
def test_chi_within_rounding_of_one_is_critical(ulps):
  # sigma_w a few ulps either side of the critical point: chi is 1 to ~1e-15, which no float64
  # evaluation can tell from 1; the classification must not flip on the last digit.
  sw, sb = (float(v) for v in mf.critical_point("tanh", 0.5))
  sw = sw + ulps * np.spacing(sw)
  assert abs(mf.chi("tanh", sw, sb) - 1.0) <= mf.CHI_TOLERANCE
  assert correlations.c_star("tanh", sw, sb) == 1.0
  assert correlations.depth_scales("tanh", sw, sb)[1] == np.inf
  # Just outside the tolerance the phases are back, with xi_c ~ 1 / |chi - 1|.
  for factor, phase in ((1 + 1e-6, "chaotic"), (1 - 1e-6, "ordered")):
    excess = mf.chi("tanh", factor * sw, sb) - 1.0
    xi_c = correlations.depth_scales("tanh", factor * sw, sb)[1]
    assert (excess > 0) == (phase == "chaotic")
    assert 0.5 / abs(excess) < xi_c < 2 / abs(excess), (phase, excess, xi_c)


@pytest.mark.parametrize("activation", BOUNDED + ("relu", "linear"))
@pytest.mark.parametrize("sigma_b", [0.0, 1e-6, 0.05, 0.3, 1.0])
def test_critical_sigma_w(activation, sigma_b):
  sw = mf.critical_sigma_w(activation, sigma_b)
  if activation in ("relu", "linear"):
    assert sw == {"relu": np.sqrt(2.0), "linear": 1.0}[activation]
    return
  assert abs(mf.chi(activation, sw, sigma_b) - 1.0) <= mf.CHI_TOLERANCE
  # The order-to-chaos transition: ordered below, chaotic above.
  assert mf.chi(activation, 0.99 * sw, sigma_b) < 1 < mf.chi(activation, 1.01 * sw, sigma_b)
  if sigma_b == 0.0:
    # Closed form 1 / |phi'(0)|: q* = 0 up to there.
    expected = {"tanh": 1.0, "hard_tanh": 1.0, "erf": np.sqrt(np.pi) / 2}[activation]
    assert sw == pytest.approx(expected, rel=4e-16)    # 1 / |phi'(0)| rounds differently


def test_critical_sigma_w_agrees_with_critical_point_and_refuses_bad_input():
  sw_q, sb_q = mf.critical_point("tanh", 1.0)
  np.testing.assert_allclose(mf.critical_sigma_w("tanh", sb_q), sw_q, rtol=1e-12)
  with pytest.raises(ValueError, match="sigma_b"):
    mf.critical_sigma_w("tanh", -0.1)
  # phi = 0.5 tanh: chi <= sigma_w**2 / 4 ... but chi grows without bound with sigma_w, so a root
  # exists; phi = 0.1 (a constant plus nothing): chi = 0 everywhere, no root.
  flat = Activation("flat", lambda h: 0.1 + 0.0 * h, lambda h: 0.0 * h, False)
  with pytest.raises(ValueError, match="no critical sigma_w"):
    mf.critical_sigma_w(flat, 0.3)


@pytest.mark.parametrize("q,c", [(0.5, 0.3), (2.0, 0.9)])
def test_hard_tanh_kernels_against_scipy(q, c):
  # Reference: scipy's bivariate normal CDF for P(|u1| < 1, |u2| < 1), and nested adaptive quad
  # with the kinks as breakpoints for E[phi(u1) phi(u2)] (u2 = sqrt(q) (c z1 + s z2)).
  cov = q * np.array([[1, c], [c, 1]])
  both_inside = stats.multivariate_normal.cdf([1, 1], cov=cov, lower_limit=[-1, -1],
                                              abseps=1e-12, releps=1e-12)
  s, a = np.sqrt(1 - c * c), 1 / np.sqrt(q)

  def inner(z1):
    kinks = [k for k in ((-a - c * z1) / s, (a - c * z1) / s) if abs(k) < 10]
    f = lambda z2: np.clip(np.sqrt(q) * (c * z1 + s * z2), -1, 1) * stats.norm.pdf(z2)
    value = integrate.quad(f, -10, 10, points=kinks or None, epsabs=1e-14, limit=200)[0]
    return np.clip(np.sqrt(q) * z1, -1, 1) * value * stats.norm.pdf(z1)

  kernel = integrate.quad(inner, -10, 10, points=[-a, a], epsabs=1e-13, limit=200)[0]
  c_next, chi_c = correlations.correlation_map("hard_tanh", c, q, 1.0, 0.0)
  np.testing.assert_allclose(c_next * q, kernel, atol=1e-11)
  np.testing.assert_allclose(chi_c, both_inside, atol=1e-10)


@pytest.mark.parametrize("activation", BOUNDED)
def test_xi_q_is_slope_of_q_map(activation):
  # xi_q uses E[phi'^2 + phi phi''] (phi'' by jax.grad, or delta masses for hard_tanh); the slope
  # of the q-map by jax.grad must agree (Stein's lemma / the heat equation).
  sigma_w, sigma_b = 1.3, 0.3
  q = mf.q_star(activation, sigma_w, sigma_b)
  with jax.enable_x64(True):
    slope = jax.grad(lambda x: mf.q_map(activation, x, sigma_w, sigma_b))(q)
  xi_q, _ = correlations.depth_scales(activation, sigma_w, sigma_b)
  np.testing.assert_allclose(xi_q, -1 / np.log(slope), rtol=1e-10)


@pytest.mark.parametrize("activation", BOUNDED)
def test_correlation_fixed_point_and_xi_c(activation):
  # Ordered phase: c* = 1, xi_c = -1 / log(chi).
  sw, sb = 0.9, 0.3
  assert correlations.c_star(activation, sw, sb) == 1.0
  np.testing.assert_allclose(correlations.depth_scales(activation, sw, sb)[1],
                             -1 / np.log(mf.chi(activation, sw, sb)), rtol=1e-12)
  # Chaotic phase: c* < 1 is a fixed point of the c-map with slope chi_c < 1.
  sw, sb = 2.0, 0.3
  q = mf.q_star(activation, sw, sb)
  c = correlations.c_star(activation, sw, sb)
  c_next, chi_c = correlations.correlation_map(activation, c, q, sw, sb)
  assert 0 < c < 1
  np.testing.assert_allclose(c_next, c, atol=1e-11)
  np.testing.assert_allclose(correlations.depth_scales(activation, sw, sb)[1], -1 / np.log(chi_c),
                             rtol=1e-9)
  assert chi_c < 1 < mf.chi(activation, sw, sb)
  # xi_c diverges on the critical line and is moderate either side of it.
  sw, sb = mf.critical_point(activation, 0.5)
  assert correlations.depth_scales(activation, sw, sb)[1] > 1e6
  for factor in (0.9, 1.1):
    assert 1 < correlations.depth_scales(activation, factor * sw, sb)[1] < 100


@pytest.mark.parametrize("q", [0.5, 1.0])
def test_hard_tanh_xi_c_near_the_critical_line(q):
  """Just inside the chaotic phase of hard_tanh, xi_c = 2 / (chi - 1) to leading order.

  hard_tanh's c-map is non-analytic at c = 1: chi_c(c) = chi - beta sqrt(1 - c) + ..., so
  g(c) = c_map(c) - c = -(chi - 1)(1 - c) + (2/3) beta (1 - c)^(3/2) has its root where
  sqrt(1 - c*) = 3 (chi - 1) / (2 beta), and there chi_c = 1 - (chi - 1) / 2. With chi - 1 ~ 1e-4,
  1 - c* ~ 1e-7: this needs the kernels' boundary-layer quadrature (a plain Gauss-Legendre split
  at the kinks returned c* = 1 and xi_c = inf here). The ratio measured 1.0004 and 1.0014; the
  next-order term is O(chi - 1) relative, so 1% is loose but catches inf or a factor of 2.
  """
  sw, sb = mf.critical_point("hard_tanh", q)
  sw *= 1.0001
  excess = mf.chi("hard_tanh", sw, sb) - 1
  assert 5e-5 < excess < 5e-4
  np.testing.assert_allclose(
      correlations.depth_scales("hard_tanh", sw, sb)[1], 2 / excess, rtol=1e-2)
  assert 1 - 1e-4 < correlations.c_star("hard_tanh", sw, sb) < 1 - 1e-10


def test_odd_phi_without_bias_decorrelates_completely():
  np.testing.assert_allclose(correlations.c_star("tanh", 2.0, 0.0), 0.0, atol=1e-15)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="unknown activation"):
    mf.q_star("swish", 1.0, 0.1)
  with pytest.raises(ValueError, match="sigma_w"):
    mf.q_star("tanh", 0.0, 0.1)
  with pytest.raises(ValueError, match="sigma_w"):
    mf.chi("tanh", -1.0, 0.1)
  with pytest.raises(ValueError, match="sigma_b"):
    mf.q_star("tanh", 1.0, -0.1)
  with pytest.raises(ValueError, match="k must"):
    mf.mu("tanh", 1.0, 3)
  with pytest.raises(ValueError, match="q must"):
    mf.mu("tanh", -1.0, 1)
  with pytest.raises(ValueError, match="q_star must"):
    mf.critical_point("tanh", 0.0)
  with pytest.raises(ValueError, match="c must"):
    correlations.correlation_map("tanh", 1.5, 1.0, 1.0, 0.0)
  with pytest.raises(ValueError, match="0/1 derivative"):
    relu = ACTIVATIONS["relu"]
    mf.chi(Activation("my_relu", relu.fn, relu.derivative, True), 1.0, 0.1)
  with pytest.raises(ValueError, match="sigma_b2"):
    correlations.phase_diagram("tanh", np.array([1.0]), np.array([-0.1]))


def test_jit_vmap_and_grad_over_scales():
  sigma_w = np.array([0.8, 1.2, 2.0])
  with jax.enable_x64(True):    # else jit's float32 inputs would round sigma_w first
    batched = jax.jit(jax.vmap(lambda s: mf.q_star("tanh", s, 0.2)))(sigma_w)
  looped = [mf.q_star("tanh", s, 0.2) for s in sigma_w]
  np.testing.assert_allclose(batched, looped, rtol=1e-14)
  # dq*/dsigma_w through the implicit function theorem vs a central difference.
  with jax.enable_x64(True):
    grad = jax.grad(lambda s: mf.q_star("tanh", s, 0.2))(1.2)
  h = 1e-6
  fd = (mf.q_star("tanh", 1.2 + h, 0.2) - mf.q_star("tanh", 1.2 - h, 0.2)) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-7)


def test_phase_diagram_tanh():
  sw2 = np.linspace(0.5, 4.0, 15)
  sb2 = np.linspace(0.0, 0.5, 6)
  pd = correlations.phase_diagram("tanh", sw2, sb2)
  assert pd.chi.shape == (15, 6) and pd.chi.dtype == np.float64
  # sigma_w2 = 1, sigma_b2 = 0 is exactly critical (q* = 0, chi = 1): xi_c and xi_q are inf there,
  # finite everywhere else.
  critical = (sw2[:, None] == 1.0) & (sb2[None, :] == 0.0)
  for field in pd:
    assert np.all(np.isfinite(field[~critical]))
  assert pd.chi[critical] == 1.0 and pd.q_star[critical] == 0.0 and pd.c_star[critical] == 1.0
  assert pd.xi_c[critical] == np.inf and pd.xi_q[critical] == np.inf
  assert np.all(pd.xi_c > 0) and np.all(pd.xi_q > 0)
  np.testing.assert_allclose(pd.chi[3, 2], mf.chi("tanh", np.sqrt(sw2[3]), np.sqrt(sb2[2])),
                             rtol=1e-13)
  # Ordered (chi < 1) below the critical line, chaotic above; the line from critical_sigma_w.
  for j, b2 in enumerate(sb2):
    critical_w2 = mf.critical_sigma_w("tanh", np.sqrt(b2))**2
    below, above = sw2 < critical_w2 * (1 - 1e-9), sw2 > critical_w2 * (1 + 1e-9)
    assert np.all(pd.chi[below, j] < 1) and np.all(pd.chi[above, j] > 1)
    assert np.all(pd.c_star[below, j] == 1) and np.all(pd.c_star[above, j] < 1)
  # The grid's points agree with the pointwise functions (batched evaluation, same numbers).
  for i, j in ((10, 3), (14, 0), (6, 5)):
    sw, sb = np.sqrt(sw2[i]), np.sqrt(sb2[j])
    np.testing.assert_allclose(pd.c_star[i, j], correlations.c_star("tanh", sw, sb), rtol=1e-12)
    np.testing.assert_allclose([pd.xi_q[i, j], pd.xi_c[i, j]],
                               correlations.depth_scales("tanh", sw, sb),
                               rtol=1e-10)


def test_phase_diagram_relu_marks_missing_fixed_point():
  pd = correlations.phase_diagram("relu", np.array([1.0, 2.5]), np.array([0.1]))
  np.testing.assert_allclose(pd.chi[:, 0], [0.5, 1.25])
  assert np.isfinite(pd.q_star[0, 0]) and np.isinf(pd.q_star[1, 0])
  assert np.isnan(pd.xi_c[1, 0])


@pytest.mark.compute_bound
def test_q_star_against_monte_carlo(key):
  """Mean squared pre-activation of width-1000 Gaussian tanh networks, layers 20-49, vs q*.

  mean(h^2) over N units fluctuates by sqrt(2 / N) = 4.5% per layer; averaging 30 layers (which
  decorrelate over xi_q ~ 1.4 layers) of 4 networks brings it to ~0.7% (measured over 20 seeds:
  std 0.71%, mean offset +0.27%, the O(1/N) finite-width bias included). 3% is > 3.5 sigma.
  """
  width, depth, sigma_w, sigma_b = 1000, 50, 1.5, 0.3
  q_star = float(mf.q_star("tanh", sigma_w, sigma_b))

  def network(k):
    k_input, k_layers = jax.random.split(k)
    x = mf.sample_inputs_at_q(k_input, "tanh", 4.0, width, 1, jnp.float32)[0]

    def layer(x, l):
      k_w, k_b = jax.random.split(jax.random.fold_in(k_layers, l))
      w = sigma_w * jax.random.normal(k_w, (width, width)) / np.sqrt(width)
      h = w @ x + sigma_b * jax.random.normal(k_b, (width,))
      return jnp.tanh(h), jnp.mean(h**2)

    return jax.lax.scan(layer, x, jnp.arange(depth))[1]

  q = jax.jit(jax.vmap(network))(jax.random.split(key, 4))
  np.testing.assert_allclose(np.mean(q[:, 20:]), q_star, rtol=0.03)
  # It started away from q* (q_map(4) = 1.5 in layer 0), so the agreement is not by construction.
  assert np.mean(q[:, 0]) > 1.3 * q_star
