"""How two inputs' correlation flows through a deep random network, and the phase diagram.

Mean field (Poole et al. 2016; Schoenholz et al. 2016): at the fixed point q* the correlation c_l
of two inputs' pre-activations follows the c-map

  c_{l+1} = (sigma_w**2 E[phi(u1) phi(u2)] + sigma_b**2) / q*,  u1, u2 ~ N(0, q*), corr. c_l,

whose slope at c = 1 is chi. In the ordered phase (chi < 1) c* = 1; in the chaotic one (chi > 1)
a stable c* < 1 appears. The depth scales xi_q = -1 / log(q-map slope) and xi_c = -1 / log(chi_c)
say over how many layers the variance and the correlation relax; xi_c diverges on the critical
line, which is what `phase_diagram` maps over (sigma_w**2, sigma_b**2). Conventions (float64,
tracing, errors) as in `isometry.theory.meanfield`; |chi - 1| <= meanfield.CHI_TOLERANCE is the
critical line (c* = 1, xi_c = inf).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isometry.theory import activations
from isometry.theory import gaussian
from isometry.theory import meanfield
from isometry.theory import x64
from isometry.theory.meanfield import ActivationLike


_C_MAX_ITERATIONS = 60


def _correlation_map(act, c, q, sigma_w, sigma_b, level=gaussian.TRACED_LEVEL):
  k, dk = gaussian.integrals(act).kernels(q, c, level)
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
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  cc, qc = x64.concrete(c), x64.concrete(q)
  if cc is not None and not np.all(np.abs(cc) <= 1):
    raise ValueError(f"c must be in [-1, 1], got {c}")
  if qc is not None and not np.all(qc > 0):
    raise ValueError(f"q must be > 0, got {q}")
  level = gaussian.TRACED_LEVEL if qc is None else gaussian.kernel_rule_level(qc)
  with jax.enable_x64(True):
    return x64.finish(
        _correlation_map_jit(act, x64.f64(c), x64.f64(q), x64.f64(sigma_w), x64.f64(sigma_b),
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
  integrals = gaussian.integrals(act)
  sw2 = jnp.square(sigma_w)
  excess = chi_1 - 1.0
  chaotic = excess > meanfield.CHI_TOLERANCE
  q_safe = jnp.where(chaotic & (q > 0.0), q, 1.0)

  def evaluate(eps):
    deficit, gap = integrals.c_map_gaps(q_safe, eps, level)
    h = excess - sw2 * deficit
    return h, -sw2 * (gap - deficit) / eps, gap

  # At c = 0: H = -(sigma_b**2 + sigma_w**2 E[phi]**2) / q exactly (1-d rule). Where that is at
  # rounding level (odd phi without bias) c* = 0: the c-map is odd and c = 0 its fixed point.
  mean = gaussian.expect(act.fn, q_safe)
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
    tolerance = 1e-13 * eps + 4e-15 / jnp.maximum(-dh, gaussian.TINY)
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
  critical = jnp.abs(excess) <= meanfield.CHI_TOLERANCE
  slope_excess = jnp.where(chaotic, excess - sw2 * gap, jnp.where(critical, 0.0, excess))
  return c, slope_excess


def _depth_scale_from_excess(excess):
  """-1 / log(1 + excess): the depth scale of a slope 1 + excess (inf at excess >= 0)."""
  below = excess < 0.0
  xi = jnp.where(below, -1.0 / jnp.log1p(jnp.where(below, excess, -0.5)), jnp.inf)
  return jnp.where(jnp.isnan(excess), jnp.nan, xi)


def _depth_scales(act, sigma_w, sigma_b, level=gaussian.TRACED_LEVEL):
  """(q*, chi, c*, xi_q, xi_c), all float64 scalars."""
  q = meanfield.q_star_of(act, sigma_w, sigma_b)
  chi_1 = meanfield.chi_of(act, sigma_w, sigma_b)
  if gaussian.linear_q_map_slope(act) is not None:
    # Ordered phase only (chi <= 1 wherever q* exists): c* = 1, chi_c = chi, and the q-map slope
    # is chi as well. At chi = 1, sigma_b = 0 every q is fixed and both depths are infinite.
    critical = jnp.abs(chi_1 - 1.0) <= meanfield.CHI_TOLERANCE
    valid = jnp.isfinite(q) | (critical & (sigma_b == 0.0))
    excess = jnp.where(valid, jnp.where(critical, 0.0, chi_1 - 1.0), jnp.nan)
    xi = _depth_scale_from_excess(excess)
    return q, chi_1, jnp.where(valid, 1.0, jnp.nan), xi, xi
  # The q-map's slope is 1 only where q* is not isolated (q* = 0 at sigma_w**2 phi'(0)**2 = 1,
  # where the slope is chi; hard_tanh at small q*): within CHI_TOLERANCE, as for chi, it is 1.
  q_excess = meanfield.q_map_slope_of(act, q, sigma_w) - 1.0
  q_excess = jnp.where(jnp.abs(q_excess) <= meanfield.CHI_TOLERANCE, 0.0, q_excess)
  c, chi_c_excess = _c_star(act, sigma_w, sigma_b, q, chi_1, level)
  nan = jnp.isnan(q)
  return (q, chi_1, jnp.where(nan, jnp.nan, c), _depth_scale_from_excess(q_excess),
          _depth_scale_from_excess(jnp.where(nan, jnp.nan, chi_c_excess)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _depth_scales_jit(act, sigma_w, sigma_b, level):
  return _depth_scales(act, sigma_w, sigma_b, level)


_q_star_jit = jax.jit(meanfield.q_star_of, static_argnums=0)


def _level_for(act, sigma_w, sigma_b):
  """The c-map rule level for these scales: from q* when concrete, else _TRACED_LEVEL."""
  if x64.concrete(sigma_w) is None or x64.concrete(sigma_b) is None:
    return gaussian.TRACED_LEVEL
  if gaussian.has_closed_forms(act):
    return 0                  # closed-form kernels: the level is not used
  with jax.enable_x64(True):
    q = np.asarray(x64.finish(_q_star_jit(act, x64.f64(sigma_w), x64.f64(sigma_b))))
  return gaussian.kernel_rule_level(q)


def c_star(activation: ActivationLike, sigma_w, sigma_b):
  """Stable fixed point c* of the correlation map: 1 in the ordered phase, < 1 in the chaotic.

  On the critical line (|chi - 1| <= CHI_TOLERANCE) c* = 1.

  Raises:
    ValueError: for sigma_w <= 0, sigma_b < 0, or, with concrete arguments, where q* does not
      exist (relu, linear at sigma_w**2 c > 1; nan under tracing).

  References:
    Schoenholz et al. 2016, section 3.
  """
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  level = _level_for(act, sigma_w, sigma_b)
  with jax.enable_x64(True):
    c = x64.finish(_depth_scales_jit(act, x64.f64(sigma_w), x64.f64(sigma_b), level)[2])
  concrete = x64.concrete(c)
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
  act = activations.resolve(activation)
  x64.check_scales(sigma_w, sigma_b)
  level = _level_for(act, sigma_w, sigma_b)
  with jax.enable_x64(True):
    _, _, _, xi_q, xi_c = x64.finish(
        _depth_scales_jit(act, x64.f64(sigma_w), x64.f64(sigma_b), level))
  xc = x64.concrete(xi_q)
  if xc is not None and not np.all(~np.isnan(xc)):
    raise ValueError(f"no finite fixed point q* for {act.name} at sigma_w={sigma_w}, "
                     f"sigma_b={sigma_b}: depth scales are undefined")
  return xi_q, xi_c


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
  return _grid(lambda w2, b2: meanfield.q_star_of(act, jnp.sqrt(w2), jnp.sqrt(b2)), sigma_w2,
               sigma_b2)


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
  act = activations.resolve(activation)
  sw2, sb2 = x64.concrete(sigma_w2), x64.concrete(sigma_b2)
  for name, grid in (("sigma_w2", sw2), ("sigma_b2", sb2)):
    if grid is not None and grid.ndim != 1:
      raise ValueError(f"{name} must be 1-d, got shape {grid.shape}")
  if sw2 is not None and not np.all(sw2 > 0):
    raise ValueError("sigma_w2 must be > 0 everywhere")
  if sb2 is not None and not np.all(sb2 >= 0):
    raise ValueError("sigma_b2 must be >= 0 everywhere")
  level = gaussian.TRACED_LEVEL
  if gaussian.has_closed_forms(act):
    level = 0
  elif sw2 is not None and sb2 is not None:
    with jax.enable_x64(True):
      level = gaussian.kernel_rule_level(
          np.asarray(_q_star_grid_jit(act, x64.f64(sw2), x64.f64(sb2))))
  with jax.enable_x64(True):
    return x64.finish(_phase_diagram_jit(act, x64.f64(sigma_w2), x64.f64(sigma_b2), level))
