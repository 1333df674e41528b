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
The c-map of a smooth phi uses the same rule in 2-d (81 x 81 points on [-8.5, 8.5]^2; within
1e-12 of erf's closed form for q <= 6). Activations with kinks (relu, hard_tanh) and erf use
closed forms (normal CDFs, the arc-cosine kernel, Williams' arcsin kernel), exact where a
quadrature over a kink converges only algebraically; hard_tanh's c-map conditions on one of the
two Gaussians and integrates the other by piecewise Gauss-Legendre (see _hard_tanh_kernels).
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
NUM_POINTS_2D = 81      # per axis for the 2-d (c-map) quadrature of smooth phi
HALF_WIDTH_2D = 8.5     # mass beyond 8.5 is 2e-17 per axis
_LEGENDRE_POINTS = 48   # Gauss-Legendre nodes per piece for hard_tanh's c-map (4 pieces)

_Q_MAX_ITERATIONS = 200
_C_MAX_ITERATIONS = 100
_RTOL = 1e-13
_ATOL = 1e-15
_TINY = 1e-300          # keeps 1 / sqrt(q) finite at q = 0, where the limits are exact anyway


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
#   kernels(q, c) = (E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]), u1, u2 ~ N(0, q), corr. c.

class _Integrals(NamedTuple):
  second_moment: callable
  second_moment_slope: callable
  mu: callable
  kernels: callable


def _normal_pdf(x):
  return jnp.exp(-0.5 * jnp.square(x)) / jnp.sqrt(2.0 * jnp.pi)


def _linear_kernels(q, c):
  return q * c, jnp.ones_like(c)


def _relu_kernels(q, c):
  # Arc-cosine kernel of degree 1 and 0 (Cho & Saul 2009).
  theta = jnp.arccos(jnp.clip(c, -1.0, 1.0))
  s = jnp.sqrt(jnp.clip(1.0 - jnp.square(c), 0.0, 1.0))
  return q / (2.0 * jnp.pi) * (s + (jnp.pi - theta) * c), (jnp.pi - theta) / (2.0 * jnp.pi)


def _erf_kernels(q, c):
  # E[erf(u1) erf(u2)] = (2/pi) arcsin(2 q c / (1 + 2 q)) (Williams 1997); the second is the
  # Gaussian integral E[exp(-u1^2 - u2^2)] = det(I + 2 Sigma)^(-1/2) times (2 / sqrt(pi))^2.
  k = 2.0 / jnp.pi * jnp.arcsin(2.0 * q * c / (1.0 + 2.0 * q))
  dk = 4.0 / jnp.pi / jnp.sqrt(jnp.square(1.0 + 2.0 * q) - jnp.square(2.0 * q * c))
  return k, dk


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


def _hard_tanh_kernels(q, c):
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

  def rule(lo, hi):
    z = lo + 0.5 * (hi - lo) * (x + 1.0)
    return z, 0.5 * (hi - lo) * w * _normal_pdf(z)

  kink = jnp.minimum(a, HALF_WIDTH)       # beyond |z| = 10 the Gaussian weight is negligible
  inner = jnp.minimum(8.0 * s, 0.5 * kink)
  outer = jnp.minimum(8.0 * s, HALF_WIDTH)
  k, dk = 0.0, 0.0
  for lo, hi in ((0.0, kink - inner), (kink - inner, kink)):      # |u1| < 1: phi = u1, phi' = 1
    z, wz = rule(lo, hi)
    g, p_in = conditionals(z)
    k += jnp.sum(wz * jnp.sqrt(q) * z * g)
    dk += jnp.sum(wz * p_in)
  for lo, hi in ((kink, kink + outer), (kink + outer, kink + HALF_WIDTH)):  # phi = 1, phi' = 0
    z, wz = rule(lo, hi)
    k += jnp.sum(wz * conditionals(z)[0])
  return 2.0 * k, 2.0 * dk


_CLOSED_FORMS = {
    "linear": _Integrals(
        second_moment=lambda q: q,
        second_moment_slope=jnp.ones_like,
        mu=lambda q, k: jnp.ones_like(q),
        kernels=_linear_kernels),
    "relu": _Integrals(
        second_moment=lambda q: 0.5 * q,
        second_moment_slope=lambda q: jnp.full_like(q, 0.5),
        mu=lambda q, k: jnp.full_like(q, 0.5),
        kernels=_relu_kernels),
    "erf": _Integrals(
        second_moment=lambda q: 2.0 / jnp.pi * jnp.arcsin(2.0 * q / (1.0 + 2.0 * q)),
        second_moment_slope=lambda q: 4.0 / (jnp.pi * (1.0 + 2.0 * q) * jnp.sqrt(1.0 + 4.0 * q)),
        mu=lambda q, k: (4.0 / jnp.pi)**k / jnp.sqrt(1.0 + 4.0 * k * q),
        kernels=_erf_kernels),
    "hard_tanh": _Integrals(
        second_moment=_hard_tanh_second_moment,
        second_moment_slope=_hard_tanh_second_moment_slope,
        # phi'(h)^2 is the indicator of |h| < 1, so every moment is P(|h| < 1).
        mu=lambda q, k: erf(1.0 / jnp.sqrt(2.0 * jnp.maximum(q, _TINY))),
        kernels=_hard_tanh_kernels),
}


def _quadrature_integrals(act: Activation) -> _Integrals:
  """Gaussian integrals of a smooth phi by quadrature; phi'' from jax.grad of phi'."""
  second_derivative = jax.vmap(jax.grad(act.derivative))

  def slope(q):
    def integrand(h):
      return jnp.square(act.derivative(h)) + act.fn(h) * second_derivative(h)
    return _expect(integrand, q)

  def kernels(q, c):
    z, w = _trapezoid_rule(NUM_POINTS_2D, HALF_WIDTH_2D)
    z, w = _f64(z), _f64(w)
    c = jnp.clip(c, -1.0, 1.0)
    s = jnp.sqrt(1.0 - jnp.square(c))
    u1 = jnp.sqrt(q) * z[:, None]
    u2 = jnp.sqrt(q) * (c * z[:, None] + s * z[None, :])
    w2 = w[:, None] * w[None, :]
    k = jnp.sum(w2 * act.fn(u1) * act.fn(u2))
    dk = jnp.sum(w2 * act.derivative(u1) * act.derivative(u2))
    return k, dk

  return _Integrals(
      second_moment=lambda q: _expect(lambda h: jnp.square(act.fn(h)), q),
      second_moment_slope=slope,
      mu=lambda q, k: _expect(lambda h: act.derivative(h)**(2 * k), q),
      kernels=kernels)


def _integrals(act: Activation) -> _Integrals:
  if act.name in _CLOSED_FORMS and ACTIVATIONS.get(act.name) == act:
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


def _q_star(act, sigma_w, sigma_b):
  """q* (float64, traced); inf where q diverges, nan where every q is a fixed point."""
  sw2, sb2 = jnp.square(sigma_w), jnp.square(sigma_b)
  slope = _linear_q_map_slope(act)
  if slope is not None:
    gain = sw2 * slope
    return jnp.where(gain < 1.0, sb2 / jnp.where(gain < 1.0, 1.0 - gain, 1.0),
                     jnp.where(sb2 > 0.0, jnp.inf, jnp.nan))
  return _q_star_fixed_point(act, sigma_w, sigma_b)


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


def critical_point(activation: ActivationLike, q_star):
  """The (sigma_w, sigma_b) on the critical line chi = 1 whose fixed point is q_star.

  sigma_w**2 = 1 / mu_1(q*), sigma_b**2 = q* - sigma_w**2 E[phi(sqrt(q*) z)**2].
  For relu this is (sqrt(2), 0) and for linear (1, 0) whatever q* (every q is a fixed point there).

  Returns:
    (sigma_w, sigma_b), float64; under tracing nan where sigma_b**2 < 0.

  Raises:
    ValueError: q_star <= 0, or (concrete) sigma_b**2 < 0: that q* is on no critical point.

  References:
    Pennington, Schoenholz & Ganguli 2017, section 2 (the critical line parametrised by q*).
  """
  act = _resolve(activation)
  qc = _concrete(q_star)
  if qc is not None and not np.all(qc > 0):
    raise ValueError(f"q_star must be > 0, got {q_star}")
  with jax.enable_x64(True):
    q = _f64(q_star)
    integrals = _integrals(act)
    sw2 = 1.0 / integrals.mu(q, 1)
    sb2 = q - sw2 * integrals.second_moment(q)
    # Rounding can leave -1e-17 where the exact answer is 0 (relu, linear).
    sb2 = jnp.where((sb2 < 0.0) & (sb2 > -1e-12 * q), 0.0, sb2)
    sigma_b = jnp.where(sb2 >= 0.0, jnp.sqrt(jnp.maximum(sb2, 0.0)), jnp.nan)
    sigma_w, sigma_b = _finish((jnp.sqrt(sw2), sigma_b))
  sbc = _concrete(sigma_b)
  if sbc is not None and not np.all(np.isfinite(sbc)):
    raise ValueError(
        f"q* = {q_star} has no critical point for {act.name}: it would need sigma_b**2 < 0")
  return sigma_w, sigma_b


# ------------------------------------------------------------- correlations, depth scales

def _correlation_map(act, c, q, sigma_w, sigma_b):
  k, dk = _integrals(act).kernels(q, c)
  sw2 = jnp.square(sigma_w)
  return (sw2 * k + jnp.square(sigma_b)) / q, sw2 * dk


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
    correlation c. At c = 1 and q = q*, c_next = 1 and chi_c = chi.

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
  with jax.enable_x64(True):
    return _finish(_correlation_map(act, _f64(c), _f64(q), _f64(sigma_w), _f64(sigma_b)))


def _c_star(act, sigma_w, sigma_b, q):
  """Stable fixed point c* of the c-map in [0, 1] and the slope chi_c there."""
  chi_1 = jnp.square(sigma_w) * _integrals(act).mu(q, 1)

  # g(c) = c_map(c) - c is convex on [0, 1] (its slope sigma_w^2 E[phi'(u1) phi'(u2)] =
  # sum_n b_n^2 c^n in Hermite coefficients is increasing), g(1) = 0, g'(1) = chi - 1 and
  # g(0) >= 0. So for chi > 1 there is one root in [0, 1), and Newton from c = 0 climbs to it
  # monotonically. For chi <= 1 the root is c = 1. Iteration stops when the step is below 1e-12
  # or g is at its rounding level (near chi = 1, where the root is almost double, Newton is
  # linear and would otherwise jitter on rounding noise).
  def cond(state):
    _, step, g, i = state
    return (jnp.abs(step) > 1e-12) & (jnp.abs(g) > 4e-16) & (i < _C_MAX_ITERATIONS)

  def body(state):
    c, _, _, i = state
    c_next, chi_c = _correlation_map(act, c, q, sigma_w, sigma_b)
    g, dg = c_next - c, chi_c - 1.0
    new = jnp.where(dg < 0.0, c - g / jnp.where(dg < 0.0, dg, -1.0), c_next)
    new = jnp.clip(new, 0.0, 1.0)
    return new, new - c, g, i + 1

  chaotic = chi_1 > 1.0
  start = jnp.where(chaotic, 0.0, 1.0)
  live = jnp.where(chaotic, 1.0, 0.0)
  c, _, _, _ = lax.while_loop(cond, body, (start, live, live, jnp.asarray(0)))
  c = jnp.where(chaotic, c, 1.0)
  _, chi_c = _correlation_map(act, c, q, sigma_w, sigma_b)
  chi_c = jnp.where(chaotic, chi_c, chi_1)
  return c, chi_c


def _depth_scale(slope):
  xi = jnp.where(slope < 1.0, -1.0 / jnp.log(jnp.where(slope < 1.0, slope, 0.5)), jnp.inf)
  return jnp.where(jnp.isnan(slope), jnp.nan, xi)


def _depth_scales(act, sigma_w, sigma_b):
  """(q*, chi, c*, xi_q, xi_c), all float64 scalars."""
  sw2 = jnp.square(sigma_w)
  integrals = _integrals(act)
  q = _q_star(act, sigma_w, sigma_b)
  chi_1 = _chi(act, sigma_w, sigma_b)
  if _linear_q_map_slope(act) is not None:
    # Ordered phase only (chi <= 1 wherever q* exists): c* = 1, chi_c = chi, and the q-map slope
    # is chi as well. At chi = 1, sigma_b = 0 every q is fixed and both depths are infinite.
    valid = jnp.isfinite(q) | ((chi_1 == 1.0) & (sigma_b == 0.0))
    slope = jnp.where(valid, chi_1, jnp.nan)
    return q, chi_1, jnp.where(valid, 1.0, jnp.nan), _depth_scale(slope), _depth_scale(slope)
  q_slope = sw2 * integrals.second_moment_slope(q)
  c, chi_c = _c_star(act, sigma_w, sigma_b, q)
  return q, chi_1, c, _depth_scale(q_slope), _depth_scale(chi_c)


@functools.partial(jax.jit, static_argnums=0)
def _depth_scales_jit(act, sigma_w, sigma_b):
  return _depth_scales(act, sigma_w, sigma_b)


def c_star(activation: ActivationLike, sigma_w, sigma_b):
  """Stable fixed point c* of the correlation map: 1 in the ordered phase, < 1 in the chaotic.

  Raises:
    ValueError: for sigma_w <= 0, sigma_b < 0, or, with concrete arguments, where q* does not
      exist (relu, linear at sigma_w**2 c > 1; nan under tracing).

  References:
    Schoenholz et al. 2016, section 3.
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    c = _finish(_depth_scales_jit(act, _f64(sigma_w), _f64(sigma_b))[2])
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
  integral in the chaotic one). xi_c diverges on the critical line chi = 1.

  Returns:
    (xi_q, xi_c), float64 (inf at a slope of exactly 1, nan where q* does not exist).

  References:
    Schoenholz et al., Deep information propagation, 2016, eqs. (5)-(9).
  """
  act = _resolve(activation)
  _check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    _, _, _, xi_q, xi_c = _finish(_depth_scales_jit(act, _f64(sigma_w), _f64(sigma_b)))
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


@functools.partial(jax.jit, static_argnums=0)
def _phase_diagram_jit(act, sigma_w2, sigma_b2):
  def point(sw2, sb2):
    q, chi_1, c, xi_q, xi_c = _depth_scales(act, jnp.sqrt(sw2), jnp.sqrt(sb2))
    return PhaseDiagram(q, chi_1, c, xi_q, xi_c)
  return jax.vmap(jax.vmap(point, in_axes=(None, 0)), in_axes=(0, None))(sigma_w2, sigma_b2)


def phase_diagram(activation: ActivationLike, sigma_w2, sigma_b2) -> PhaseDiagram:
  """q*, chi, c*, xi_q, xi_c over the grid sigma_w2 x sigma_b2 (two nested vmaps, jitted).

  Args:
    activation: name or Activation.
    sigma_w2: (n_w,) weight variances sigma_w**2 > 0.
    sigma_b2: (n_b,) bias variances sigma_b**2 >= 0.

  Returns:
    PhaseDiagram of (n_w, n_b) float64 arrays, entry [i, j] at (sigma_w2[i], sigma_b2[j]). Where
    q* is infinite (relu, linear beyond chi = 1) q*, c* and the depth scales are inf/nan while
    chi is still sigma_w**2 / 2 (relu) or sigma_w**2 (linear).

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
  with jax.enable_x64(True):
    return _finish(_phase_diagram_jit(act, _f64(sigma_w2), _f64(sigma_b2)))


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
