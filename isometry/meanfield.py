"""Mean-field signal propagation in deep random networks.

Network: h_l = W_l x_{l-1} + b_l, x_l = phi(h_l), with W_l entries of variance sigma_w**2 / N
(or sigma_w times a Haar-orthogonal matrix: the mean field is the same) and b_l ~ N(0, sigma_b**2).
At large width the pre-activations are Gaussian with a variance q_l that follows the q-map, and the
correlation c_l between two inputs follows the c-map (Poole et al. 2016; Schoenholz et al. 2016):

  q_{l+1} = sigma_w**2 E[phi(sqrt(q_l) z)**2] + sigma_b**2,                       z ~ N(0, 1)
  c_{l+1} = (sigma_w**2 E[phi(u1) phi(u2)] + sigma_b**2) / q*,  u1 = sqrt(q*) z1,
            u2 = sqrt(q*) (c_l z1 + sqrt(1 - c_l**2) z2).

chi = sigma_w**2 E[phi'(h)**2] (h ~ N(0, q*)) is the slope of the c-map at c = 1: chi < 1 is the
ordered phase, chi > 1 the chaotic one, chi = 1 the critical line where dynamical isometry is
possible (Pennington, Schoenholz & Ganguli 2017).

Every public function takes `activation` as a name ("tanh", "hard_tanh", "relu", "erf", "linear")
or an `Activation`, computes in float64 (inside `jax.enable_x64`), and works under `jit`/`vmap`
over its scalar arguments. Called with concrete values they return numpy float64 (a jax float64
array used outside enable_x64 would silently drop to float32 in the caller's next operation);
under tracing, jax arrays. Bad concrete arguments raise ValueError; under tracing there is
nothing to check, and the functions return nan (or inf) where the answer does not exist.

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

Exactly critical inputs. chi is evaluated to ~1e-15 (module constant CHI_TOLERANCE says how this is
bounded); where |chi - 1| <= CHI_TOLERANCE the point is on the critical line as far as float64 can
tell, and c* = 1, xi_c = inf. At sigma_b = 0 an odd-like phi (phi(0) = 0) has q* = 0 exactly while
sigma_w**2 phi'(0)**2 <= 1, and there chi = sigma_w**2 phi'(0)**2 in closed form.
"""
import functools
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import erf, ndtr

from isometry.activations import ACTIVATIONS, Activation, get_activation

ActivationLike = Union[str, Activation]

NUM_POINTS = 801        # 1-d trapezoid points (see the module docstring for the accuracy)
HALF_WIDTH = 10.0       # the standard normal mass beyond |z| = 10 is 1.5e-23
HALF_WIDTH_2D = 8.5     # mass beyond 8.5 is 2e-17 per axis (c-map of smooth phi)
_KERNEL_STEP = 0.258    # x-step of the c-map rule at level 0 (see _kernel_rule)
_TRACED_LEVEL = 3       # c-map rule level when q is unknown at trace time: accurate for q <= 64
_SIMPSON_BELOW = 1e-3   # half-gap |u1 - u2| / 2 below which a difference of phi is taken by Simpson
_LEGENDRE_POINTS = 48   # Gauss-Legendre nodes per piece for hard_tanh's c-map (4 pieces)

# |chi - 1| at or below this is the critical line as far as float64 can tell. chi = sigma_w**2
# mu_1(q*) is a sum of 801 positive terms (relative rounding ~sqrt(801) eps = 3e-15 for a
# random-walk accumulation, at most 801 eps = 1.8e-13), times sigma_w**2 (one rounding), at a q*
# that Newton solves to its rounding level, which moves chi by ~eps |d chi / d q| q /
# (1 - q-map slope) ~ eps. Measured at the critical points of tanh, erf and hard_tanh for q* in
# [1e-6, 100]: |chi - 1| <= 4.3e-15 (closed forms: one rounding). The tolerance is ~25 times that
# (below the worst-case bound); what it gives up is the distinction between xi_c = inf and
# xi_c > 1e13 layers.
CHI_TOLERANCE = 1e-13

_Q_MAX_ITERATIONS = 200
_C_MAX_ITERATIONS = 60
_RTOL = 1e-13
_ATOL = 1e-15
_TINY = 1e-300          # keeps 1 / sqrt(q) finite at q = 0, where the limits are exact anyway
# critical_point: the q* asked for must come back from q_star to this relative accuracy.
_CRITICAL_Q_RTOL = 1e-9
# Under tracing critical_point cannot re-solve q*; it returns nan where 1 - (q-map slope) is below
# this: rounding of ~1e-15 q in the q-map then moves q* by more than 1e-9 relative.
_ISOLATED_SLOPE_GAP = 1e-6


# ----------------------------------------------------------------------------- helpers

def _resolve(activation: ActivationLike) -> Activation:
  if isinstance(activation, Activation):
    return activation
  if isinstance(activation, str):
    return get_activation(activation)
  raise ValueError(f"activation must be a name or an Activation, got {type(activation).__name__}")


def _concrete(x):
  """x as a float64 numpy array when it has a value now; None under tracing."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x, dtype=np.float64)


def _check_scales(sigma_w, sigma_b):
  sw, sb = _concrete(sigma_w), _concrete(sigma_b)
  if sw is not None and not np.all(sw > 0):
    raise ValueError(f"sigma_w must be > 0, got {sigma_w}")
  if sb is not None and not np.all(sb >= 0):
    raise ValueError(f"sigma_b must be >= 0, got {sigma_b}")


def _check_q(q, name="q"):
  qc = _concrete(q)
  if qc is not None and not np.all(qc >= 0):
    raise ValueError(f"{name} must be >= 0, got {q}")


def _f64(x):
  return jnp.asarray(x, dtype=jnp.float64)


def _finish(result):
  """numpy float64 for concrete results (so arithmetic outside enable_x64 keeps float64),
  unchanged under tracing."""
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(result)):
    return result
  return jax.tree.map(lambda x: np.asarray(x)[()], result)


@functools.lru_cache(maxsize=None)
def _trapezoid_rule(num_points: int, half_width: float):
  """Nodes z and weights w with sum(w * f(z)) ~ E[f(z)], z ~ N(0, 1); numpy float64 constants."""
  z = np.linspace(-half_width, half_width, num_points)
  w = (z[1] - z[0]) * np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
  return z, w


@functools.lru_cache(maxsize=None)
def _legendre_rule(num_points: int):
  return np.polynomial.legendre.leggauss(num_points)


def _expect(f, q, num_points=NUM_POINTS):
  z, w = _trapezoid_rule(num_points, HALF_WIDTH)
  return jnp.sum(_f64(w) * f(jnp.sqrt(q) * _f64(z)))


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
  _check_q(q)
  with jax.enable_x64(True):
    return _finish(_expect(f, _f64(q), num_points))


# ------------------------------------------------- per-activation Gaussian integrals
# Each entry gives, for h ~ N(0, q):
#   second_moment(q) = E[phi(h)^2]
#   second_moment_slope(q) = d/dq E[phi(h)^2] = E[phi'(h)^2 + phi(h) phi''(h)] (with phi'' a
#     distribution for kinked phi: the heat equation d/dq E[g(h)] = E[g''(h)] / 2)
#   mu(q, k) = E[phi'(h)^(2k)]
#   kernels(q, c, level) = (E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]), u1, u2 ~ N(0, q) with
#     correlation c; `level` sizes the quadrature of smooth phi (see _kernel_rule), closed forms
#     ignore it.
#   c_map_gaps(q, eps, level) = (deficit, gap) at c = 1 - eps, 0 < eps <= 1, with K, dk the two
#     kernels: deficit = dk(1) - (K(1) - K(c)) / (q eps), gap = dk(1) - dk(c). Both vanish like
#     eps (like sqrt(eps) for hard_tanh). For smooth phi (quadrature) and erf they are computed
#     without the cancellation of the differences they are written as, which places the chaotic
#     fixed point c* when it is within ~1e-12 of 1 (see _c_star); relu and hard_tanh take the
#     differences (relative error ~1e-16 / eps).

class _Integrals(NamedTuple):
  second_moment: callable
  second_moment_slope: callable
  mu: callable
  kernels: callable
  c_map_gaps: callable


def _normal_pdf(x):
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
  sine = r * r * eps * (2.0 - eps) / jnp.maximum(a * cb + b * ca, _TINY)
  difference = 2.0 / jnp.pi * jnp.arctan2(sine, ca * cb + a * b)
  dk1 = 4.0 / jnp.pi / jnp.sqrt(1.0 + 4.0 * q)
  _, dk = _erf_kernels(q, c)
  return dk1 - difference / (q * eps), dk1 - dk


def _hard_tanh_second_moment(q):
  # E[min(h^2, 1)] = q E[z^2; |z| < a] + P(|z| > a) with a = 1 / sqrt(q), and
  # E[z^2; |z| < a] = P(|z| < a) - 2 a pdf(a).
  q = jnp.maximum(q, _TINY)
  a = 1.0 / jnp.sqrt(q)
  p = erf(a / jnp.sqrt(2.0))
  return q * (p - 2.0 * a * _normal_pdf(a)) + 1.0 - p


def _hard_tanh_second_moment_slope(q):
  # (min(h^2, 1))'' = 2 1{|h| < 1} - 2 delta(h - 1) - 2 delta(h + 1).
  q = jnp.maximum(q, _TINY)
  return erf(1.0 / jnp.sqrt(2.0 * q)) - 2.0 * _normal_pdf(1.0 / jnp.sqrt(q)) / jnp.sqrt(q)


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
  q = jnp.maximum(q, _TINY)
  a = 1.0 / jnp.sqrt(q)
  c = jnp.clip(c, -1.0, 1.0)
  s = jnp.maximum(jnp.sqrt(1.0 - jnp.square(c)), _TINY)
  x, w = _legendre_rule(_LEGENDRE_POINTS)
  x, w = _f64(x), _f64(w)

  def conditionals(z1):
    m = c * z1
    lo, hi = (-a - m) / s, (a - m) / s
    p_in = ndtr(hi) - ndtr(lo)
    clipped = (-a * ndtr(lo) + a * ndtr(-hi) + m * p_in
               - s * (_normal_pdf(hi) - _normal_pdf(lo)))
    return jnp.sqrt(q) * clipped, p_in

  kink = jnp.minimum(a, HALF_WIDTH)       # beyond |z| = 10 the Gaussian weight is negligible
  inner = jnp.minimum(8.0 * s, 0.5 * kink)
  outer = jnp.minimum(8.0 * s, HALF_WIDTH)
  # The four pieces as one array (4, n): two with |u1| < 1 (phi = u1, phi' = 1), two beyond the
  # kink (phi = 1, phi' = 0).
  lo = jnp.stack([0.0 * kink, kink - inner, kink, kink + outer])[:, None]
  hi = jnp.stack([kink - inner, kink, kink + outer, kink + HALF_WIDTH])[:, None]
  z = lo + 0.5 * (hi - lo) * (x[None, :] + 1.0)
  wz = 0.5 * (hi - lo) * w[None, :] * _normal_pdf(z)
  g, p_in = conditionals(z)
  linear = (jnp.arange(4) < 2)[:, None]
  k = jnp.sum(wz * jnp.where(linear, jnp.sqrt(q) * z, 1.0) * g)
  dk = jnp.sum(jnp.where(linear, wz * p_in, 0.0))
  return 2.0 * k, 2.0 * dk


_CLOSED_FORMS = {
    "linear": _Integrals(
        second_moment=lambda q: q,
        second_moment_slope=jnp.ones_like,
        mu=lambda q, k: jnp.ones_like(q),
        kernels=_linear_kernels,
        c_map_gaps=lambda q, eps, level: (jnp.zeros_like(eps), jnp.zeros_like(eps))),
    "relu": _Integrals(
        second_moment=lambda q: 0.5 * q,
        second_moment_slope=lambda q: jnp.full_like(q, 0.5),
        mu=lambda q, k: jnp.full_like(q, 0.5),
        kernels=_relu_kernels,
        c_map_gaps=_gaps_from_kernels(_relu_kernels)),
    "erf": _Integrals(
        second_moment=lambda q: 2.0 / jnp.pi * jnp.arcsin(2.0 * q / (1.0 + 2.0 * q)),
        second_moment_slope=lambda q: 4.0 / (jnp.pi * (1.0 + 2.0 * q) * jnp.sqrt(1.0 + 4.0 * q)),
        mu=lambda q, k: (4.0 / jnp.pi)**k / jnp.sqrt(1.0 + 4.0 * k * q),
        kernels=_erf_kernels,
        c_map_gaps=_erf_c_map_gaps),
    "hard_tanh": _Integrals(
        second_moment=_hard_tanh_second_moment,
        second_moment_slope=_hard_tanh_second_moment_slope,
        # phi'(h)^2 is the indicator of |h| < 1, so every moment is P(|h| < 1).
        mu=lambda q, k: erf(1.0 / jnp.sqrt(2.0 * jnp.maximum(q, _TINY))),
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
  x, wx, y, wy = (_f64(v) for v in _kernel_rule(level))
  eps = c_abs_gap
  root = jnp.sqrt(q)
  m = root * jnp.sqrt(1.0 - 0.5 * eps) * x[:, None]
  b = root * jnp.sqrt(0.5 * eps) * y[None, :]
  return m, b, wx[:, None] * wy[None, :], x, y


def _quadrature_integrals(act: Activation) -> _Integrals:
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
    return at_zero(q, jnp.square(act.fn(zero())), _expect(lambda h: jnp.square(act.fn(h)), q))

  def slope(q):
    def integrand(h):
      return jnp.square(act.derivative(h)) + act.fn(h) * second_derivative(h)
    exact = (jnp.square(act.derivative(zero()))
             + act.fn(zero()) * jax.grad(act.derivative)(zero()))
    return at_zero(q, exact, _expect(integrand, q))

  def mu(q, k):
    return at_zero(q, act.derivative(zero())**(2 * k),
                   _expect(lambda h: act.derivative(h)**(2 * k), q))

  def kernels(q, c, level=_TRACED_LEVEL):
    # c < 0: E[phi(u1) phi(u2)] = E[phi(u1) psi(u2')] with psi(h) = phi(-h) and u2' = -u2, whose
    # correlation with u1 is |c|; the rule is sized for c >= 0 (beta <= 1 / sqrt 2).
    c = jnp.clip(c, -1.0, 1.0)
    sign = jnp.where(c < 0.0, -1.0, 1.0)
    m, b, w, _, _ = _rotated(q, 1.0 - jnp.abs(c), level)
    u1, u2 = m + b, sign * (m - b)
    k = jnp.sum(w * act.fn(u1) * act.fn(u2))
    dk = jnp.sum(w * act.derivative(u1) * act.derivative(u2))
    return k, dk

  def c_map_gaps(q, eps, level=_TRACED_LEVEL):
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

  return _Integrals(
      second_moment=second_moment,
      second_moment_slope=slope,
      mu=mu,
      kernels=kernels,
      c_map_gaps=c_map_gaps)


def _has_closed_forms(act: Activation) -> bool:
  return act.name in _CLOSED_FORMS and ACTIVATIONS.get(act.name) == act


def _integrals(act: Activation) -> _Integrals:
  if _has_closed_forms(act):
    return _CLOSED_FORMS[act.name]
  if act.bernoulli_derivative:
    raise ValueError(
        f"activation {act.name!r} has a 0/1 derivative (kinks) and no closed form here; "
        "quadrature would converge too slowly")
  return _quadrature_integrals(act)


# Homogeneous activations have a linear q-map, q -> sigma_w^2 c q + sigma_b^2.
_LINEAR_Q_MAP = {"linear": 1.0, "relu": 0.5}


def _linear_q_map_slope(act: Activation):
  if act.name in _LINEAR_Q_MAP and ACTIVATIONS.get(act.name) == act:
    return _LINEAR_Q_MAP[act.name]
  return None


# ------------------------------------------------------------------------ q-map and q*

def _q_map(act, q, sigma_w, sigma_b):
  return jnp.square(sigma_w) * _integrals(act).second_moment(q) + jnp.square(sigma_b)


def q_map(activation: ActivationLike, q, sigma_w, sigma_b):
  """One step of the variance map: sigma_w**2 E[phi(sqrt(q) z)**2] + sigma_b**2.

  References:
    Poole et al., Exponential expressivity in deep neural networks through transient chaos,
    2016, eq. (3).
  """
  act = _resolve(activation)
  _check_q(q)
  _check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    return _finish(_q_map(act, _f64(q), _f64(sigma_w), _f64(sigma_b)))


@functools.lru_cache(maxsize=None)
def _origin(act: Activation):
  """(phi(0), phi'(0)) as Python floats."""
  with jax.ensure_compile_time_eval(), jax.enable_x64(True):
    zero = jnp.zeros((), jnp.float64)
    return float(act.fn(zero)), float(act.derivative(zero))


def _q_star(act, sigma_w, sigma_b):
  """q* (float64, traced); inf where q diverges, nan where every q is a fixed point.

  A linear q-map's gain within CHI_TOLERANCE of 1 counts as exactly 1 (it is chi). For phi(0) = 0
  and sigma_b = 0, q = 0 is a fixed point, the stable one while sigma_w**2 phi'(0)**2 <= 1 (a
  concave q-map lies below its tangent sigma_w**2 phi'(0)**2 q at 0): q* = 0 exactly there,
  where Newton would crawl towards the double root at sigma_w**2 phi'(0)**2 = 1.
  """
  sw2, sb2 = jnp.square(sigma_w), jnp.square(sigma_b)
  slope = _linear_q_map_slope(act)
  if slope is not None:
    gain = sw2 * slope
    below = gain < 1.0 - CHI_TOLERANCE
    return jnp.where(below, sb2 / jnp.where(below, 1.0 - gain, 1.0),
                     jnp.where(sb2 > 0.0, jnp.inf, jnp.nan))
  q = _q_star_fixed_point(act, sigma_w, sigma_b)
  phi0, dphi0 = _origin(act)
  if phi0 == 0.0:
    q = jnp.where((sb2 == 0.0) & (sw2 * dphi0**2 <= 1.0 + CHI_TOLERANCE), 0.0, q)
  return q


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _q_star_fixed_point(act, sigma_w, sigma_b):
  """q* of a bounded phi by safeguarded Newton; differentiable through the implicit function."""
  sw2, sb2 = jnp.square(sigma_w), jnp.square(sigma_b)
  integrals = _integrals(act)

  # Newton on f(q) = q_map(q) - q from q0 = sigma_w^2 + sigma_b^2 >= q* (|phi| <= 1 for the
  # bounded activations). For a concave q-map (tanh, erf, hard_tanh) the Newton iterates decrease
  # monotonically to q*; a step that leaves [0, q] falls back to a plain q_map step.
  def step(q):
    f = sw2 * integrals.second_moment(q) + sb2 - q
    df = sw2 * integrals.second_moment_slope(q) - 1.0
    newton = q - f / jnp.where(df < 0.0, df, -1.0)
    ok = (df < 0.0) & (newton >= 0.0) & (newton <= q) & jnp.isfinite(newton)
    return jnp.where(ok, newton, q + f)

  def cond(state):
    q, q_prev, i = state
    return (jnp.abs(q - q_prev) > _ATOL + _RTOL * q) & (i < _Q_MAX_ITERATIONS)

  def body(state):
    q, _, i = state
    return step(q), q, i + 1

  q0 = sw2 + sb2
  q, q_prev, _ = lax.while_loop(cond, body, (step(q0), q0, jnp.asarray(1)))
  return jnp.where(jnp.abs(q - q_prev) <= 1e3 * (_ATOL + _RTOL * q), q, jnp.nan)


@_q_star_fixed_point.defjvp
def _q_star_fixed_point_jvp(act, primals, tangents):
  # q* = F(q*, sigma_w, sigma_b), so dq* = (F_w dsigma_w + F_b dsigma_b) / (1 - F_q).
  sigma_w, sigma_b = primals
  d_sigma_w, d_sigma_b = tangents
  q = _q_star_fixed_point(act, sigma_w, sigma_b)
  integrals = _integrals(act)
  slope = jnp.square(sigma_w) * integrals.second_moment_slope(q)
  dq = (2.0 * sigma_w * integrals.second_moment(q) * d_sigma_w
        + 2.0 * sigma_b * d_sigma_b) / (1.0 - slope)
  return q, dq


@functools.partial(jax.jit, static_argnums=0)
def _q_star_jit(act, sigma_w, sigma_b):
  return _q_star(act, sigma_w, sigma_b)


def q_star(activation: ActivationLike, sigma_w, sigma_b):
  """Fixed point of the variance map.

  Args:
    activation: name or Activation.
    sigma_w, sigma_b: weight and bias scales (weights have variance sigma_w**2 / N).

  Returns:
    q* with q* = sigma_w**2 E[phi(sqrt(q*) z)**2] + sigma_b**2 (float64). For relu and linear the
    map is linear and q* = sigma_b**2 / (1 - sigma_w**2 c), c = 1/2 (relu), 1 (linear); there is no
    finite fixed point when sigma_w**2 c > 1 (or = 1 with sigma_b > 0: inf under tracing), and
    every q is one at sigma_w**2 c = 1, sigma_b = 0 (nan under tracing).

  Raises:
    ValueError: for sigma_w <= 0, sigma_b < 0, or, with concrete arguments, no unique finite q*.

  References:
    Poole et al. 2016, eq. (3); Schoenholz et al., Deep information propagation, 2016, eq. (3).
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    result = _q_star_jit(act, _f64(sigma_w), _f64(sigma_b))
  result = _finish(result)
  concrete = _concrete(result)
  if concrete is not None and not np.all(np.isfinite(concrete)):
    raise ValueError(
        f"no unique finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
        f"sigma_b={sigma_b} (q* = {concrete}: inf means q grows without bound, nan that every "
        "q is a fixed point or that the solver did not converge)")
  return result


# ------------------------------------------------------------------------- mu and chi

def mu(activation: ActivationLike, q, k: int):
  """mu_k = E[phi'(sqrt(q) z)**(2k)], the k-th moment of D**2 = phi'(h)**2, h ~ N(0, q).

  Args:
    activation: name or Activation.
    q: pre-activation variance (>= 0).
    k: 1 or 2 (static).

  References:
    Pennington, Schoenholz & Ganguli, Resurrecting the sigmoid in deep learning through
    dynamical isometry, 2017 (mu_1, mu_2 set the mean and variance of the spectrum of J J^T).
  """
  act = _resolve(activation)
  if k not in (1, 2):
    raise ValueError(f"k must be 1 or 2, got {k}")
  _check_q(q)
  with jax.enable_x64(True):
    return _finish(_integrals(act).mu(_f64(q), k))


def _chi(act, sigma_w, sigma_b):
  integrals = _integrals(act)
  if _linear_q_map_slope(act) is not None:
    # phi'^2 does not depend on q: chi is defined even where q* is not.
    return jnp.square(sigma_w) * integrals.mu(jnp.ones_like(sigma_w), 1)
  return jnp.square(sigma_w) * integrals.mu(_q_star(act, sigma_w, sigma_b), 1)


@functools.partial(jax.jit, static_argnums=0)
def _chi_jit(act, sigma_w, sigma_b):
  return _chi(act, sigma_w, sigma_b)


def chi(activation: ActivationLike, sigma_w, sigma_b):
  """chi = sigma_w**2 E[phi'(h)**2], h ~ N(0, q*): the mean squared singular value per layer.

  For relu (chi = sigma_w**2 / 2) and linear (sigma_w**2) phi'**2 does not depend on q, and chi is
  returned even where q* is infinite.

  References:
    Poole et al. 2016, eq. (7); Schoenholz et al. 2016, eq. (5).
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    return _finish(_chi_jit(act, _f64(sigma_w), _f64(sigma_b)))


def _q_map_slope(act, q, sigma_w):
  return jnp.square(sigma_w) * _integrals(act).second_moment_slope(q)


@functools.partial(jax.jit, static_argnums=0)
def _critical_point_jit(act, q):
  integrals = _integrals(act)
  sw2 = 1.0 / integrals.mu(q, 1)
  sb2 = q - sw2 * integrals.second_moment(q)
  # Rounding can leave -1e-17 where the exact answer is 0 (relu, linear).
  sb2 = jnp.where((sb2 < 0.0) & (sb2 > -1e-12 * q), 0.0, sb2)
  sigma_w = jnp.sqrt(sw2)
  sigma_b = jnp.where(sb2 >= 0.0, jnp.sqrt(jnp.maximum(sb2, 0.0)), jnp.nan)
  gap = 1.0 - _q_map_slope(act, q, sigma_w)
  return sigma_w, sigma_b, gap


@functools.partial(jax.jit, static_argnums=0)
def _q_star_many_jit(act, sigma_w, sigma_b):
  return jnp.vectorize(functools.partial(_q_star, act))(sigma_w, sigma_b)


def critical_point(activation: ActivationLike, q_star):
  """The (sigma_w, sigma_b) on the critical line chi = 1 whose fixed point is q_star.

  sigma_w**2 = 1 / mu_1(q*), sigma_b**2 = q* - sigma_w**2 E[phi(sqrt(q*) z)**2].
  For relu this is (sqrt(2), 0) and for linear (1, 0) whatever q* (every q is a fixed point there).
  For a bounded phi the answer is checked: `q_star(activation, sigma_w, sigma_b)` must return
  q_star to 1e-9 relative. That fails where the fixed point is not isolated in float64: the
  q-map's slope at q* is 1 - gap, and rounding of ~1e-15 q in the map moves its fixed point by
  ~1e-15 q / gap (hard_tanh below q* ~ 0.03, where the map is the identity to within
  exp(-1 / (2 q*)); tanh and erf stay isolated, gap ~ 2 q*, down to q* ~ 1e-6).

  Returns:
    (sigma_w, sigma_b), float64; under tracing nan where sigma_b**2 < 0 or where the q-map's
    slope is within 1e-6 of 1 (no isolated fixed point).

  Raises:
    ValueError: q_star <= 0; (concrete) sigma_b**2 < 0: that q* is on no critical point; or
      the fixed point at the returned scales is not q_star to 1e-9 (not isolated).

  References:
    Pennington, Schoenholz & Ganguli 2017, section 2 (the critical line parametrised by q*).
  """
  act = _resolve(activation)
  qc = _concrete(q_star)
  if qc is not None and not np.all(qc > 0):
    raise ValueError(f"q_star must be > 0, got {q_star}")
  homogeneous = _linear_q_map_slope(act) is not None
  with jax.enable_x64(True):
    sigma_w, sigma_b, gap = _critical_point_jit(act, _f64(q_star))
    if not homogeneous:
      sigma_b = jnp.where(gap >= _ISOLATED_SLOPE_GAP, sigma_b, jnp.nan)
    sigma_w, sigma_b = _finish((sigma_w, sigma_b))
  if qc is None:
    return sigma_w, sigma_b
  sbc = _concrete(sigma_b)
  gapc = np.asarray(_finish(gap))
  if homogeneous:
    return sigma_w, sigma_b
  negative = ~np.isfinite(sbc) & (gapc >= _ISOLATED_SLOPE_GAP)
  if np.any(negative):
    raise ValueError(
        f"q* = {q_star} has no critical point for {act.name}: it would need sigma_b**2 < 0")
  if np.all(np.isfinite(sbc)):
    with jax.enable_x64(True):
      solved = np.asarray(_finish(_q_star_many_jit(act, _f64(sigma_w), _f64(sigma_b))))
    off = np.abs(solved / qc - 1.0)
    if np.all(off <= _CRITICAL_Q_RTOL):
      return sigma_w, sigma_b
  else:
    solved, off = np.full(np.shape(qc), np.nan), np.full(np.shape(qc), np.inf)
  worst = int(np.argmax(np.where(np.isfinite(off), off, np.inf)))
  raise ValueError(
      f"q* = {np.ravel(qc)[worst]:.6g} is not an isolated fixed point for {act.name}: on the "
      f"critical line its q-map has slope 1 - {np.ravel(gapc)[worst]:.2g}, so float64 rounding "
      f"moves the fixed point (q_star gives {np.ravel(solved)[worst]:.6g}); choose a larger q*")


def critical_sigma_w(activation: ActivationLike, sigma_b: float) -> float:
  """The sigma_w on the critical line chi(sigma_w, sigma_b) = 1 at this bias scale.

  linear: 1, relu: sqrt(2) (chi = sigma_w**2, sigma_w**2 / 2 whatever sigma_b). At sigma_b = 0 and
  phi(0) = 0: 1 / |phi'(0)| exactly (q* = 0 and chi = sigma_w**2 phi'(0)**2 up to there; beyond,
  q* > 0 and chi - 1 > 0 grows quadratically for tanh and erf, so a sign-change search would sit
  on a double root). Otherwise the root of chi - 1 by Brent's method on a bracket grown geometrically
  from [0.5, 2] / |phi'(0)| until chi - 1 changes sign (chi increases with sigma_w for the bounded
  activations here).

  Args:
    activation: name or Activation.
    sigma_b: bias scale >= 0 (concrete).

  Returns:
    float sigma_w with |chi - 1| at the rounding of chi (~1e-15).

  Raises:
    ValueError: sigma_b < 0, or no sign change of chi - 1 for sigma_w in [1e-6, 1e6].

  References:
    Schoenholz et al., Deep information propagation, 2016 (the order-to-chaos line chi = 1).
  """
  from scipy import optimize
  act = _resolve(activation)
  sigma_b = float(sigma_b)
  if not sigma_b >= 0:
    raise ValueError(f"sigma_b must be >= 0, got {sigma_b}")
  slope = _linear_q_map_slope(act)
  if slope is not None:
    return float(np.sqrt(1.0 / slope))
  phi0, dphi0 = _origin(act)
  if sigma_b == 0.0 and phi0 == 0.0 and dphi0 != 0.0:
    return float(1.0 / abs(dphi0))
  excess = lambda sw: float(chi(act, sw, sigma_b)) - 1.0
  scale = 1.0 / abs(dphi0) if dphi0 != 0.0 else 1.0
  lo, hi = 0.5 * scale, 2.0 * scale
  while excess(lo) >= 0.0:
    lo /= 4.0
    if lo < 1e-6:
      raise ValueError(f"no critical sigma_w for {act.name} at sigma_b={sigma_b}: chi >= 1 "
                       "down to sigma_w = 1e-6")
  while excess(hi) <= 0.0:
    hi *= 4.0
    if hi > 1e6:
      raise ValueError(f"no critical sigma_w for {act.name} at sigma_b={sigma_b}: chi <= 1 "
                       "up to sigma_w = 1e6")
  return float(optimize.brentq(excess, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=400))


# ------------------------------------------------------------- correlations, depth scales

def _correlation_map(act, c, q, sigma_w, sigma_b, level=_TRACED_LEVEL):
  k, dk = _integrals(act).kernels(q, c, level)
  sw2 = jnp.square(sigma_w)
  return (sw2 * k + jnp.square(sigma_b)) / q, sw2 * dk


@functools.partial(jax.jit, static_argnums=(0, 5))
def _correlation_map_jit(act, c, q, sigma_w, sigma_b, level):
  return _correlation_map(act, c, q, sigma_w, sigma_b, level)


def correlation_map(activation: ActivationLike, c, q, sigma_w, sigma_b):
  """One step of the correlation map and its slope.

  Args:
    activation: name or Activation.
    c: correlation of the two inputs' pre-activations, in [-1, 1].
    q: their common variance (q* for the map of Schoenholz et al.), > 0.
    sigma_w, sigma_b: weight and bias scales.

  Returns:
    (c_next, chi_c): c_next = (sigma_w**2 E[phi(u1) phi(u2)] + sigma_b**2) / q and its slope
    d c_next / dc = sigma_w**2 E[phi'(u1) phi'(u2)] (Price's theorem), u1, u2 ~ N(0, q) with
    correlation c. At c = 1 and q = q*, c_next = 1 and chi_c = chi. For smooth phi without a
    closed form (tanh) both kernels are within 1e-12 of nested adaptive quadrature for q <= 64
    (concrete q picks the rule's level; under tracing the level for q <= 64 is used).

  References:
    Schoenholz et al. 2016, eqs. (4)-(5).
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  cc, qc = _concrete(c), _concrete(q)
  if cc is not None and not np.all(np.abs(cc) <= 1):
    raise ValueError(f"c must be in [-1, 1], got {c}")
  if qc is not None and not np.all(qc > 0):
    raise ValueError(f"q must be > 0, got {q}")
  level = _TRACED_LEVEL if qc is None else kernel_rule_level(qc)
  with jax.enable_x64(True):
    return _finish(_correlation_map_jit(act, _f64(c), _f64(q), _f64(sigma_w), _f64(sigma_b),
                                        level))


def _c_star(act, sigma_w, sigma_b, q, chi_1, level):
  """Stable fixed point c* of the c-map in [0, 1] and chi_c - 1 there (chi_c its slope).

  Chaotic phase (chi - 1 > CHI_TOLERANCE). In eps = 1 - c the fixed point solves
  H(eps) = sigma_w**2 (K(1) - K(1 - eps)) / (q eps) - 1 = (chi - 1) - sigma_w**2 deficit(eps) = 0
  (the c-map's fixed point c = 1 divided out; K(1) = (q* - sigma_b**2) / sigma_w**2). K is
  convex on [0, 1] (non-negative Hermite coefficients), so the secant slope
  (K(1) - K(c)) / (1 - c) grows with c: H decreases from chi - 1 > 0 at eps -> 0 to
  -(sigma_b**2 + sigma_w**2 E[phi]**2) / q <= 0 at eps = 1, and has one root. Near the critical
  line H ~ (chi - 1) - a eps is almost linear, so Newton converges quadratically where Newton on
  c_map(c) - c (a near-double root) crawls. Safeguarded Newton from the secant between eps = 0
  and eps = 1, bisecting (geometrically, at most 3 decades a step, while the bracket spans
  decades) when a step would leave the bracket; H' = -sigma_w**2 (gap - deficit) / eps. For
  smooth phi `c_map_gaps` gives deficit and gap without the cancellation of the differences
  they stand for, so H is known to ~1e-15 absolute and eps* to ~4e-15 / |H'|: 1e-9 relative
  for eps* >~ 1e-5, ~1% at eps* ~ 1e-13 (closed-form kernels: differences, ~1e-16 / eps
  relative in the deficit). chi_c - 1 = (chi - 1) - sigma_w**2 gap(eps*), in that form for the
  same reason. Typically 5-6 Newton steps.
  Ordered phase: c* = 1, chi_c = chi; within CHI_TOLERANCE of chi = 1: c* = 1, chi_c = 1.
  """
  integrals = _integrals(act)
  sw2 = jnp.square(sigma_w)
  excess = chi_1 - 1.0
  chaotic = excess > CHI_TOLERANCE
  q_safe = jnp.where(chaotic & (q > 0.0), q, 1.0)

  def evaluate(eps):
    deficit, gap = integrals.c_map_gaps(q_safe, eps, level)
    h = excess - sw2 * deficit
    return h, -sw2 * (gap - deficit) / eps, gap

  # At c = 0: H = -(sigma_b**2 + sigma_w**2 E[phi]**2) / q exactly (1-d rule). Where that is at
  # rounding level (odd phi without bias) c* = 0: the c-map is odd and c = 0 its fixed point.
  mean = _expect(act.fn, q_safe)
  h_end = -(jnp.square(sigma_b) + sw2 * jnp.square(mean)) / q_safe
  at_zero = h_end >= -1e-15
  start = jnp.where(at_zero, 1.0, excess / (excess - h_end))

  def cond(state):
    _, _, _, step, _, i = state
    return (jnp.abs(step) > 0.0) & (i < _C_MAX_ITERATIONS)

  def body(state):
    eps, lo, hi, _, _, i = state
    h, dh, gap = evaluate(eps)
    lo = jnp.where(h > 0.0, eps, lo)
    hi = jnp.where(h <= 0.0, eps, hi)
    newton = eps - h / jnp.where(dh < 0.0, dh, -1.0)
    inside = (newton > lo) & (newton < hi) & jnp.isfinite(newton)
    # Geometric bisection at most 3 decades a step: an eps* far below (near-critical) is reached
    # in a few steps, without probing eps ~ 1e-20 where differences of kernels are rounding.
    floor = jnp.maximum(lo, 1e-6 * hi)
    bisect = jnp.where(lo > 0.25 * hi, 0.5 * (lo + hi), jnp.sqrt(floor * hi))
    # Converged: a Newton step below 1e-13 eps or below H's rounding noise (~1e-15, mostly the
    # difference quotient s at |b| just above _SIMPSON_BELOW) over |H'|; then what is left is at
    # that noise (quadratic convergence), where the step may point out of a noise-sized bracket.
    # Or the bracket itself is at eps's rounding.
    tolerance = 1e-13 * eps + 4e-15 / jnp.maximum(-dh, _TINY)
    done = (h == 0.0) | (jnp.abs(newton - eps) <= tolerance) | (hi - lo <= 4e-16 * hi)
    new = jnp.where(done, jnp.where(inside, newton, eps), jnp.where(inside, newton, bisect))
    new = jnp.where(at_zero, eps, new)          # one pass for the slope chi_c at c* = 0
    done = done | at_zero
    step = jnp.where(done, 0.0, new - eps)
    return new, lo, hi, step, gap, i + 1

  live = jnp.where(chaotic, 1.0, 0.0)
  state = (start, jnp.zeros_like(excess), jnp.ones_like(excess), live, jnp.zeros_like(excess),
           jnp.asarray(0))
  eps, _, _, _, gap, _ = lax.while_loop(cond, body, state)
  c = jnp.where(chaotic, 1.0 - eps, 1.0)
  critical = jnp.abs(excess) <= CHI_TOLERANCE
  slope_excess = jnp.where(chaotic, excess - sw2 * gap, jnp.where(critical, 0.0, excess))
  return c, slope_excess


def _depth_scale_from_excess(excess):
  """-1 / log(1 + excess): the depth scale of a slope 1 + excess (inf at excess >= 0)."""
  below = excess < 0.0
  xi = jnp.where(below, -1.0 / jnp.log1p(jnp.where(below, excess, -0.5)), jnp.inf)
  return jnp.where(jnp.isnan(excess), jnp.nan, xi)


def _depth_scales(act, sigma_w, sigma_b, level=_TRACED_LEVEL):
  """(q*, chi, c*, xi_q, xi_c), all float64 scalars."""
  q = _q_star(act, sigma_w, sigma_b)
  chi_1 = _chi(act, sigma_w, sigma_b)
  if _linear_q_map_slope(act) is not None:
    # Ordered phase only (chi <= 1 wherever q* exists): c* = 1, chi_c = chi, and the q-map slope
    # is chi as well. At chi = 1, sigma_b = 0 every q is fixed and both depths are infinite.
    critical = jnp.abs(chi_1 - 1.0) <= CHI_TOLERANCE
    valid = jnp.isfinite(q) | (critical & (sigma_b == 0.0))
    excess = jnp.where(valid, jnp.where(critical, 0.0, chi_1 - 1.0), jnp.nan)
    xi = _depth_scale_from_excess(excess)
    return q, chi_1, jnp.where(valid, 1.0, jnp.nan), xi, xi
  # The q-map's slope is 1 only where q* is not isolated (q* = 0 at sigma_w**2 phi'(0)**2 = 1,
  # where the slope is chi; hard_tanh at small q*): within CHI_TOLERANCE, as for chi, it is 1.
  q_excess = _q_map_slope(act, q, sigma_w) - 1.0
  q_excess = jnp.where(jnp.abs(q_excess) <= CHI_TOLERANCE, 0.0, q_excess)
  c, chi_c_excess = _c_star(act, sigma_w, sigma_b, q, chi_1, level)
  nan = jnp.isnan(q)
  return (q, chi_1, jnp.where(nan, jnp.nan, c), _depth_scale_from_excess(q_excess),
          _depth_scale_from_excess(jnp.where(nan, jnp.nan, chi_c_excess)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _depth_scales_jit(act, sigma_w, sigma_b, level):
  return _depth_scales(act, sigma_w, sigma_b, level)


def _level_for(act, sigma_w, sigma_b):
  """The c-map rule level for these scales: from q* when concrete, else _TRACED_LEVEL."""
  if _concrete(sigma_w) is None or _concrete(sigma_b) is None:
    return _TRACED_LEVEL
  if _has_closed_forms(act):
    return 0                  # closed-form kernels: the level is not used
  with jax.enable_x64(True):
    q = np.asarray(_finish(_q_star_jit(act, _f64(sigma_w), _f64(sigma_b))))
  return kernel_rule_level(q)


def c_star(activation: ActivationLike, sigma_w, sigma_b):
  """Stable fixed point c* of the correlation map: 1 in the ordered phase, < 1 in the chaotic.

  On the critical line (|chi - 1| <= CHI_TOLERANCE) c* = 1.

  Raises:
    ValueError: for sigma_w <= 0, sigma_b < 0, or, with concrete arguments, where q* does not
      exist (relu, linear at sigma_w**2 c > 1; nan under tracing).

  References:
    Schoenholz et al. 2016, section 3.
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  level = _level_for(act, sigma_w, sigma_b)
  with jax.enable_x64(True):
    c = _finish(_depth_scales_jit(act, _f64(sigma_w), _f64(sigma_b), level)[2])
  concrete = _concrete(c)
  if concrete is not None and np.any(np.isnan(concrete)):
    raise ValueError(f"no finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
                     f"sigma_b={sigma_b}: c* is undefined")
  return c


def depth_scales(activation: ActivationLike, sigma_w, sigma_b):
  """Depth scales over which the variance and the correlation relax to their fixed points.

  xi_q = -1 / log(sigma_w**2 E[phi'(h)**2 + phi(h) phi''(h)]) (the q-map's slope at q*; phi'' by
  jax.grad of phi' for smooth phi, and with its delta masses in closed form for hard_tanh);
  xi_c = -1 / log(chi_c), chi_c = sigma_w**2 E[phi'(u1) phi'(u2)] at the stable correlation fixed
  point c* (c* = 1 and chi_c = chi in the ordered phase; found by Newton on the 2-d Gaussian
  integral in the chaotic one, see `_c_star`). xi_c diverges on the critical line chi = 1, and is
  inf wherever |chi - 1| <= CHI_TOLERANCE (exactly critical inputs such as tanh at sigma_w = 1,
  sigma_b = 0, where q* = 0 and chi = 1 exactly; there xi_q is inf too).

  Returns:
    (xi_q, xi_c), float64 (inf at a slope of exactly 1, nan where q* does not exist).

  References:
    Schoenholz et al., Deep information propagation, 2016, eqs. (5)-(9).
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  level = _level_for(act, sigma_w, sigma_b)
  with jax.enable_x64(True):
    _, _, _, xi_q, xi_c = _finish(_depth_scales_jit(act, _f64(sigma_w), _f64(sigma_b), level))
  xc = _concrete(xi_q)
  if xc is not None and not np.all(~np.isnan(xc)):
    raise ValueError(f"no finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
                     f"sigma_b={sigma_b}: depth scales are undefined")
  return xi_q, xi_c


# ----------------------------------------------------------------------- phase diagram

class PhaseDiagram(NamedTuple):
  """Mean-field quantities on a grid; every field is (len(sigma_w2), len(sigma_b2))."""
  q_star: jax.Array
  chi: jax.Array
  c_star: jax.Array
  xi_q: jax.Array
  xi_c: jax.Array


_GRID_BATCH = 16   # grid points per vectorized step of the phase diagram (see _grid)


def _grid(fn, sigma_w2, sigma_b2):
  """fn at every (sigma_w2[i], sigma_b2[j]), as arrays (n_w, n_b).

  lax.map over the flattened grid in vectorized batches of _GRID_BATCH points, not two nested
  vmaps: each point's c* solve works on (n_x, n_y) node arrays, and vmapped over a 121 x 121 grid
  those are ~1 GB intermediates, memory-bound (measured 24 s against 1.1 s in batches of 16 on
  2 cores); batches also stop each while_loop at its own batch's iteration count.
  """
  n_w, n_b = sigma_w2.shape[0], sigma_b2.shape[0]
  n = n_w * n_b
  # Padded (with copies of the last point) to whole batches: lax.map would otherwise compile the
  # function a second time for the remainder.
  pad = -n % _GRID_BATCH
  w2 = jnp.pad(jnp.repeat(sigma_w2, n_b), (0, pad), mode="edge")
  b2 = jnp.pad(jnp.tile(sigma_b2, n_w), (0, pad), mode="edge")
  out = lax.map(lambda wb: fn(*wb), (w2, b2), batch_size=_GRID_BATCH)
  return jax.tree.map(lambda v: v[:n].reshape((n_w, n_b) + v.shape[1:]), out)


@functools.partial(jax.jit, static_argnums=0)
def _q_star_grid_jit(act, sigma_w2, sigma_b2):
  return _grid(lambda w2, b2: _q_star(act, jnp.sqrt(w2), jnp.sqrt(b2)), sigma_w2, sigma_b2)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _phase_diagram_jit(act, sigma_w2, sigma_b2, level):
  def point(sw2, sb2):
    q, chi_1, c, xi_q, xi_c = _depth_scales(act, jnp.sqrt(sw2), jnp.sqrt(sb2), level)
    return PhaseDiagram(q, chi_1, c, xi_q, xi_c)
  return _grid(point, sigma_w2, sigma_b2)


def phase_diagram(activation: ActivationLike, sigma_w2, sigma_b2) -> PhaseDiagram:
  """q*, chi, c*, xi_q, xi_c over the grid sigma_w2 x sigma_b2 (jitted, batched over points).

  Args:
    activation: name or Activation.
    sigma_w2: (n_w,) weight variances sigma_w**2 > 0.
    sigma_b2: (n_b,) bias variances sigma_b**2 >= 0.

  Returns:
    PhaseDiagram of (n_w, n_b) float64 arrays, entry [i, j] at (sigma_w2[i], sigma_b2[j]). Where
    q* is infinite (relu, linear beyond chi = 1) q*, c* and the depth scales are inf/nan while
    chi is still sigma_w**2 / 2 (relu) or sigma_w**2 (linear). xi_c is inf on the critical line
    (|chi - 1| <= CHI_TOLERANCE), e.g. at sigma_w2 = 1, sigma_b2 = 0 for tanh.

  The c-map rule's level (smooth phi) is set by the largest q* on the grid (one jitted pass for
  q*, then the full diagram); under tracing the level for q* <= 64 is used.

  References:
    Poole et al. 2016, Fig. 2; Schoenholz et al. 2016, Fig. 1; Pennington et al. 2017, Fig. 1.
  """
  act = _resolve(activation)
  sw2, sb2 = _concrete(sigma_w2), _concrete(sigma_b2)
  for name, grid in (("sigma_w2", sw2), ("sigma_b2", sb2)):
    if grid is not None and grid.ndim != 1:
      raise ValueError(f"{name} must be 1-d, got shape {grid.shape}")
  if sw2 is not None and not np.all(sw2 > 0):
    raise ValueError("sigma_w2 must be > 0 everywhere")
  if sb2 is not None and not np.all(sb2 >= 0):
    raise ValueError("sigma_b2 must be >= 0 everywhere")
  level = _TRACED_LEVEL
  if _has_closed_forms(act):
    level = 0
  elif sw2 is not None and sb2 is not None:
    with jax.enable_x64(True):
      level = kernel_rule_level(np.asarray(_q_star_grid_jit(act, _f64(sw2), _f64(sb2))))
  with jax.enable_x64(True):
    return _finish(_phase_diagram_jit(act, _f64(sigma_w2), _f64(sigma_b2), level))


# ----------------------------------------------------------------------------- inputs

def sample_inputs_at_q(key, activation: ActivationLike, q, width: int, num: int,
                       dtype=jnp.float64):
  """Inputs x_0 = phi(h_0), h_0 ~ N(0, q) i.i.d.: the post-activations of a layer at variance q.

  Feeding x_0 to a layer with scales (sigma_w, sigma_b) gives pre-activations of variance
  sigma_w**2 E[phi(h_0)**2] + sigma_b**2 = q_map(q), which is q itself when q = q*: the network
  starts at its fixed point, as if it had been running for many layers already.

  Args:
    key: PRNG key.
    activation: name or Activation.
    q: pre-activation variance (>= 0).
    width, num: vector length and number of vectors.
    dtype: float64 (sampled inside enable_x64) or float32 (usable inside a float32 jit).

  Returns:
    (num, width) array of `dtype`.
  """
  act = _resolve(activation)
  _check_q(q)
  with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
    h0 = jnp.sqrt(jnp.asarray(q, dtype)) * jax.random.normal(key, (num, width), dtype=dtype)
    return act.fn(h0)
