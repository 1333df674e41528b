"""The S-transform equation of the Jacobian spectrum, solved down a grid by continuation.

For z = lambda (1 + i delta), m = M_{JJ^T}(z) solves F(m) = M_{D^2}(x(m, z)) - m = 0 with x from the
S-transform product; `solve` follows the physical root from far above the grid's top down a
vertical line, then marches down the grid with step control, and `upper_mass` gives P(lambda >
Re z) from the log-potential in closed form. The numerics are described in
`isometry.theory.freeprob`'s docstring, which this module serves.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isometry.theory import meanfield
from isometry.theory import derivative_law


# The solver.
DELTA = 1e-6            # relative height of the final density, at most ...


DELTA_WIDTH = 1e-3      # ... and at most this times the spectrum's relative standard deviation


DELTA_MIN = 1e-10       # below this (relative std < 1e-7) an orthogonal spectrum is refused


_FAR = 100.0             # the start: z = top + 100 i top


_LEVELS = 64             # vertical levels from there to top (1 + i delta)


_NEWTON = 12             # Newton iterations at most per solve


_BACKTRACK = 8           # step halvings before a Newton step is given up


_TOL = 4e-16             # Newton stops when its next step is below _TOL (|m| + |1 + m|)


_STUCK = 1e-9            # a refused Newton step below _STUCK (|m| + |1 + m|) is rounding


ROUNDING = 1e-12        # relative tolerance of the half-plane tests


_F_NOISE = 1e-14         # |F| below _F_NOISE (|m| + |1 + m|) is rounding: Newton stops there


_MAX_CHANGE = 0.25       # largest change of m in one march step, relative to |m| + |1 + m|


_THETA = 0.25            # largest second/first Newton step ratio of an accepted march step


_STEP0 = 0.01            # first march step in log lambda


_STEP_MAX = 0.1          # largest march step in log lambda


_STEP_MIN = 1e-13        # below this the step is taken whatever the contraction test says


_MAX_STEPS = 20000       # march steps at most, plus 4 per grid point


def s_w(m, sigma_w, gaussian):
  return jnp.where(gaussian, derivative_law.reciprocal(1.0 + m), 1.0) / sigma_w**2


def x_of(m, z, depth, sigma_w, gaussian):
  """x = M_{D^2}^{-1}(m) implied by the S-transform product, root cut on the positive i axis."""
  ratio = (1.0 + m) * derivative_law.reciprocal(m)
  w = z * derivative_law.reciprocal(ratio)
  angle = jnp.angle(w)
  angle = jnp.where(angle > jnp.pi / 2, angle - 2 * jnp.pi, angle)
  root = jnp.exp(jax.lax.complex(jnp.log(jnp.abs(w)), angle) / depth)
  return ratio * s_w(m, sigma_w, gaussian) * root


class _Point(NamedTuple):
  """m at one z with F(m), dF/dm and dF/dz there."""
  m: jax.Array
  f: jax.Array
  f_m: jax.Array
  f_z: jax.Array


def _physical(m, z, rounding=ROUNDING):
  """Im M <= 0 and Im G <= 0, G = (1 + m) / z: the physical root's half planes for Im z > 0.

  Up to rounding: where the density vanishes (gaps, the tail of a law) both are ~0.
  """
  g = (1.0 + m) * jnp.conj(z)
  return (m.imag <= rounding * jnp.abs(m)) & (g.imag <= rounding * jnp.abs(g))


def _scale(m):
  return jnp.abs(m) + jnp.abs(1.0 + m)     # >= 1: absolute tolerances on m and on 1 + m


def _select(condition, a, b):
  return jax.tree.map(lambda u, v: jnp.where(condition, u, v), a, b)


@jax.jit
def solve(lambdas, law, depth, sigma_w, gaussian, m1, m2, delta, noise):
  """m = M_{JJ^T}(lambda (1 + i delta)) on the grid, and |F(m)| / (|m| + |1 + m|) there.

  `noise` (>= 1) scales the rounding thresholds (_TOL, _F_NOISE, ROUNDING): F is evaluated at
  x(m), whose relative rounding eps moves M_{D^2}(x) by eps |x M'| ~ eps |m| d_max / w, w the
  distance of x from the law of d where it matters, about its spread: for a law concentrated
  within 1e-4 of d_max (small q*) F's rounding is ~1e4 times larger than for q* ~ 1, and
  Newton must stop there instead of halving the march step down to _STEP_MIN.

  Returns (m, residual, reached): reached counts the grid points solved (all of them unless
  the continuation ran out of steps).
  """
  gaussian = jnp.asarray(gaussian, dtype=jnp.float64)
  rounding = jnp.maximum(ROUNDING, 100.0 * _TOL * noise)
  physical = lambda m, z: _physical(m, z, rounding)

  def evaluate(m, z):
    x = x_of(m, z, depth, sigma_w, gaussian)
    value, slope = derivative_law.m_d2(x, law)
    # d log x / dm from x = (1 + m) / m S_W(m) (z m / (1 + m))**(1 / L).
    dlog_x = -((1.0 - 1.0 / depth) * derivative_law.reciprocal(m) +
               gaussian) * derivative_law.reciprocal(1.0 + m)
    return _Point(m, value - m, slope * x * dlog_x - 1.0, slope * x / (depth * z))

  def newton_step(point):
    return -point.f * derivative_law.reciprocal(point.f_m)

  def newton(guess, z, check):
    """Damped Newton from `guess` at z: steps must lower |F| and stay physical.

    With `check`, the iteration is a continuation step and stops as soon as it fails the
    contraction test: the first full step must lower |F| and the second Newton step be at most
    _THETA times the first (unless F is already at its rounding).

    Returns the last accepted point, whether Newton converged (its next step is below rounding,
    or no step lowers a rounding-level |F|), and whether the contraction test passed.
    """

    def cond(state):
      return ~state[4] & (state[3] < _NEWTON)

    def body(state):
      point, step, scale, it, _, _, _, first_step = state
      candidate = evaluate(point.m + scale * step, z)
      better = (it == 0) | (jnp.abs(candidate.f) < jnp.abs(point.f)) & physical(candidate.m, z)
      new_step = newton_step(candidate)
      point = _select(better, candidate, point)
      at_noise = jnp.abs(point.f) <= _F_NOISE * noise * _scale(point.m)
      converged = better & ((jnp.abs(new_step) <= _TOL * noise * _scale(candidate.m))
                            | (candidate.f == 0))
      # A refused step that is tiny, or with F at the level of its rounding: converged as far as
      # the rounding of F allows (near a pole of G, |m| ~ 1 / delta, that is far from _TOL).
      floor = ~better & (at_noise | (jnp.abs(scale * step) <= _STUCK * _scale(point.m)))
      given_up = ~better & (scale < 2.0**-_BACKTRACK)
      contracted = (it != 1) | at_noise | (better & (jnp.abs(new_step) <= _THETA * first_step))
      failed = check & ~contracted
      first_step = jnp.where(it == 0, jnp.abs(new_step), first_step)
      step = jnp.where(better, new_step, step)
      scale = jnp.where(better, 1.0, scale / 2)
      return (point, step, scale, it + 1, converged | floor | given_up | failed,
              converged | floor, ~failed, first_step)

    start = _Point(guess, jnp.asarray(jnp.inf, guess.dtype), guess, guess)
    state = (start, jnp.zeros_like(guess), 1.0, 0, jnp.asarray(False), jnp.asarray(False),
             jnp.asarray(True), 0.0)
    point, _, _, _, _, converged, contracted, _ = jax.lax.while_loop(cond, body, state)
    return point, converged, contracted

  def predicted(point, z, z_new):
    guess = point.m - point.f_z * derivative_law.reciprocal(point.f_m) * (z_new - z)
    return jnp.where(physical(guess, z_new), guess, point.m)

  # Start far above the top of the grid, where m ~ m_1 / z + m_2 / z**2, and descend vertically
  # to the final height (tangent predictor dm/dz = -F_z / F_m, then Newton).
  top = lambdas[-1]
  heights = top * jnp.exp(jnp.linspace(np.log(_FAR), jnp.log(delta), _LEVELS))
  z_far = top + 1j * heights[0]
  far = m1 * derivative_law.reciprocal(z_far) + m2 * derivative_law.reciprocal(z_far**2)

  def level(carry, height):
    point, z, first = carry
    z_new = top + 1j * height
    guess = jnp.where(first, far, predicted(point, z, z_new))
    point, _, _ = newton(guess, z_new, False)
    return (point, z_new, False), None

  start = _Point(far, far, far, far)
  point, _, _ = jax.lax.scan(level, (start, z_far, True), heights)[0]

  # March down the grid at the final height with step control. A step is a predictor (cubic
  # Hermite extrapolation from the last two points, up to twice their distance; tangent
  # m + dm/dz dz at the first and beyond), then
  # Newton; it is taken only if Newton passes the contraction test (the predictor lies well
  # inside its root's basin), m moves by at most _MAX_CHANGE (|m| + |1 + m|), and Newton
  # converges; otherwise the step in log lambda is halved. Grid points are always landed on.
  num = lambdas.shape[0]
  out_m = jnp.zeros(num, dtype=point.m.dtype).at[-1].set(point.m)
  out_f = jnp.zeros(num).at[-1].set(jnp.abs(point.f) / _scale(point.m))

  def march_cond(state):
    k, _, _, _, _, _, _, steps = state
    return (k >= 0) & (steps < _MAX_STEPS + 4 * num)

  def march_body(state):
    k, lam, point, previous, step, out_m, out_f, steps = state
    # Below _STEP_MIN the step is taken to the grid point whatever the tests say (its residual
    # tells how it went): no crawling.
    forced = step < _STEP_MIN
    reach = (lambdas[k] >= lam * jnp.exp(-step)) | forced
    lam_new = jnp.where(reach, lambdas[k], lam * jnp.exp(-step))
    z, z_new = lam * (1.0 + 1j * delta), lam_new * (1.0 + 1j * delta)
    slope = -point.f_z * derivative_law.reciprocal(point.f_m)
    z_previous, m_previous, slope_previous = previous
    h = z - z_previous
    s = (z_new - z) * derivative_law.reciprocal(h)
    a = m_previous - point.m + slope * h
    b = (slope_previous - slope) * h
    hermite = point.m + s * (slope * h + s * ((3.0 * a + b) + s * (2.0 * a + b)))
    # The cubic is trusted up to two previous steps ahead; beyond (a long step after a run of
    # short ones, e.g. out of a grid clustered at an edge) it can land far off the branch, and
    # the tangent is the safer guess.
    hermite_ok = (h != 0) & (jnp.abs(s) <= 2.0)
    guess = jnp.where(hermite_ok, hermite, point.m + slope * (z_new - z))
    guess = jnp.where(physical(guess, z_new), guess, point.m)
    new, converged, contracted = newton(guess, z_new, ~forced)
    limited = jnp.abs(new.m - point.m) <= _MAX_CHANGE * _scale(point.m)
    accept = (contracted & limited & converged) | forced
    landed = accept & reach
    out_m = out_m.at[k].set(jnp.where(landed, new.m, out_m[k]))
    out_f = out_f.at[k].set(jnp.where(landed, jnp.abs(new.f) / _scale(new.m), out_f[k]))
    previous = _select(accept, (z, point.m, slope), previous)
    point = _select(accept, new, point)
    step = jnp.where(accept, jnp.clip(2.0 * step, _STEP_MIN, _STEP_MAX),
                     jnp.minimum(step, jnp.log(lam / lam_new)) / 2)
    lam = jnp.where(accept, lam_new, lam)
    return (k - landed.astype(k.dtype), lam, point, previous, step, out_m, out_f, steps + 1)

  z_top = top * (1.0 + 1j * delta)
  k, _, _, _, _, out_m, out_f, _ = jax.lax.while_loop(
      march_cond, march_body,
      (jnp.asarray(num - 2), top, point, (z_top, point.m, point.m), jnp.asarray(_STEP0), out_m,
       out_f, 0))
  return out_m, out_f, num - 1 - k


def upper_mass_at(m, z, law, depth, sigma_w, gaussian):
  """mu(t > Re z) smoothed at the height of z: Im Phi(z) / pi, Phi(z) = E[log(z - lambda)].

  With m = M_{JJ^T}(z) and x = M_{D^2}^{-1}(m), dPhi = G dz = (1 + m) d log z, and
  log z = (1 - L) log((1 + m) / m) + L log x + L log sigma_w**2 + g L log(1 + m) (g = 1 for
  Gaussian weights, from S_{W^T W}) turns (1 + m) d log z into
  (L - 1) dm / m + L dPhi_D(x) + g L dm, with Phi_D(x) = E[log(x - d)] (since
  (1 + M_D(x)) dx / x = G_D(x) dx). Matching Phi(z) ~ log z as z -> inf:
    Phi(z) = (L - 1) log m + L Phi_D(x) + g L m + L log sigma_w**2,
  a closed form in the solved m, no integral over the spectrum. Im log m is taken in [-pi, 0]
  (Im m <= 0 on the physical branch), Im Phi_D = `derivative_law.arg_d2`. This is the CDF's
  complement at every grid point, atoms included (the atom at 0 adds mass * arg(z) / pi ~
  mass * delta / pi).
  """
  x = x_of(m, z, depth, sigma_w, gaussian)
  arg_m = -jnp.arctan2(jnp.maximum(-m.imag, 0.0), m.real)
  theta = jax.vmap(lambda xi: derivative_law.arg_d2(xi, law))(x)
  return ((depth - 1.0) * arg_m + depth * theta + gaussian * depth * m.imag) / jnp.pi


@jax.jit
def upper_mass(m, lambdas, law, depth, sigma_w, gaussian, delta):
  gaussian = jnp.asarray(gaussian, dtype=jnp.float64)
  return upper_mass_at(m, lambdas * (1.0 + 1j * delta), law, depth, sigma_w, gaussian)


def height(act, q, depth, spread, weights):
  """The solver's relative height: DELTA, or DELTA_WIDTH times the relative standard deviation
  sqrt(L spread) of the spectrum when that is smaller (a Cauchy smoothing of relative width 1e-6
  would blur a spectrum 1e-5 wide: tanh at q* = 1e-6, orthogonal, L = 1)."""
  relative_std = np.sqrt(depth * spread)
  delta = min(DELTA, DELTA_WIDTH * relative_std)
  if not delta >= DELTA_MIN:
    raise ValueError(
        f"the spectrum of this {weights} {act.name} network (q* = {q:.3g}, L = {depth}) has a "
        f"relative standard deviation of {relative_std:.2g}: narrower than the solver resolves "
        f"(1e-7); it is the atom chi**L to that accuracy (see jacobian_moments)")
  return delta


def rounding_scale(act, q, law):
  """1 / (relative standard deviation of d = phi'(h)**2), at least 1, at most 1e8: how much
  larger than for a law of relative width ~1 the rounding of F is (see `solve`). 1 for the
  atom laws, whose M_{D^2} is a closed form with no panel of d near x."""
  if law.nodes.shape[0] == 0:
    return 1.0
  mu1, mu2 = float(meanfield.mu(act, q, 1)), float(meanfield.mu(act, q, 2))
  relative_std = np.sqrt(max(mu2 / mu1**2 - 1.0, 0.0))
  return float(np.clip(1.0 / max(relative_std, 1e-300), 1.0, 1e8))
