"""Gaussian expectations of a nonlinearity and its derivative, h ~ N(0, q), that mean field needs.

Per activation: E[phi(h)**2] and its slope in q, mu_k = E[phi'(h)**(2k)], and the two kernels
E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)] of a correlated pair u1, u2 ~ N(0, q) (with the gaps to
their values at c = 1, for the c-map near its fixed point). Closed forms where they exist (linear,
relu, erf, hard_tanh), quadrature otherwise.

Numerics. Gaussian expectations of smooth phi use the trapezoidal rule in z on [-10, 10] with 801
points. Not Gauss-Hermite: for tanh at q = 4.5 (inside the usual phase-diagram range), 200-point
Gauss-Hermite is off by 4e-5 and numpy's `hermegauss` returns nan beyond ~300 points, whereas the
trapezoidal rule converges geometrically for integrands analytic in a strip (Trefethen & Weideman
2014, "The exponentially convergent trapezoidal rule"); tanh's poles at h = +-i pi/2 set the strip,
and the error measured against scipy.integrate.quad is < 1e-13 for q <= 30, ~5e-12 at q = 100.
The c-map of a smooth phi is a 2-d integral over the two pre-activations. It is taken in rotated
coordinates u1, u2 = sqrt(q) (alpha x +- beta y), alpha**2 + beta**2 = 1, x, y ~ N(0, 1), where the
Gaussian weight is isotropic whatever the correlation c (no ridge as c -> +-1), by a product
trapezoid rule whose steps are sized from the distance of phi's singularities to the real axis
(`_kernel_rule`); its size grows like q, so the rule comes in levels (q <= 4**level), chosen from
the largest q of a call. Within 1e-12 of nested adaptive quadrature for q up to 64 at every c
(tests at q = 50). Activations with kinks (relu, hard_tanh) and erf use closed forms (normal CDFs,
the arc-cosine kernel, Williams' arcsin kernel), exact where a quadrature over a kink converges
only algebraically; hard_tanh's c-map conditions on one of the two Gaussians and integrates the
other by piecewise Gauss-Legendre (see _hard_tanh_kernels).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf, ndtr

from isometry.theory import x64
from isometry.theory.activations import ACTIVATIONS, Activation


NUM_POINTS = 801        # 1-d trapezoid points (see the module docstring for the accuracy)


HALF_WIDTH = 10.0       # the standard normal mass beyond |z| = 10 is 1.5e-23


HALF_WIDTH_2D = 8.5     # mass beyond 8.5 is 2e-17 per axis (c-map of smooth phi)


_KERNEL_STEP = 0.258    # x-step of the c-map rule at level 0 (see _kernel_rule)


TRACED_LEVEL = 3       # c-map rule level when q is unknown at trace time: accurate for q <= 64


_SIMPSON_BELOW = 1e-3   # half-gap |u1 - u2| / 2 below which a difference of phi is taken by Simpson


_LEGENDRE_POINTS = 48   # Gauss-Legendre nodes per piece for hard_tanh's c-map (4 pieces)


TINY = 1e-300          # keeps 1 / sqrt(q) finite at q = 0, where the limits are exact anyway


@functools.lru_cache(maxsize=None)
def trapezoid_rule(num_points: int, half_width: float):
  """Nodes z and weights w with sum(w * f(z)) ~ E[f(z)], z ~ N(0, 1); numpy float64 constants."""
  z = np.linspace(-half_width, half_width, num_points)
  w = (z[1] - z[0]) * np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
  return z, w


@functools.lru_cache(maxsize=None)
def legendre_rule(num_points: int):
  return np.polynomial.legendre.leggauss(num_points)


def expect(f, q, num_points=NUM_POINTS):
  z, w = trapezoid_rule(num_points, HALF_WIDTH)
  return jnp.sum(x64.f64(w) * f(jnp.sqrt(q) * x64.f64(z)))


def gaussian_expectation(f, q, num_points: int = NUM_POINTS):
  """E[f(sqrt(q) z)], z ~ N(0, 1), by the trapezoidal rule on z in [-10, 10].

  Args:
    f: elementwise function of an array of pre-activations.
    q: variance (scalar, >= 0).
    num_points: quadrature points (odd, so z = 0 is a node). The default gives ~1e-13 absolute
      accuracy for tanh-like f up to q ~ 30; smooth f with singularities at distance d from the
      real h axis need a step 20 sqrt(q) / num_points well below d. Kinks (relu, hard_tanh) make
      any quadrature converge slowly: use the closed forms in this module for those.

  Returns:
    float64 scalar.
  """
  x64.check_q(q)
  with jax.enable_x64(True):
    return x64.finish(expect(f, x64.f64(q), num_points))


class Integrals(NamedTuple):
  second_moment: callable
  second_moment_slope: callable
  mu: callable
  kernels: callable
  c_map_gaps: callable


def normal_pdf(x):
  return jnp.exp(-0.5 * jnp.square(x)) / jnp.sqrt(2.0 * jnp.pi)


def _gaps_from_kernels(kernels):
  """c_map_gaps by differences of `kernels` (closed forms, accurate to ~1e-16 absolute)."""
  def gaps(q, eps, level):
    k1, dk1 = kernels(q, jnp.ones_like(eps), level)
    k, dk = kernels(q, 1.0 - eps, level)
    return dk1 - (k1 - k) / (q * eps), dk1 - dk
  return gaps


def _linear_kernels(q, c, level=None):
  return q * c, jnp.ones_like(c)


def _relu_kernels(q, c, level=None):
  # Arc-cosine kernel of degree 1 and 0 (Cho & Saul 2009).
  theta = jnp.arccos(jnp.clip(c, -1.0, 1.0))
  s = jnp.sqrt(jnp.clip(1.0 - jnp.square(c), 0.0, 1.0))
  return q / (2.0 * jnp.pi) * (s + (jnp.pi - theta) * c), (jnp.pi - theta) / (2.0 * jnp.pi)


def _erf_kernels(q, c, level=None):
  # E[erf(u1) erf(u2)] = (2/pi) arcsin(2 q c / (1 + 2 q)) (Williams 1997); the second is the
  # Gaussian integral E[exp(-u1^2 - u2^2)] = det(I + 2 Sigma)^(-1/2) times (2 / sqrt(pi))^2.
  k = 2.0 / jnp.pi * jnp.arcsin(2.0 * q * c / (1.0 + 2.0 * q))
  dk = 4.0 / jnp.pi / jnp.sqrt(jnp.square(1.0 + 2.0 * q) - jnp.square(2.0 * q * c))
  return k, dk


def _erf_c_map_gaps(q, eps, level=None):
  # K(1) - K(c) = (2/pi) (arcsin r - arcsin(r c)), r = 2q / (1 + 2q), by the angle difference
  # arcsin a - arcsin b = atan2(a sqrt(1 - b^2) - b sqrt(1 - a^2), ...) with the first argument
  # rewritten as (a^2 - b^2) / (a sqrt(1 - b^2) + b sqrt(1 - a^2)), a^2 - b^2 = r^2 eps (2 - eps).
  r = 2.0 * q / (1.0 + 2.0 * q)
  c = 1.0 - eps
  a, b = r, r * c
  ca, cb = jnp.sqrt(1.0 - a * a), jnp.sqrt(1.0 - b * b)
  sine = r * r * eps * (2.0 - eps) / jnp.maximum(a * cb + b * ca, TINY)
  difference = 2.0 / jnp.pi * jnp.arctan2(sine, ca * cb + a * b)
  dk1 = 4.0 / jnp.pi / jnp.sqrt(1.0 + 4.0 * q)
  _, dk = _erf_kernels(q, c)
  return dk1 - difference / (q * eps), dk1 - dk


def _hard_tanh_second_moment(q):
  # E[min(h^2, 1)] = q E[z^2; |z| < a] + P(|z| > a) with a = 1 / sqrt(q), and
  # E[z^2; |z| < a] = P(|z| < a) - 2 a pdf(a).
  q = jnp.maximum(q, TINY)
  a = 1.0 / jnp.sqrt(q)
  p = erf(a / jnp.sqrt(2.0))
  return q * (p - 2.0 * a * normal_pdf(a)) + 1.0 - p


def _hard_tanh_second_moment_slope(q):
  # (min(h^2, 1))'' = 2 1{|h| < 1} - 2 delta(h - 1) - 2 delta(h + 1).
  q = jnp.maximum(q, TINY)
  return erf(1.0 / jnp.sqrt(2.0 * q)) - 2.0 * normal_pdf(1.0 / jnp.sqrt(q)) / jnp.sqrt(q)


def _hard_tanh_kernels(q, c, level=None):
  """Both kernels for hard_tanh by conditioning on u1.

  Given z1, u2 / sqrt(q) = c z1 + s z2 ~ N(c z1, s^2) (s = sqrt(1 - c^2)), and the conditional
  expectations of phi'(u2) = 1{|u2| < 1} and of phi(u2) = sqrt(q) clip(u2 / sqrt(q), -a, a)
  (a = 1 / sqrt(q)) are normal-CDF expressions, smooth in z1 but with a boundary layer of width
  ~s around z1 = +-a / c. Both outer integrands are even in z1, so the integral over z1 >= 0 is
  doubled; it is split at the kink z1 = a of phi(u1) (phi = +-1 beyond it, phi' = 0), with the
  boundary layer [a - d, a + d], d = 8 s, in pieces of its own, each by Gauss-Legendre. This
  keeps the kernels accurate to ~1e-14 as c -> 1, where the c-map of hard_tanh is
  non-analytic ((1 - c)^(3/2)) and the chaotic fixed point c* sits within ~1e-5 of 1 near chi = 1.
  """
  q = jnp.maximum(q, TINY)
  a = 1.0 / jnp.sqrt(q)
  c = jnp.clip(c, -1.0, 1.0)
  s = jnp.maximum(jnp.sqrt(1.0 - jnp.square(c)), TINY)
  x, w = legendre_rule(_LEGENDRE_POINTS)
  x, w = x64.f64(x), x64.f64(w)

  def conditionals(z1):
    m = c * z1
    lo, hi = (-a - m) / s, (a - m) / s
    p_in = ndtr(hi) - ndtr(lo)
    clipped = (-a * ndtr(lo) + a * ndtr(-hi) + m * p_in
               - s * (normal_pdf(hi) - normal_pdf(lo)))
    return jnp.sqrt(q) * clipped, p_in

  kink = jnp.minimum(a, HALF_WIDTH)       # beyond |z| = 10 the Gaussian weight is negligible
  inner = jnp.minimum(8.0 * s, 0.5 * kink)
  outer = jnp.minimum(8.0 * s, HALF_WIDTH)
  # The four pieces as one array (4, n): two with |u1| < 1 (phi = u1, phi' = 1), two beyond the
  # kink (phi = 1, phi' = 0).
  lo = jnp.stack([0.0 * kink, kink - inner, kink, kink + outer])[:, None]
  hi = jnp.stack([kink - inner, kink, kink + outer, kink + HALF_WIDTH])[:, None]
  z = lo + 0.5 * (hi - lo) * (x[None, :] + 1.0)
  wz = 0.5 * (hi - lo) * w[None, :] * normal_pdf(z)
  g, p_in = conditionals(z)
  linear = (jnp.arange(4) < 2)[:, None]
  k = jnp.sum(wz * jnp.where(linear, jnp.sqrt(q) * z, 1.0) * g)
  dk = jnp.sum(jnp.where(linear, wz * p_in, 0.0))
  return 2.0 * k, 2.0 * dk


_CLOSED_FORMS = {
    "linear": Integrals(
        second_moment=lambda q: q,
        second_moment_slope=jnp.ones_like,
        mu=lambda q, k: jnp.ones_like(q),
        kernels=_linear_kernels,
        c_map_gaps=lambda q, eps, level: (jnp.zeros_like(eps), jnp.zeros_like(eps))),
    "relu": Integrals(
        second_moment=lambda q: 0.5 * q,
        second_moment_slope=lambda q: jnp.full_like(q, 0.5),
        mu=lambda q, k: jnp.full_like(q, 0.5),
        kernels=_relu_kernels,
        c_map_gaps=_gaps_from_kernels(_relu_kernels)),
    "erf": Integrals(
        second_moment=lambda q: 2.0 / jnp.pi * jnp.arcsin(2.0 * q / (1.0 + 2.0 * q)),
        second_moment_slope=lambda q: 4.0 / (jnp.pi * (1.0 + 2.0 * q) * jnp.sqrt(1.0 + 4.0 * q)),
        mu=lambda q, k: (4.0 / jnp.pi)**k / jnp.sqrt(1.0 + 4.0 * k * q),
        kernels=_erf_kernels,
        c_map_gaps=_erf_c_map_gaps),
    "hard_tanh": Integrals(
        second_moment=_hard_tanh_second_moment,
        second_moment_slope=_hard_tanh_second_moment_slope,
        # phi'(h)^2 is the indicator of |h| < 1, so every moment is P(|h| < 1).
        mu=lambda q, k: erf(1.0 / jnp.sqrt(2.0 * jnp.maximum(q, TINY))),
        kernels=_hard_tanh_kernels,
        c_map_gaps=_gaps_from_kernels(_hard_tanh_kernels)),
}


@functools.lru_cache(maxsize=None)
def _kernel_rule(level: int):
  """Product trapezoid rule for the c-map of a smooth phi at q <= Q = 4**level.

  Nodes x on [-8.5, 8.5] and y on [0, 8.5] with weights wx, wy such that
  sum(wx[:, None] * wy[None, :] * f(x[:, None], y[None, :])) ~ E[f(x, y)], x, y ~ N(0, 1), for f
  even in y (off y = 0 the y-weights are doubled); numpy float64 constants.

  Error estimate. The integrand is phi(u1) phi(u2) (or phi' phi') with
  u1, u2 = sqrt(q) (alpha x +- beta y), c = alpha**2 - beta**2 >= 0 (c < 0 is reduced to c > 0 by
  phi(h) -> phi(-h)), so alpha <= 1 and beta <= 1 / sqrt(2). For phi analytic in |Im h| < pi / 2
  (tanh has poles at +-i pi / 2; erf is entire) it is analytic in x for
  |Im x| < a = pi / (2 sqrt(q) alpha), and in y for |Im y| < pi / (2 sqrt(q) beta). The
  trapezoid rule with step h errs by at most 2 M exp(-2 pi theta a / h) for any theta < 1,
  M the integral of |integrand| on the lines Im x = +-theta a (Trefethen & Weideman 2014,
  Thm 5.1); with theta = 0.9, M <= 1 / cos(0.45 pi)**4 = 1.7e3 (sech**2 squared near its pole).
  Steps h_x = 0.258 / sqrt(Q) and h_y = sqrt(2) h_x make the exponent 34.4 at q = Q whatever c:
  error <= 4e-12 (measured against nested adaptive quadrature: <= 1e-12 relative at q = Q; at
  q << Q the rule is far finer than needed, since the pole moves away as 1 / sqrt(q)). The
  Gaussian alone needs h <= 0.5 (aliasing error exp(-2 pi**2 / h**2)), which level 0 meets. The
  truncation at |x|, |y| = 8.5 drops 2e-17 of the Gaussian mass.
  Nodes per level: 67 x 25, 133 x 48, 265 x 95, 529 x 188, 1057 x 374, ...
  """
  scale = 2.0**level                                    # sqrt(Q)
  num_x = 1 + int(np.ceil(2.0 * HALF_WIDTH_2D * scale / _KERNEL_STEP))
  num_y = 1 + int(np.ceil(HALF_WIDTH_2D * scale / (np.sqrt(2.0) * _KERNEL_STEP)))
  hx = 2.0 * HALF_WIDTH_2D / (num_x - 1)                # not x[1] - x[0], which loses digits
  hy = HALF_WIDTH_2D / (num_y - 1)
  x = -HALF_WIDTH_2D + hx * np.arange(num_x)
  y = hy * np.arange(num_y)
  wx = hx * np.exp(-0.5 * x**2) / np.sqrt(2.0 * np.pi)
  wy = 2.0 * hy * np.exp(-0.5 * y**2) / np.sqrt(2.0 * np.pi)
  wy[0] /= 2.0
  return x, wx, y, wy


def kernel_rule_level(q) -> int:
  """The level of the c-map rule that is accurate at variance q: the smallest with q <= 4**level.

  Args:
    q: largest pre-activation variance of the call (scalar or array; nan and inf are ignored).

  Returns:
    int >= 0; the rule at level l has about 1700 * 4**l nodes (see `_kernel_rule`).
  """
  q = np.asarray(q, dtype=np.float64)
  q = q[np.isfinite(q)]
  q_max = float(np.max(q)) if q.size else 0.0
  if q_max <= 1.0:
    return 0
  return int(np.ceil(np.log(q_max) / np.log(4.0) - 1e-12))


def _rotated(q, c_abs_gap, level):
  """Nodes m = sqrt(q) alpha x (n_x, 1), b = sqrt(q) beta y (1, n_y), weights w (n_x, n_y).

  eps = 1 - |c| is passed instead of c so that alpha = sqrt(1 - eps / 2), beta = sqrt(eps / 2)
  keep their digits as c -> 1.
  """
  x, wx, y, wy = (x64.f64(v) for v in _kernel_rule(level))
  eps = c_abs_gap
  root = jnp.sqrt(q)
  m = root * jnp.sqrt(1.0 - 0.5 * eps) * x[:, None]
  b = root * jnp.sqrt(0.5 * eps) * y[None, :]
  return m, b, wx[:, None] * wy[None, :], x, y


def _quadrature_integrals(act: Activation) -> Integrals:
  """Gaussian integrals of a smooth phi by quadrature; phi'' from jax.grad of phi'.

  At q = 0 (h = 0 exactly) the closed forms phi(0)**2, phi'(0)**2 and phi'(0)**(2k) are used:
  the quadrature's weights sum to 1 only up to rounding, and chi = sigma_w**2 phi'(0)**2 must be
  exact there (see CHI_TOLERANCE).
  """
  second_derivative = jax.vmap(jax.grad(act.derivative))
  zero = lambda: jnp.zeros((), jnp.float64)

  def at_zero(q, value, quadrature):
    return jnp.where(q == 0.0, value, quadrature)

  def second_moment(q):
    return at_zero(q, jnp.square(act.fn(zero())), expect(lambda h: jnp.square(act.fn(h)), q))

  def slope(q):
    def integrand(h):
      return jnp.square(act.derivative(h)) + act.fn(h) * second_derivative(h)
    exact = (jnp.square(act.derivative(zero()))
             + act.fn(zero()) * jax.grad(act.derivative)(zero()))
    return at_zero(q, exact, expect(integrand, q))

  def mu(q, k):
    return at_zero(q, act.derivative(zero())**(2 * k),
                   expect(lambda h: act.derivative(h)**(2 * k), q))

  def kernels(q, c, level=TRACED_LEVEL):
    # c < 0: E[phi(u1) phi(u2)] = E[phi(u1) psi(u2')] with psi(h) = phi(-h) and u2' = -u2, whose
    # correlation with u1 is |c|; the rule is sized for c >= 0 (beta <= 1 / sqrt 2).
    c = jnp.clip(c, -1.0, 1.0)
    sign = jnp.where(c < 0.0, -1.0, 1.0)
    m, b, w, _, _ = _rotated(q, 1.0 - jnp.abs(c), level)
    u1, u2 = m + b, sign * (m - b)
    k = jnp.sum(w * act.fn(u1) * act.fn(u2))
    dk = jnp.sum(w * act.derivative(u1) * act.derivative(u2))
    return k, dk

  def c_map_gaps(q, eps, level=TRACED_LEVEL):
    # With d = phi'(sqrt(q) x) (the limit c -> 1 on the same nodes) and s = (phi(m + b) -
    # phi(m - b)) / (2 b) the mean slope between the two pre-activations:
    #   (K(1) - K(c)) / (q eps) = sum w y^2 s^2 (since K(1) - K(c) = E[(phi(u1) - phi(u2))^2] / 2
    #   and (2 b)^2 = 2 q eps y^2), and dk(1) on these nodes is sum w d^2, so
    #   deficit = sum w y^2 (d - s)(d + s) + dk(1) (1 - sum w y^2 / sum w),
    #   gap = sum w (d^2 - phi'(u1) phi'(u2)).
    # The second deficit term is the y-rule's error on E[y^2] = 1 (~1e-16), kept for consistency.
    # s from the difference of phi loses ~1e-16 / (2 b) relative; below |b| = _SIMPSON_BELOW it is
    # Simpson's rule on phi' over [m - b, m + b] instead (error b^4 |phi^(5)| / 180 relative).
    m, b, w, x, y = _rotated(q, eps, level)
    d = act.derivative(jnp.sqrt(q) * x)[:, None]
    u1, u2 = m + b, m - b
    g1, g2 = act.derivative(u1), act.derivative(u2)
    small = jnp.abs(b) < _SIMPSON_BELOW
    difference = (act.fn(u1) - act.fn(u2)) / (2.0 * jnp.where(small, 1.0, b))
    simpson = (g1 + 4.0 * act.derivative(m) + g2) / 6.0
    s = jnp.where(small, simpson, difference)
    y2 = jnp.square(y)[None, :]
    deficit = jnp.sum(w * y2 * (d - s) * (d + s)) + jnp.sum(w * jnp.square(d)) * (
        1.0 - jnp.sum(w * y2) / jnp.sum(w))
    gap = jnp.sum(w * (jnp.square(d) - g1 * g2))
    return deficit, gap

  return Integrals(
      second_moment=second_moment,
      second_moment_slope=slope,
      mu=mu,
      kernels=kernels,
      c_map_gaps=c_map_gaps)


def has_closed_forms(act: Activation) -> bool:
  return act.name in _CLOSED_FORMS and ACTIVATIONS.get(act.name) == act


def integrals(act: Activation) -> Integrals:
  if has_closed_forms(act):
    return _CLOSED_FORMS[act.name]
  if act.bernoulli_derivative:
    raise ValueError(
        f"activation {act.name!r} has a 0/1 derivative (kinks) and no closed form here; "
        "quadrature would converge too slowly")
  return _quadrature_integrals(act)


# Homogeneous activations have a linear q-map, q -> sigma_w^2 c q + sigma_b^2.
def linear_q_map_slope(act: Activation):
  """E[phi(z)**2], z ~ N(0, 1), for a positively homogeneous phi with closed forms (relu: 1/2,
  linear: 1), whose variance map q -> sigma_w**2 E[phi(z)**2] q + sigma_b**2 is linear; None for
  any other phi."""
  if not (act.homogeneous and has_closed_forms(act)):
    return None
  return float(_CLOSED_FORMS[act.name].second_moment(1.0))
