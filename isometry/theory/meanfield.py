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

Numerics: the Gaussian integrals come from `isometry.theory.gaussian` (closed forms, or
quadrature accurate to ~1e-12 for q up to 64).

Exactly critical inputs. chi is evaluated to ~1e-15 (module constant CHI_TOLERANCE says how this is
bounded); where |chi - 1| <= CHI_TOLERANCE the point is on the critical line as far as float64 can
tell, and c* = 1, xi_c = inf. At sigma_b = 0 an odd-like phi (phi(0) = 0) has q* = 0 exactly while
sigma_w**2 phi'(0)**2 <= 1, and there chi = sigma_w**2 phi'(0)**2 in closed form.
"""
import functools
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isometry.theory import gaussian
from isometry.theory import x64
from isometry.theory import activations
from isometry.theory.activations import Activation


ActivationLike = Union[str, Activation]


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


_RTOL = 1e-13


_ATOL = 1e-15


# critical_point: the q* asked for must come back from q_star to this relative accuracy.
_CRITICAL_Q_RTOL = 1e-9


# Under tracing critical_point cannot re-solve q*; it returns nan where 1 - (q-map slope) is below
# this: rounding of ~1e-15 q in the q-map then moves q* by more than 1e-9 relative.
_ISOLATED_SLOPE_GAP = 1e-6


def q_map_of(act, q, sigma_w, sigma_b):
  return jnp.square(sigma_w) * gaussian.integrals(act).second_moment(q) + jnp.square(sigma_b)


def q_map(activation: ActivationLike, q, sigma_w, sigma_b):
  """One step of the variance map: sigma_w**2 E[phi(sqrt(q) z)**2] + sigma_b**2.

  References:
    Poole et al., Exponential expressivity in deep neural networks through transient chaos,
    2016, eq. (3).
  """
  act = activations.resolve(activation)
  x64.check_q(q)
  x64.check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    return x64.finish(q_map_of(act, x64.f64(q), x64.f64(sigma_w), x64.f64(sigma_b)))


@functools.lru_cache(maxsize=None)
def _origin(act: Activation):
  """(phi(0), phi'(0)) as Python floats."""
  with jax.ensure_compile_time_eval(), jax.enable_x64(True):
    zero = jnp.zeros((), jnp.float64)
    return float(act.fn(zero)), float(act.derivative(zero))


def q_star_of(act, sigma_w, sigma_b):
  """q* (float64, traced); inf where q diverges, nan where every q is a fixed point.

  A linear q-map's gain within CHI_TOLERANCE of 1 counts as exactly 1 (it is chi). For phi(0) = 0
  and sigma_b = 0, q = 0 is a fixed point, the stable one while sigma_w**2 phi'(0)**2 <= 1 (a
  concave q-map lies below its tangent sigma_w**2 phi'(0)**2 q at 0): q* = 0 exactly there,
  where Newton would crawl towards the double root at sigma_w**2 phi'(0)**2 = 1.
  """
  sw2, sb2 = jnp.square(sigma_w), jnp.square(sigma_b)
  slope = gaussian.linear_q_map_slope(act)
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
  integrals = gaussian.integrals(act)

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
  integrals = gaussian.integrals(act)
  slope = jnp.square(sigma_w) * integrals.second_moment_slope(q)
  dq = (2.0 * sigma_w * integrals.second_moment(q) * d_sigma_w
        + 2.0 * sigma_b * d_sigma_b) / (1.0 - slope)
  return q, dq


@functools.partial(jax.jit, static_argnums=0)
def _q_star_jit(act, sigma_w, sigma_b):
  return q_star_of(act, sigma_w, sigma_b)


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
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    result = _q_star_jit(act, x64.f64(sigma_w), x64.f64(sigma_b))
  result = x64.finish(result)
  concrete = x64.concrete(result)
  if concrete is not None and not np.all(np.isfinite(concrete)):
    raise ValueError(
        f"no unique finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
        f"sigma_b={sigma_b} (q* = {concrete}: inf means q grows without bound, nan that every "
        "q is a fixed point or that the solver did not converge)")
  return result


def input_variance_of(act: Activation, sigma_w, sigma_b):
  """Traced `input_variance` (broadcast over array scales): inf or nan where none exists."""
  q = jnp.vectorize(functools.partial(q_star_of, act))(sigma_w, sigma_b)
  if act.homogeneous:
    q = jnp.where(sigma_b == 0.0, 1.0, q)
  return q


def input_variance(activation: ActivationLike, sigma_w, sigma_b):
  """The variance of the input pre-activations at which a network starts: its fixed point q*.

  For a positively homogeneous phi without bias (relu, linear at sigma_b = 0) q* is 0 (relu,
  whose phi'(0) = 0 would kill the Jacobian), infinite or any q, while the Jacobian does not
  depend on the input's scale: there it is 1.

  Raises:
    ValueError: (concrete arguments) no finite fixed point.
  """
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    q = x64.finish(input_variance_of(act, x64.f64(sigma_w), x64.f64(sigma_b)))
  concrete = x64.concrete(q)
  if concrete is not None and not np.all(np.isfinite(concrete)):
    raise ValueError(f"no finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
                     f"sigma_b={sigma_b}: pass the input variance explicitly")
  return q


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
  act = activations.resolve(activation)
  if k not in (1, 2):
    raise ValueError(f"k must be 1 or 2, got {k}")
  x64.check_q(q)
  with jax.enable_x64(True):
    return x64.finish(gaussian.integrals(act).mu(x64.f64(q), k))


def chi_of(act, sigma_w, sigma_b):
  integrals = gaussian.integrals(act)
  if gaussian.linear_q_map_slope(act) is not None:
    # phi'^2 does not depend on q: chi is defined even where q* is not.
    return jnp.square(sigma_w) * integrals.mu(jnp.ones_like(sigma_w), 1)
  return jnp.square(sigma_w) * integrals.mu(q_star_of(act, sigma_w, sigma_b), 1)


@functools.partial(jax.jit, static_argnums=0)
def _chi_jit(act, sigma_w, sigma_b):
  return chi_of(act, sigma_w, sigma_b)


def chi(activation: ActivationLike, sigma_w, sigma_b):
  """chi = sigma_w**2 E[phi'(h)**2], h ~ N(0, q*): the mean squared singular value per layer.

  For relu (chi = sigma_w**2 / 2) and linear (sigma_w**2) phi'**2 does not depend on q, and chi is
  returned even where q* is infinite.

  References:
    Poole et al. 2016, eq. (7); Schoenholz et al. 2016, eq. (5).
  """
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    return x64.finish(_chi_jit(act, x64.f64(sigma_w), x64.f64(sigma_b)))


def q_map_slope_of(act, q, sigma_w):
  return jnp.square(sigma_w) * gaussian.integrals(act).second_moment_slope(q)


@functools.partial(jax.jit, static_argnums=0)
def _critical_point_jit(act, q):
  integrals = gaussian.integrals(act)
  sw2 = 1.0 / integrals.mu(q, 1)
  sb2 = q - sw2 * integrals.second_moment(q)
  # Rounding can leave -1e-17 where the exact answer is 0 (relu, linear).
  sb2 = jnp.where((sb2 < 0.0) & (sb2 > -1e-12 * q), 0.0, sb2)
  sigma_w = jnp.sqrt(sw2)
  sigma_b = jnp.where(sb2 >= 0.0, jnp.sqrt(jnp.maximum(sb2, 0.0)), jnp.nan)
  gap = 1.0 - q_map_slope_of(act, q, sigma_w)
  return sigma_w, sigma_b, gap


@functools.partial(jax.jit, static_argnums=0)
def _q_star_many_jit(act, sigma_w, sigma_b):
  return jnp.vectorize(functools.partial(q_star_of, act))(sigma_w, sigma_b)


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
  act = activations.resolve(activation)
  qc = x64.concrete(q_star)
  if qc is not None and not np.all(qc > 0):
    raise ValueError(f"q_star must be > 0, got {q_star}")
  homogeneous = gaussian.linear_q_map_slope(act) is not None
  with jax.enable_x64(True):
    sigma_w, sigma_b, gap = _critical_point_jit(act, x64.f64(q_star))
    if not homogeneous:
      sigma_b = jnp.where(gap >= _ISOLATED_SLOPE_GAP, sigma_b, jnp.nan)
    sigma_w, sigma_b = x64.finish((sigma_w, sigma_b))
  if qc is None:
    return sigma_w, sigma_b
  sbc = x64.concrete(sigma_b)
  gapc = np.asarray(x64.finish(gap))
  if homogeneous:
    return sigma_w, sigma_b
  negative = ~np.isfinite(sbc) & (gapc >= _ISOLATED_SLOPE_GAP)
  if np.any(negative):
    raise ValueError(
        f"q* = {q_star} has no critical point for {act.name}: it would need sigma_b**2 < 0")
  if np.all(np.isfinite(sbc)):
    with jax.enable_x64(True):
      solved = np.asarray(x64.finish(_q_star_many_jit(act, x64.f64(sigma_w), x64.f64(sigma_b))))
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
  on a double root). Otherwise the root of chi - 1 by Brent's method on a bracket grown
  geometrically from [0.5, 2] / |phi'(0)| until chi - 1 changes sign (chi increases with sigma_w
  for the bounded activations here).

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
  act = activations.resolve(activation)
  sigma_b = float(sigma_b)
  if not sigma_b >= 0:
    raise ValueError(f"sigma_b must be >= 0, got {sigma_b}")
  slope = gaussian.linear_q_map_slope(act)
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
  act = activations.resolve(activation)
  x64.check_q(q)
  with jax.enable_x64(jnp.dtype(dtype) == jnp.float64):
    h0 = jnp.sqrt(jnp.asarray(q, dtype)) * jax.random.normal(key, (num, width), dtype=dtype)
    return act.fn(h0)
