"""Free-probability prediction of the input-output Jacobian spectrum of deep random networks.

Network h_l = W_l x_{l-1} + b_l, x_l = phi(h_l), L layers of width N -> infinity, weights sigma_w
times Haar-orthogonal or Gaussian (variance sigma_w**2 / N), inputs at the fixed point q*. The
Jacobian is J = prod_l D_l W_l with D_l = diag(phi'(h_l)); its squared singular values are the
eigenvalues lambda of J J^T. Since the factors are asymptotically free, S-transforms multiply
(Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning through
dynamical isometry", eqs. 11-15):

  S_{JJ^T}(m) = S_{D^2}(m)**L * S_{W^T W}(m)**L,
  S_{W^T W}(m) = sigma_w**-2 (orthogonal),  sigma_w**-2 / (1 + m) (Gaussian).

With M(z) = z G(z) - 1 = sum_k m_k z**-k, S(m) = (1 + m) / (m M^{-1}(m)), this becomes one scalar
equation per spectral parameter z for m = M_{JJ^T}(z):

  x(m, z) = (1 + m) / m * S_W(m) * w**(1/L),   w = z m / (1 + m),
  F(m)    = M_{D^2}(x(m, z)) - m = 0,

and the density is rho(lambda) = -Im G(lambda + i0) / pi with G = (1 + m) / z.

Numerics (the pitfalls are those recorded in shared/THEORY.md):
  - M_{D^2}(x) = E[d / (x - d)] = int f(t) / (x - t) dt, d = phi'(h)**2, h ~ N(0, q*), f the
    density of d times t, is needed for x within ~1e-14 of the support of d, where no fixed
    quadrature works. For smooth phi (phi'**2 decreasing in |h|: tanh, erf) the support is cut
    into panels in t = d (`_panel_law`): a top panel at d_max, where f has its square-root
    singularity, integrated in v = sqrt(d_max - t) (f dt = k(v) dv, k smooth; closed form with
    arctan), then panels over which d_max - d and d change by at most a factor 2 and h by at most
    sqrt(q*) (graded towards both ends of the support), down to P(|h| > H) = 1e-14 or
    d = 1e-16 d_max, and a tail panel, one graded step wide, holding the rest (the law's support
    is then [d_low, d_max], bounded away from 0). On each panel f is interpolated by a
    polynomial of degree 9, integrated against 1 / (x - t) in closed form (one log1p and an
    upward recursion) where x is near the panel, and by the panel's 8-point Gauss-Legendre rule
    in h where it is far (|panel half-length / (x - centre)| < 0.4: rule error < 1e-11). At
    most 8 panels are near one x (checked when the law is built; a law that breaks it raises
    ValueError). At small q* the whole law sits within ~100 q* of d_max, and F's rounding
    grows by 1 / (its relative spread): the solver's thresholds scale with it. Error against
    adaptive quadrature: < 3e-10 relative for x at any distance from the support (tanh and erf,
    q* = 1/64 to 4); the derivative M' comes from the same closed forms. For relu and hard_tanh
    D^2 is Bernoulli(p) and M_{D^2}(x) = p / (x - 1) exactly; linear is p = 1; any phi at q* = 0
    is an atom at phi'(0)**2.
  - Root selection (`_solve`): the physical root is followed from far above the top of the
    grid, where m ~ m_1 / z + m_2 / z**2, down a vertical line (64 levels, tangent predictor and
    Newton) to z = lambda_top (1 + i delta); then marched down the grid at that relative height
    with step control: each step is a predictor (cubic Hermite from the last two points, up to
    twice their distance; tangent m + dm/dz dz beyond) and Newton, taken only if
    the second Newton step is at most 1/4 of the first (the predictor is deep inside its root's
    basin: a neighbouring root, e.g. the unphysical mirror root near an edge, would make Newton
    contract slowly), m moves by at most 1/4 of |m| + |1 + m|, and Newton converges; otherwise
    the step in log lambda is halved, so the march creeps through edges, gaps and the Cauchy
    peaks of atoms (|m| ~ 1 / delta) and strides through smooth stretches (up to 0.1 in
    log lambda, but always landing on each grid point). Newton steps are damped until |F|
    decreases and Im m <= 0, Im G <= 0 hold (up to 1e-12 relative rounding). About 2-3
    evaluations of F per grid point; a 1000-point grid takes ~50 ms on one CPU core after
    compilation (benchmarks/theory.py).
  - w**(1/L): the physical w lies in the lower half plane; the branch cut of the root is put on
    the positive imaginary axis, so the argument runs over (-3 pi / 2, pi / 2].
  - The relative height delta = 1e-6 smooths the density by a Cauchy kernel of relative
    width 1e-6: invisible on a log grid, and it makes the grid scale-free, which matters for
    Gaussian weights at large L, whose density spreads over many decades near 0. Near-isometric
    spectra (small q*, orthogonal) can be narrower than that: delta is then 1e-3 of the
    spectrum's relative standard deviation sqrt(L (mu_2 / mu_1**2 - 1)) (refused below 1e-7).
    The atoms (at 0, and at sigma_w**(2L) for orthogonal Bernoulli networks) are reported
    separately; `density` is the continuous part (their Cauchy kernels removed).
  - The CDF comes from the log-potential Phi(z) = E[log(z - lambda)] = (L - 1) log m +
    L E[log(x - d)] + g L m + L log sigma_w**2 (g = 1 for Gaussian weights; `_upper_mass`), in
    closed form at each solved point: P(lambda > Re z) = Im Phi(z) / pi. So `cdf` is exact at
    every grid point whatever the spacing, and `mass_below`, the continuous mass below the grid
    (most of a deep spectrum), comes from the theory, not from what the grid misses.

Picking a grid: `spectral_grid_for(activation, sigma_w, sigma_b, depth, weights, num, decades)`
resolves the support (`min_squared_singular_value`, `max_squared_singular_value`,
`jacobian_moments`): dense across a narrow bulk, log-spaced over `decades` where the spectrum
spreads towards 0, graded at the edges. On it the trapezoid rule in log lambda of `density`,
plus `mass_below` and the atoms, is 1 within 5e-4 from num = 500 on (1.3e-4 at 1000), over
q* in [1e-6, 100], L in [1, 10^4], both weight laws and the activations here.
"""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from isometry import meanfield
from isometry.activations import Activation, get_activation

WEIGHTS = ("orthogonal", "gaussian")
_MAX_LOG10_SCALE = 150   # |log10 chi**L| beyond this leaves no float64 room for the spread

# The law of d = phi'(h)**2 for smooth phi: panels (see _panel_law).
_FIT = 10                # interpolation nodes per panel: exact integrals of degree-9 polynomials
_RULE = 8                # Gauss-Legendre nodes per panel for the far field
_GRADING = 2.0           # across a panel, d and d_max - d change by at most this factor
_TOP = 0.25              # the top panel ends at d_max - d = _TOP d_max (or at h = sqrt(q*))
_TAIL_MASS = 1e-14       # P(|h| > H) at the last panel end H ...
_D_FLOOR = 1e-16         # ... or H where d = _D_FLOOR d_max (phi' = 1 - tanh**2 loses digits)
_FINE = 8000             # points of the h grid that places the panel ends
_PANEL_BUCKETS = (64, 128, 256)   # panel counts padded to these: one program each (q* < ~10: 64)
_NEAR = 0.4              # |eps| >= _NEAR: a t-panel is integrated exactly, else by its rule
_NEAR_TOP = 4.0          # |sigma| <= _NEAR_TOP: the same for the top panel
_WINDOW = 8              # t-panels near one x at most (checked when a law is built)
_ATOM_SPREAD = 1e-12     # d_max - d(H) (relative), or 1 - p, below this: d is one atom

# The solver.
_DELTA = 1e-6            # relative height of the final density, at most ...
_DELTA_WIDTH = 1e-3      # ... and at most this times the spectrum's relative standard deviation
_DELTA_MIN = 1e-10       # below this (relative std < 1e-7) an orthogonal spectrum is refused
_FAR = 100.0             # the start: z = top + 100 i top
_LEVELS = 64             # vertical levels from there to top (1 + i delta)
_NEWTON = 12             # Newton iterations at most per solve
_BACKTRACK = 8           # step halvings before a Newton step is given up
_TOL = 4e-16             # Newton stops when its next step is below _TOL (|m| + |1 + m|)
_STUCK = 1e-9            # a refused Newton step below _STUCK (|m| + |1 + m|) is rounding
_ROUNDING = 1e-12        # relative tolerance of the half-plane tests
_F_NOISE = 1e-14         # |F| below _F_NOISE (|m| + |1 + m|) is rounding: Newton stops there
_MAX_CHANGE = 0.25       # largest change of m in one march step, relative to |m| + |1 + m|
_THETA = 0.25            # largest second/first Newton step ratio of an accepted march step
_STEP0 = 0.01            # first march step in log lambda
_STEP_MAX = 0.1          # largest march step in log lambda
_STEP_MIN = 1e-13        # below this the step is taken whatever the contraction test says
_MAX_STEPS = 20000       # march steps at most, plus 4 per grid point


class SpectralDensity(NamedTuple):
  """Predicted law of the squared singular values of J.

  Attributes:
    lambdas: (K,) grid of squared singular values, ascending, > 0.
    density: (K,) density of the continuous part at `lambdas` (at the solver's relative height
      `height`: the law convolved with a Cauchy kernel of width height * lambda; the atoms'
      own Cauchy kernels are removed).
    point_mass: mass of the atom at lambda = 0 (1 - p for relu and hard_tanh, whose phi'
      vanishes with probability 1 - p; 0 otherwise).
    residual: (K,) |F(m)| / (|m| + |1 + m|) at the returned root (the scale the solver's
      tolerances are relative to): a diagnostic, ~1e-16 when converged, up to ~1e-16 / (the
      relative spread of phi'(h)**2) for laws concentrated near their maximum (small q*).
    top_mass: mass of the atom at lambda = `top` = sigma_w**(2L): orthogonal weights with
      Bernoulli(p) D^2 and L (1 - p) < 1 leave a subspace of dimension >= N (1 - L (1 - p)) on
      which every layer is sigma_w times an isometry (the pole of G at z(m -> inf) = sigma_w**(2L)
      has residue 1 - L (1 - p)); 0 otherwise.
    top: sigma_w**(2L) where top_mass > 0; inf otherwise.
    mass_below: mass of the continuous part below lambdas[0], from the theory (the CDF at the
      grid's bottom, `cdf[0]`, less the atom at 0), not from what the grid holds: the continuous
      part integrates to 1 - point_mass - top_mass, of which mass_below lies below the grid
      (for deep networks most of it: tanh at q* = 1, L = 1000, orthogonal, 0.968 of the mass
      lies below 1e-10 lambda_max; Gaussian, 0.988).
    cdf: (K,) the CDF F(lambda) = P(squared singular value <= lambda) at `lambdas`, atoms
      included, from the log-potential Im E[log(z - lambda)] at z = lambdas (1 + i height) in
      closed form (`_upper_mass`): exact at each point (up to the Cauchy smoothing), whatever
      the grid's spacing.
    height: the solver's relative height delta (1e-6, or 1e-3 of the spectrum's relative
      standard deviation when that is smaller: near-isometric spectra).
  """
  lambdas: np.ndarray
  density: np.ndarray
  point_mass: float
  residual: np.ndarray
  top_mass: float = 0.0
  top: float = np.inf
  mass_below: Optional[float] = None
  cdf: Optional[np.ndarray] = None
  height: float = _DELTA


def _check(activation, sigma_w, sigma_b, depth, weights) -> Activation:
  act = activation if isinstance(activation, Activation) else get_activation(activation)
  if weights not in WEIGHTS:
    raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
  if not float(sigma_w) > 0:
    raise ValueError(f"sigma_w must be > 0, got {sigma_w}")
  if not float(sigma_b) >= 0:
    raise ValueError(f"sigma_b must be >= 0, got {sigma_b}")
  if int(depth) != depth or depth < 1:
    raise ValueError(f"depth must be an integer >= 1, got {depth}")
  return act


def fixed_point_variance(act: Activation, sigma_w, sigma_b) -> float:
  """q*, or 1 for relu/linear where q* is not unique or finite.

  The law of phi'(h)**2 of a positively homogeneous phi (relu, linear) does not depend on the
  variance of h, so any q gives the same spectrum; on their critical line (sigma_b = 0) every q
  is a fixed point and `meanfield.q_star` refuses to pick one.
  """
  if act.name in ("relu", "linear"):
    try:
      return float(meanfield.q_star(act, sigma_w, sigma_b))
    except ValueError:
      return 1.0
  return float(meanfield.q_star(act, sigma_w, sigma_b))


def _w_shift(weights: str) -> float:
  """s_1 in S_{W^T W}(m) = sigma_w**-2 (1 + s_1 m + ...): 0 orthogonal, -1 Gaussian."""
  return 0.0 if weights == "orthogonal" else -1.0


def jacobian_moments(activation, sigma_w, sigma_b, depth, weights):
  """Mean and variance of the squared singular values of J (eigenvalues of J J^T).

  Args:
    activation: name or `Activation`.
    sigma_w, sigma_b: weight and bias scales; the inputs sit at q*(sigma_w, sigma_b).
    depth: number of layers L >= 1.
    weights: "orthogonal" or "gaussian".

  Returns:
    (mean, variance) with mean = chi**L and
    variance = L mean**2 (mu_2 / mu_1**2 - 1 - s_1), mu_k = E[phi'(h)**(2k)], s_1 = 0 for
    orthogonal and -1 for Gaussian weights.

  References:
    Pennington, Schoenholz & Ganguli 2018, "The emergence of spectral universality in deep
    networks", eqs. (15)-(16); the same follows from expanding the S-transform product above.
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  mean, spread = _scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  variance = depth * mean**2 * spread
  if not np.isfinite(variance):
    raise ValueError(
        f"the variance L chi**(2L) (mu_2 / mu_1**2 - 1 - s_1) = 10**"
        f"{np.log10(depth * spread) + 2 * np.log10(mean):.0f} overflows float64 at L = {depth}")
  return float(mean), float(variance)


def _scale_and_spread(act: Activation, sigma_w, sigma_b, depth, weights):
  """chi**L and mu_2 / mu_1**2 - 1 - s_1; ValueError where chi**L leaves float64's room.

  The density solver works in units of chi**L (`_solve` sees chi = 1), so only the scale itself
  must be representable; _MAX_LOG10_SCALE also leaves room for the variance and the grid.
  """
  q = fixed_point_variance(act, sigma_w, sigma_b)
  mu1, mu2 = float(meanfield.mu(act, q, 1)), float(meanfield.mu(act, q, 2))
  chi = sigma_w**2 * mu1
  log10_mean = depth * np.log10(chi) if chi > 0 else -np.inf
  if not abs(log10_mean) <= _MAX_LOG10_SCALE:
    raise ValueError(
        f"chi**L = 10**{log10_mean:.0f} at chi = {chi:.4g}, L = {depth}: the spectrum's "
        f"scale is outside what float64 can represent with its spread; the theory applies, but "
        f"not in these units (choose a smaller depth or chi closer to 1)")
  # mu_2 >= mu_1**2 (Jensen); rounding leaves -1e-16 where d is an atom (q* = 0).
  return np.float64(10.0)**log10_mean, max(mu2 / mu1**2 - 1.0, 0.0) - _w_shift(weights)


# ---------------------------------------------------------------------------------------------
# M-transform of D^2 = phi'(h)^2.


class _D2Law(NamedTuple):
  """The law of d = phi'(h)**2, h ~ N(0, q*): an atom, or product-integration panels.

  An atom law (relu, hard_tanh, linear; any phi at q* = 0) puts mass `p` on d = `atom` and
  1 - p on d = 0, and has no panel rows. A smooth law (tanh, erf) has `atom` = d_max = max d and
  rows for panels over t = d, padded with empty rows to a size in `_PANEL_BUCKETS`:
    row 0, the top panel t in [`lower`, `upper`] = [d_max - Y, d_max]: `coef` holds
      K(w) = sum_j coef_j w**j with k(v) = K(v**2 / Y), k(v) dv = f(t) dt, v = sqrt(d_max - t)
      (smooth where f has its square-root singularity; see `_m_d2`);
    rows 1..: t-panels in decreasing t, each [`lower`, `upper`], and `coef` the density
      f(t) = t p_d(t) as a polynomial in u = (t - centre) / half on [-1, 1]; the last real row
      is the tail [0, d(H)], holding the mass P(|h| > H) spread uniformly.
  Neighbouring panels share their end points bitwise (lower[k] == upper[k + 1]): the exact
  integrals have log singularities there that must cancel to the last digit when x is within
  ~1e-14 of an end (narrow spectra put x that close to the support).
  `nodes`, `weights`: each panel's Gauss-Legendre rule in h mapped to t, so that
  sum(weights * r(nodes)) ~ int f(t) r(t) dt over the panel (weights: g(h) = 2 N(h; 0, q*) d(h)
  times the rule's weights in h).
  `density_coef`: as `coef`, for the density p_d(t) = f(t) / t itself (row 0: k(v) / t), used
  by the log-potential E[log(x - d)] (the CDF, `_arg_d2`).
  The last real row is the tail: the mass P(|h| > H) (1e-14, or below d = 1e-16 d_max) spread
  uniformly over a panel as wide as the one above it, [d(H) - w, d(H)], not down to 0: panels
  stay graded (an exact integral is needed only near x), and the law's support [lower, d_max]
  is bounded away from 0, which is what `min_squared_singular_value` reports the edge of.
  """
  p: float
  atom: float
  nodes: np.ndarray
  weights: np.ndarray
  coef: np.ndarray
  lower: np.ndarray
  upper: np.ndarray
  density_coef: np.ndarray


def _atom_law(p: float, atom: float = 1.0) -> _D2Law:
  empty = np.zeros((0, _RULE))
  return _D2Law(float(p), float(atom), empty, empty, np.zeros((0, _FIT)), np.zeros(0),
                np.zeros(0), np.zeros((0, _FIT)))


@functools.partial(jax.jit, static_argnums=0)
def _d_and_slope_jit(act: Activation, h):
  first, second = jax.jvp(act.derivative, (h,), (jnp.ones_like(h),))
  return jnp.square(first), 2.0 * first * second


def _d_and_slope(act: Activation, h):
  """d(h) = phi'(h)**2 and d'(h) in float64 numpy, by jax's forward mode.

  Inputs are padded to a power of two (>= 1024), so laws with different panel counts share
  compiled programs.
  """
  h = np.asarray(h, dtype=np.float64)
  size = max(1024, 1 << int(np.ceil(np.log2(max(h.size, 1)))))
  with jax.enable_x64(True):
    d, slope = _d_and_slope_jit(act, jnp.asarray(np.pad(h.ravel(), (0, size - h.size))))
  return (np.asarray(d)[:h.size].reshape(h.shape), np.asarray(slope)[:h.size].reshape(h.shape))


@functools.lru_cache(maxsize=64)
def _d2_law(act: Activation, q: float) -> _D2Law:
  if act.name == "linear":
    return _atom_law(1.0)
  if act.bernoulli_derivative:
    p = float(meanfield.mu(act, q, 1))
    # Within _ATOM_SPREAD of 1 (hard_tanh at q* ~ 0): the atom at 0 is below float64's reach.
    return _atom_law(1.0 if p >= 1.0 - _ATOM_SPREAD else p)
  if q <= 0:
    # h = 0: every layer is linear with gain phi'(0).
    d0, _ = _d_and_slope(act, np.zeros(1))
    return _atom_law(1.0, float(d0[0]))
  return _panel_law(act, q)


def _gauss_legendre(lo, hi, num):
  """Nodes and weights of num-point Gauss-Legendre rules on the intervals [lo, hi] (arrays)."""
  x, w = np.polynomial.legendre.leggauss(num)
  mid, half = (lo + hi)[:, None] / 2, (hi - lo)[:, None] / 2
  return mid + half * x[None, :], half * w[None, :]


def _panel_law(act: Activation, q: float) -> _D2Law:
  """Panels for a smooth phi whose phi'**2 decreases in |h| from its maximum at h = 0."""
  sq = np.sqrt(q)
  end = np.sqrt(2.0 * q) * special.erfcinv(_TAIL_MASS)
  h = np.linspace(0.0, end, _FINE)
  d, slope = _d_and_slope(act, h)
  d_max = d[0]
  below = d < _D_FLOOR * d_max
  if d_max > 0 and np.any(below):
    first = max(int(np.argmax(below)), 1)
    end = float(np.interp(np.log(_D_FLOOR), np.log(d[first - 1:first + 1][::-1] / d_max),
                          h[first - 1:first + 1][::-1]))
    h = np.linspace(0.0, end, _FINE)
    d, slope = _d_and_slope(act, h)
  if not (np.isfinite(d_max) and d_max > 0 and np.all(np.isfinite(d)) and np.all(slope[1:] < 0)):
    raise ValueError(
        f"the density solver needs phi'(h)**2 finite, positive and strictly decreasing in |h| "
        f"(as for tanh and erf); {act.name} does not satisfy this at q* = {q:.6g}")
  s = d_max - d
  if s[-1] <= _ATOM_SPREAD * d_max:
    # Narrower than float64 resolves (and far narrower than the density's relative height).
    return _atom_law(1.0, float(d_max))
  # The top panel ends at d_max - d = _TOP d_max or h = sqrt(q*); then panels end at the
  # integers of psi, which grows by one where d_max - d or d changes by the factor _GRADING or
  # h by sqrt(q*).
  top_end = min(float(np.interp(_TOP * d_max, s, h)) if s[-1] > _TOP * d_max else end, sq)
  ends = np.array([0.0, top_end])
  if top_end < end:
    tail = h >= top_end
    psi = (np.log(s[tail] / d_max) - np.log(d[tail] / d_max)) / np.log(_GRADING) + h[tail] / sq
    count = max(1, int(np.ceil(psi[-1] - psi[0])))
    levels = psi[0] + (psi[-1] - psi[0]) * np.arange(1, count + 1) / count
    ends = np.concatenate([ends, np.interp(levels, psi, h[tail])])
    ends[-1] = end
  lo, hi = ends[:-1], ends[1:]

  def density(h_nodes):
    """g = 2 N(h; 0, q) d and f = g / |d'|, the density of t = d(h) times t."""
    d_nodes, slope_nodes = _d_and_slope(act, h_nodes)
    g = 2.0 * np.exp(-h_nodes**2 / (2.0 * q)) / np.sqrt(2.0 * np.pi * q) * d_nodes
    return d_nodes, g, g / np.abs(slope_nodes)

  h_rule, w_rule = _gauss_legendre(lo, hi, _RULE)
  nodes, g, _ = density(h_rule)
  weights = w_rule * g
  h_fit, _ = _gauss_legendre(lo, hi, _FIT)
  t_fit, _, f_fit = density(h_fit)
  d_ends, _ = _d_and_slope(act, ends)

  # Top panel: s = d_max - d by Gauss-Legendre of -d' on [0, h] (no cancellation near h = 0).
  def s_of(hs):
    inner_h, inner_w = _gauss_legendre(np.zeros_like(hs), hs, _FIT)
    return -np.sum(_d_and_slope(act, inner_h)[1] * inner_w, axis=1)

  s_top = s_of(h_fit[0])
  big_y = d_max - d_ends[1]
  vander_top = np.vander(s_top / big_y, _FIT, increasing=True)
  top_coef = np.linalg.solve(vander_top, 2.0 * np.sqrt(s_top) * f_fit[0])
  top_density = np.linalg.solve(vander_top, 2.0 * np.sqrt(s_top) * f_fit[0] / t_fit[0])
  # t-panels: f and f / t as polynomials in u = (t - centre) / half.
  centre = (d_ends[1:-1] + d_ends[2:]) / 2
  half = (d_ends[1:-1] - d_ends[2:]) / 2
  u = (t_fit[1:] - centre[:, None]) / half[:, None]
  vander = u[:, :, None]**np.arange(_FIT)
  coef = np.linalg.solve(vander, f_fit[1:, :, None])[..., 0]
  density_coef = np.linalg.solve(vander, (f_fit[1:] / t_fit[1:])[:, :, None])[..., 0]
  # Tail: the mass P(|h| > H) uniform on [t_lo, t_hi] = [d(H) - w, d(H)], w the width of the panel
  # above (or d(H) / 2 if that is less), f(t) = mass t / (t_hi - t_lo).
  t_hi = d_ends[-1]
  t_lo = t_hi - min(d_ends[-2] - d_ends[-1], 0.5 * t_hi)
  mass = float(special.erfc(end / np.sqrt(2.0 * q)))
  tail_nodes, tail_w = _gauss_legendre(np.array([t_lo]), np.array([t_hi]), _RULE)
  tail_half = 0.5 * (t_hi - t_lo)
  tail_coef = np.zeros(_FIT)
  tail_coef[:2] = mass * 0.5 * (t_hi + t_lo) / (2.0 * tail_half), mass / 2
  tail_density = np.zeros(_FIT)
  tail_density[0] = mass / (2.0 * tail_half)

  nodes = np.concatenate([nodes, tail_nodes])
  weights = np.concatenate([weights, tail_w * mass * tail_nodes / (2.0 * tail_half)])
  coef = np.concatenate([top_coef[None], coef, tail_coef[None]])
  density_coef = np.concatenate([top_density[None], density_coef, tail_density[None]])
  upper = np.concatenate([[d_max], d_ends[1:]])
  lower = np.concatenate([d_ends[1:], [t_lo]])
  size = next((b for b in _PANEL_BUCKETS if b >= len(upper)), None)
  if size is None:
    raise ValueError(f"the law of phi'(h)**2 for {act.name} at q* = {q:.6g} needs "
                     f"{len(upper)} panels, more than the solver supports ({_PANEL_BUCKETS[-1]})")
  # Empty rows: no weight, zero length (never near), below every real panel.
  pad = size - len(upper)
  nodes = np.concatenate([nodes, -np.ones((pad, _RULE))])
  weights = np.concatenate([weights, np.zeros((pad, _RULE))])
  coef = np.concatenate([coef, np.zeros((pad, _FIT))])
  density_coef = np.concatenate([density_coef, np.zeros((pad, _FIT))])
  lower = np.concatenate([lower, -np.ones(pad)])
  upper = np.concatenate([upper, -np.ones(pad)])
  _check_window(act, q, lower[1:], upper[1:])
  return _D2Law(0.0, float(d_max), nodes, weights, coef, lower, upper, density_coef)


def _window_start(x_real, lower):
  """First t-panel of the _WINDOW examined for exact integration at x (t-panels in decreasing t).

  The window holds the panel containing Re x, _WINDOW // 2 - 1 panels above it and the rest
  below, clipped to the panels that exist.
  """
  containing = jnp.sum(lower > x_real)
  return jnp.clip(containing - (_WINDOW // 2 - 1), 0, lower.shape[0] - _WINDOW)


def _check_window(act, q, lower, upper):
  """Every t-panel with |eps| >= _NEAR at x lies in x's window (the worst x are real).

  Graded panels guarantee it; a law that breaks it would be integrated wrongly near some x, so it
  is refused (ValueError) rather than used.
  """
  centre, half = (upper + lower) / 2, (upper - lower) / 2
  ends = np.concatenate([lower, upper])
  x = np.concatenate([ends, ends * (1 + 1e-9), ends * (1 - 1e-9), centre, [-3.0, 3 * upper[0]]])
  near = (half[None, :] > 0) & (half[None, :] >= _NEAR * np.abs(x[:, None] - centre[None, :]))
  containing = np.sum(lower[None, :] > x[:, None], axis=1)
  start = np.clip(containing - (_WINDOW // 2 - 1), 0, centre.size - _WINDOW)
  index = np.arange(centre.size)[None, :]
  inside = (index >= start[:, None]) & (index < start[:, None] + _WINDOW)
  if np.any(near & ~inside):
    raise ValueError(f"the panels of the law of phi'(h)**2 for {act.name} at q* = {q:.6g} are "
                     f"not graded enough for the solver's window of {_WINDOW} panels")


def _reciprocal(a):
  """1 / a for complex a by real arithmetic (XLA's complex division is several times slower)."""
  norm = jnp.square(a.real) + jnp.square(a.imag)
  return jax.lax.complex(a.real / norm, -a.imag / norm)


def _m_d2(x, law: _D2Law):
  """M_{D^2}(x) = E[d / (x - d)] and its derivative, for complex x off the support of d.

  Far panels by their Gauss-Legendre rules; the top panel (|sigma| <= _NEAR_TOP) and the
  t-panels with |eps| >= _NEAR (at most _WINDOW, found by `_window_start`) by exact integrals
  of their interpolating polynomials.
  """
  if law.nodes.shape[0] == 0:
    value = law.p * law.atom * _reciprocal(x - law.atom)
    return value, -value * _reciprocal(x - law.atom)
  # Rules, per panel, in real arithmetic: 1 / (x - t) = (dr - i xi) / (dr**2 + xi**2).
  dr = x.real - law.nodes
  xi = x.imag
  inverse = 1.0 / (jnp.square(dr) + jnp.square(xi))
  w1 = law.weights * inverse
  w2 = w1 * inverse
  rows = jax.lax.complex(jnp.sum(w1 * dr, axis=1), -xi * jnp.sum(w1, axis=1))
  d_rows = jax.lax.complex(-jnp.sum(w2 * (dr - xi) * (dr + xi), axis=1),
                           2.0 * xi * jnp.sum(w2 * dr, axis=1))
  m, dm = jnp.sum(rows), jnp.sum(d_rows)
  fit = law.coef.shape[1]

  # Top panel: (1 / V) sum_j b_j kappa_j(sigma), kappa_j = int_0^1 r**2j / (sigma + r**2) dr,
  # sigma = (x - d_max) / Y, V = sqrt(Y); lambda_j = int_0^1 r**2j / (sigma + r**2)**2 dr
  # gives the derivative. Upward recursions, stable for |sigma| <= _NEAR_TOP since the
  # coefficients b_j decay like (Y / d_max)**j <= _TOP**j.
  d_max, bottom, b = law.upper[0], law.lower[0], law.coef[0]
  big_y = d_max - bottom
  sigma = (x - d_max) / big_y
  near_top = jnp.abs(sigma) <= _NEAR_TOP
  sigma = jnp.where(near_top, sigma, 1.0)
  root = jnp.sqrt(sigma)
  # arctan(1 / root) / root = log((root + i) / (root - i)) / (2 i root), with
  # root - i = (sigma + 1) / (root + i) and sigma + 1 from the shared end point `bottom`.
  end = jnp.where(near_top, (x - bottom) / big_y, 1.0)
  kappa = jnp.log(jnp.square(root + 1j) * _reciprocal(end)) * _reciprocal(2j * root)
  lam = (_reciprocal(1.0 + sigma) + kappa) * _reciprocal(2.0 * sigma)
  top, d_top = b[0] * kappa, b[0] * lam
  for j in range(1, fit):
    kappa, lam = 1.0 / (2 * j - 1) - sigma * kappa, kappa - sigma * lam
    top, d_top = top + b[j] * kappa, d_top + b[j] * lam
  top, d_top = top / jnp.sqrt(big_y), -d_top / (big_y * jnp.sqrt(big_y))
  m += jnp.where(near_top, top - rows[0], 0.0)
  dm += jnp.where(near_top, d_top - d_rows[0], 0.0)

  # Near t-panels: (half / a) sum_j c_j phi_j(eps), a = x - centre, eps = half / a,
  # phi_j = int_{-1}^1 u**j / (1 - eps u) du, and psi_j = int u**j / (1 - eps u)**2 du for the
  # derivative. Upward recursions, stable for |eps| >= _NEAR (the c_j decay).
  start = _window_start(x.real, law.lower[1:])
  window = lambda v: jax.lax.dynamic_slice_in_dim(v[1:], start, _WINDOW)
  lower, upper, c = window(law.lower), window(law.upper), window(law.coef)
  half = (upper - lower) / 2
  a = x - (upper + lower) / 2
  near = (half > 0) & (half >= _NEAR * jnp.abs(a))
  inv = jnp.where(near, a / jnp.where(near, half, 1.0), 2.0)          # 1 / eps
  # log((1 + eps) / (1 - eps)) = log((x - lower) / (x - upper)), from the shared end points.
  ratio = jnp.where(near, (x - lower) * _reciprocal(x - upper), 3.0)
  phi = jnp.log(ratio) * inv
  psi = 2.0 * jnp.square(inv) * _reciprocal(jnp.square(inv) - 1.0)
  total, d_total = c[:, 0] * phi, c[:, 0] * psi
  for j in range(1, fit):
    moment = 2.0 / j if j % 2 else 0.0          # int_{-1}^1 u**(j-1) du
    phi, psi = (phi - moment) * inv, (psi - phi) * inv
    total, d_total = total + c[:, j] * phi, d_total + c[:, j] * psi
  eps = _reciprocal(inv)
  exact = eps * total
  d_exact = -jnp.square(eps) * d_total / jnp.where(near, half, 1.0)
  m += jnp.sum(jnp.where(near, exact - window(rows), 0.0))
  dm += jnp.sum(jnp.where(near, d_exact - window(d_rows), 0.0))
  return m, dm


def _arg_d2(x, law: _D2Law):
  """Theta(x) = E[arg(x - d)] = Im E[log(x - d)] for complex x with Im x >= 0, in [0, pi].

  The imaginary part of the log-potential of the law of d, which the CDF of J J^T is built from
  (`_upper_mass`). Far panels by their Gauss-Legendre rules (weights carry f = t p_d, hence the
  division by the node); the top panel and the near t-panels (the same window as `_m_d2`) by
  exact integrals of `density_coef` against log(x - t):
    t-panels: half int_{-1}^1 P(u) log(a - u) du, a = (x - centre) / half, with
      int u^j log(a - u) du = [log(a - 1) - (-1)^(j+1) log(a + 1) + K_{j+1}(a)] / (j + 1),
      K_k = int u^k / (a - u) du = a K_{k-1} - int u^(k-1) du, K_0 = log((a + 1) / (a - 1));
    top panel: V int_0^1 K_p(r^2) log(Y (sigma + r^2)) dr, V = sqrt(Y), sigma = (x - d_max) / Y,
      with int_0^1 r^2j log(sigma + r^2) dr = (log(1 + sigma) - 2 kappa_{j+1}) / (2 j + 1) and the
      kappa_j of `_m_d2`.
  Only imaginary parts are formed (arguments from the shared panel ends, as in `_m_d2`).
  """
  angle = lambda v: jnp.arctan2(v.imag, v.real)
  if law.nodes.shape[0] == 0:
    return law.p * angle(x - law.atom) + (1.0 - law.p) * angle(x)
  rows = jnp.sum(law.weights * jnp.arctan2(x.imag, x.real - law.nodes) / law.nodes, axis=1)
  total = jnp.sum(rows)
  fit = law.density_coef.shape[1]

  d_max, bottom, b = law.upper[0], law.lower[0], law.density_coef[0]
  big_y = d_max - bottom
  sigma = (x - d_max) / big_y
  near_top = jnp.abs(sigma) <= _NEAR_TOP
  sigma = jnp.where(near_top, sigma, 1.0)
  root = jnp.sqrt(sigma)
  end = jnp.where(near_top, (x - bottom) / big_y, 1.0)
  kappa = jnp.log(jnp.square(root + 1j) * _reciprocal(end)) * _reciprocal(2j * root)
  end_angle = jnp.arctan2(x.imag, x.real - bottom)
  top = 0.0
  for j in range(fit):
    kappa = 1.0 / (2 * j + 1) - sigma * kappa                  # kappa_{j+1}
    top = top + b[j] * (end_angle - 2.0 * kappa.imag) / (2 * j + 1)
  total += jnp.where(near_top, jnp.sqrt(big_y) * top - rows[0], 0.0)

  start = _window_start(x.real, law.lower[1:])
  window = lambda v: jax.lax.dynamic_slice_in_dim(v[1:], start, _WINDOW)
  lower, upper, c = window(law.lower), window(law.upper), window(law.density_coef)
  half = (upper - lower) / 2
  near = (half > 0) & (half >= _NEAR * jnp.abs(x - (upper + lower) / 2))
  a = jnp.where(near, (x - (upper + lower) / 2) / jnp.where(near, half, 1.0), 2.0)
  k = jnp.log(jnp.where(near, (x - lower) * _reciprocal(x - upper), 3.0))     # K_0
  angle_upper = jnp.arctan2(x.imag, x.real - upper)
  angle_lower = jnp.arctan2(x.imag, x.real - lower)
  exact = 0.0
  for j in range(fit):
    k = a * k - (2.0 / (j + 1) if j % 2 == 0 else 0.0)          # K_{j+1}
    sign = 1.0 if j % 2 else -1.0                                # (-1)**(j + 1)
    exact = exact + c[:, j] * (angle_upper - sign * angle_lower + k.imag) / (j + 1)
  total += jnp.sum(jnp.where(near, half * exact - window(rows), 0.0))
  return total


# ---------------------------------------------------------------------------------------------
# The scalar equation and its continuation.


@jax.jit
def _m_d2_real(x, law):
  return jax.vmap(lambda xi: _m_d2(xi + 0j, law)[0].real)(x)


def _s_w(m, sigma_w, gaussian):
  return jnp.where(gaussian, _reciprocal(1.0 + m), 1.0) / sigma_w**2


def _x_of(m, z, depth, sigma_w, gaussian):
  """x = M_{D^2}^{-1}(m) implied by the S-transform product, root cut on the positive i axis."""
  ratio = (1.0 + m) * _reciprocal(m)
  w = z * _reciprocal(ratio)
  angle = jnp.angle(w)
  angle = jnp.where(angle > jnp.pi / 2, angle - 2 * jnp.pi, angle)
  root = jnp.exp(jax.lax.complex(jnp.log(jnp.abs(w)), angle) / depth)
  return ratio * _s_w(m, sigma_w, gaussian) * root


class _Point(NamedTuple):
  """m at one z with F(m), dF/dm and dF/dz there."""
  m: jax.Array
  f: jax.Array
  f_m: jax.Array
  f_z: jax.Array


def _physical(m, z, rounding=_ROUNDING):
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
def _solve(lambdas, law, depth, sigma_w, gaussian, m1, m2, delta, noise):
  """m = M_{JJ^T}(lambda (1 + i delta)) on the grid, and |F(m)| / (|m| + |1 + m|) there.

  `noise` (>= 1) scales the rounding thresholds (_TOL, _F_NOISE, _ROUNDING): F is evaluated at
  x(m), whose relative rounding eps moves M_{D^2}(x) by eps |x M'| ~ eps |m| d_max / w, w the
  distance of x from the law of d where it matters, about its spread: for a law concentrated
  within 1e-4 of d_max (small q*) F's rounding is ~1e4 times larger than for q* ~ 1, and
  Newton must stop there instead of halving the march step down to _STEP_MIN.

  Returns (m, residual, reached): reached counts the grid points solved (all of them unless
  the continuation ran out of steps).
  """
  gaussian = jnp.asarray(gaussian, dtype=jnp.float64)
  rounding = jnp.maximum(_ROUNDING, 100.0 * _TOL * noise)
  physical = lambda m, z: _physical(m, z, rounding)

  def evaluate(m, z):
    x = _x_of(m, z, depth, sigma_w, gaussian)
    value, slope = _m_d2(x, law)
    # d log x / dm from x = (1 + m) / m S_W(m) (z m / (1 + m))**(1 / L).
    dlog_x = -((1.0 - 1.0 / depth) * _reciprocal(m) + gaussian) * _reciprocal(1.0 + m)
    return _Point(m, value - m, slope * x * dlog_x - 1.0, slope * x / (depth * z))

  def newton_step(point):
    return -point.f * _reciprocal(point.f_m)

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
    guess = point.m - point.f_z * _reciprocal(point.f_m) * (z_new - z)
    return jnp.where(physical(guess, z_new), guess, point.m)

  # Start far above the top of the grid, where m ~ m_1 / z + m_2 / z**2, and descend vertically
  # to the final height (tangent predictor dm/dz = -F_z / F_m, then Newton).
  top = lambdas[-1]
  heights = top * jnp.exp(jnp.linspace(np.log(_FAR), jnp.log(delta), _LEVELS))
  z_far = top + 1j * heights[0]
  far = m1 * _reciprocal(z_far) + m2 * _reciprocal(z_far**2)

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
    slope = -point.f_z * _reciprocal(point.f_m)
    z_previous, m_previous, slope_previous = previous
    h = z - z_previous
    s = (z_new - z) * _reciprocal(h)
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


def _upper_mass(m, z, law, depth, sigma_w, gaussian):
  """mu(t > Re z) smoothed at the height of z: Im Phi(z) / pi, Phi(z) = E[log(z - lambda)].

  With m = M_{JJ^T}(z) and x = M_{D^2}^{-1}(m), dPhi = G dz = (1 + m) d log z, and
  log z = (1 - L) log((1 + m) / m) + L log x + L log sigma_w**2 + g L log(1 + m) (g = 1 for
  Gaussian weights, from S_{W^T W}) turns (1 + m) d log z into
  (L - 1) dm / m + L dPhi_D(x) + g L dm, with Phi_D(x) = E[log(x - d)] (since
  (1 + M_D(x)) dx / x = G_D(x) dx). Matching Phi(z) ~ log z as z -> inf:
    Phi(z) = (L - 1) log m + L Phi_D(x) + g L m + L log sigma_w**2,
  a closed form in the solved m, no integral over the spectrum. Im log m is taken in [-pi, 0]
  (Im m <= 0 on the physical branch), Im Phi_D = `_arg_d2`. This is the CDF's complement at every
  grid point, atoms included (the atom at 0 adds mass * arg(z) / pi ~ mass * delta / pi).
  """
  x = _x_of(m, z, depth, sigma_w, gaussian)
  arg_m = -jnp.arctan2(jnp.maximum(-m.imag, 0.0), m.real)
  theta = jax.vmap(lambda xi: _arg_d2(xi, law))(x)
  return ((depth - 1.0) * arg_m + depth * theta + gaussian * depth * m.imag) / jnp.pi



@jax.jit
def _upper_mass_jit(m, lambdas, law, depth, sigma_w, gaussian, delta):
  gaussian = jnp.asarray(gaussian, dtype=jnp.float64)
  return _upper_mass(m, lambdas * (1.0 + 1j * delta), law, depth, sigma_w, gaussian)


def _height(act, q, depth, spread, weights):
  """The solver's relative height: _DELTA, or _DELTA_WIDTH times the relative standard deviation
  sqrt(L spread) of the spectrum when that is smaller (a Cauchy smoothing of relative width 1e-6
  would blur a spectrum 1e-5 wide: tanh at q* = 1e-6, orthogonal, L = 1)."""
  relative_std = np.sqrt(depth * spread)
  delta = min(_DELTA, _DELTA_WIDTH * relative_std)
  if not delta >= _DELTA_MIN:
    raise ValueError(
        f"the spectrum of this {weights} {act.name} network (q* = {q:.3g}, L = {depth}) has a "
        f"relative standard deviation of {relative_std:.2g}: narrower than the solver resolves "
        f"(1e-7); it is the atom chi**L to that accuracy (see jacobian_moments)")
  return delta


def _rounding_scale(act, q, law):
  """1 / (relative standard deviation of d = phi'(h)**2), at least 1, at most 1e8: how much
  larger than for a law of relative width ~1 the rounding of F is (see `_solve`). 1 for the
  atom laws, whose M_{D^2} is a closed form with no panel of d near x."""
  if law.nodes.shape[0] == 0:
    return 1.0
  mu1, mu2 = float(meanfield.mu(act, q, 1)), float(meanfield.mu(act, q, 2))
  relative_std = np.sqrt(max(mu2 / mu1**2 - 1.0, 0.0))
  return float(np.clip(1.0 / max(relative_std, 1e-300), 1.0, 1e8))


def jacobian_spectral_density(activation, sigma_w, sigma_b, depth, weights, lambdas):
  """Density of the squared singular values of J on a grid.

  Args:
    activation: name or `Activation`.
    sigma_w, sigma_b: weight and bias scales; inputs at q*(sigma_w, sigma_b).
    depth: L >= 1.
    weights: "orthogonal" or "gaussian".
    lambdas: (K,) positive grid, ascending; its top should lie at or above the spectrum's edge
      (see `max_squared_singular_value`), since the solver starts there. `spectral_grid_for`
      builds one that resolves the support (log-spaced where the spectrum spreads over decades,
      dense across a narrow bulk); the solver compiles once per grid size K.

  Returns:
    `SpectralDensity`: the density of the continuous part, the atoms (at 0, and at
    sigma_w**(2L)), the continuous mass below the grid (`mass_below`) and the CDF at the grid
    points, both from the theory. On any grid, trapezoid(density, lambdas) + mass_below +
    point_mass + top_mass = 1 up to the quadrature error of the grid and the continuous mass
    above its top.

  Raises:
    ValueError: bad arguments; chi**L outside [1e-150, 1e150]; a linear network with orthogonal
      weights (or any phi at q* ~ 0), whose spectrum is the single atom (sigma_w phi'(0))**(2L)
      (no density); an orthogonal spectrum narrower than 1e-7 relative; a law of phi'**2 the
      panels do not support; or a continuation that does not reach the bottom of the grid
      (never seen on grids from `spectral_grid_for`).

  References:
    Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning through
    dynamical isometry: theory and practice", Sec. 3 and Fig. 2.
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  lambdas = np.asarray(lambdas, dtype=np.float64)
  if lambdas.ndim != 1 or lambdas.size < 2 or np.any(lambdas <= 0) or np.any(np.diff(lambdas) <= 0):
    raise ValueError("lambdas must be a 1-d ascending grid of positive values")
  q = fixed_point_variance(act, sigma_w, sigma_b)
  law = _d2_law(act, q)
  atom_law = law.nodes.shape[0] == 0
  if atom_law and law.p == 1.0 and weights == "orthogonal":
    where = "" if act.name == "linear" else f" at q* = {q:.3g} (phi'(h)**2 constant to 1e-12)"
    raise ValueError(f"a {act.name} orthogonal network{where} has J J^T = "
                     f"(sigma_w**2 phi'(0)**2)**L I: the spectrum is one atom, not a density")
  # Solve for J J^T / chi**L (same m = M(z) at z / chi**L), whose weights have
  # sigma_w**2 mu_1 = 1: every number the solver sees is O(1) whatever chi**L.
  mean, spread = _scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  delta = _height(act, q, depth, spread, weights)
  noise = _rounding_scale(act, q, law)
  unit_sigma_w = float(sigma_w / mean**(0.5 / depth))
  gaussian = weights == "gaussian"
  with jax.enable_x64(True):
    unit_lambdas = jnp.asarray(lambdas / mean)
    # Python floats throughout: a numpy float64 among them is a different (strong) type to jit,
    # and would compile the solver a second time.
    m, residual, reached = _solve(unit_lambdas, law, float(depth), unit_sigma_w, bool(gaussian),
                                  1.0, float(1.0 + depth * spread), float(delta), float(noise))
    upper = _upper_mass_jit(m, unit_lambdas, law, float(depth), unit_sigma_w, bool(gaussian),
                            float(delta))
    m, residual, reached, upper = (np.asarray(m), np.asarray(residual), int(reached),
                                   np.asarray(upper))
  if reached < lambdas.size or not (np.all(np.isfinite(m)) and np.all(np.isfinite(residual))
                                    and np.all(np.isfinite(upper))):
    raise ValueError(
        f"the continuation did not reach lambda = {lambdas[lambdas.size - 1 - reached]:.6g} "
        f"({reached} of {lambdas.size} grid points solved) for {act.name}, sigma_w={sigma_w}, "
        f"sigma_b={sigma_b}, L={depth}, {weights}: the grid may be far wider than the spectrum")
  point_mass = 1.0 - law.p if atom_law else 0.0
  top_mass = 0.0
  if atom_law and weights == "orthogonal":
    top_mass = max(0.0, 1.0 - depth * (1.0 - law.p))
  # sigma_w**(2L) = chi**L / p**L for Bernoulli(p) D^2 (chi = sigma_w**2 p).
  top = mean / law.p**depth if top_mass > 0 else np.inf
  z = lambdas * (1.0 + 1j * delta)
  atoms = point_mass / z + (top_mass / (z - top) if top_mass > 0 else 0.0)
  density = -((1.0 + m) / z - atoms).imag / np.pi
  cdf = np.clip(1.0 - upper, 0.0, 1.0)
  # The CDF at the bottom counts the atom at 0 (smoothed: point_mass (1 - arctan(delta) / pi)),
  # and the one at the top if the grid starts above it.
  below_atoms = point_mass * (1.0 - np.arctan(delta) / np.pi)
  if top_mass > 0 and top < lambdas[0]:
    below_atoms += top_mass
  mass_below = float(max(cdf[0] - below_atoms, 0.0))
  return SpectralDensity(lambdas, np.maximum(density, 0.0), point_mass, residual, top_mass,
                         float(top), mass_below, cdf, float(delta))


def max_squared_singular_value(activation, sigma_w, sigma_b, depth, weights):
  """The right edge lambda_max = s_max**2 of the spectrum of J J^T.

  Outside the support, z(m) = M_{JJ^T}^{-1}(m) is real for real m > 0, and the edge is its
  minimum: parametrized by real x > max d (so m = M_{D^2}(x) > 0),
  z(x) = x**L m**(L-1) / ((1 + m)**(L-1) S_W(m)**L). The minimum is taken on a fine logarithmic
  grid of x - max d (a grid minimum of a smooth function: relative error <= f'' h**2 / 8 ~ 1e-5
  f'', and f'' = d**2 log z / d(log(x - max d))**2 is itself of the order of the spectrum's
  relative width, so narrow spectra get their edge to ~1e-5 of their width).
  Closed forms this reproduces (tests): Fuss-Catalan (L + 1)**(L + 1) / L**L for linear Gaussian
  networks (Pennington et al. 2017, eq. 18), and for orthogonal weights with Bernoulli(p) D^2
  at chi = 1 the large-L law e L (1 - p) / p.
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  jacobian_moments(act, sigma_w, sigma_b, depth, weights)  # raises where chi**L overflows
  q = fixed_point_variance(act, sigma_w, sigma_b)
  law = _d2_law(act, q)
  with jax.enable_x64(True):
    x = law.atom * (1.0 + jnp.geomspace(1e-12, 1e6, 4001))
    m = _m_d2_real(x, law)
    s_w = (1.0 / (1.0 + m) if weights == "gaussian" else 1.0) / sigma_w**2
    log_z = (depth * jnp.log(x) + (depth - 1) * (jnp.log(m) - jnp.log1p(m))
             - depth * jnp.log(s_w))
    return float(jnp.exp(jnp.min(log_z)))


def min_squared_singular_value(activation, sigma_w, sigma_b, depth, weights):
  """The left edge lambda_min of the support of J J^T's continuous part, or 0 where it reaches 0.

  - Orthogonal weights, smooth phi (tanh, erf): the law of d = phi'(h)**2 is taken on
    [d_low, d_max], d_low where P(|h| > H) = 1e-14 (or d = 1e-16 d_max; that tail's mass is kept,
    on a panel just above d_low), so this is the edge of the law with its 1e-14 tail cut:
    near-isometric spectra (small q*) lie in [lambda_min, lambda_max], a narrow window about
    chi**L. Below the support G, m and the subordination point x are real, m < -1 (so the L-th
    root in x is real), x in (0, d_low), and z(x) = sigma_w**(2L) x**L (m / (1 + m))**(L - 1)
    rises from 0 to the edge: lambda_min is its maximum, on a logarithmic grid of d_low - x
    that includes d_low (relative error ~f'' h**2 / 8, as for `max_squared_singular_value`).
    For L = 1 it is sigma_w**2 d_low.
  - Gaussian weights and Bernoulli D^2 (relu, hard_tanh) at L = 1: the nonzero part is
    sigma_w**2 times a Wishart matrix of aspect ratio p (Marchenko-Pastur),
    sigma_w**2 (1 - sqrt(p))**2 (relu at sigma_w**2 = 2: 0.1716).
  - Linear orthogonal networks: sigma_w**(2L) (one atom).
  - 0 otherwise: square Gaussian weights (the Marchenko-Pastur hard edge at 0, any phi), and
    Bernoulli D^2 at L >= 2 (orthogonal or Gaussian), whose continuous part reaches the atom at
    0 (checked against the density: it is not small down to 1e-6 lambda_max).
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  jacobian_moments(act, sigma_w, sigma_b, depth, weights)  # raises where chi**L overflows
  q = fixed_point_variance(act, sigma_w, sigma_b)
  law = _d2_law(act, q)
  if law.nodes.shape[0] == 0:
    if law.p == 1.0 and weights == "orthogonal":
      return float(sigma_w**(2 * depth) * law.atom**depth)
    if law.p < 1.0 and weights == "gaussian" and depth == 1:
      return float(sigma_w**2 * law.atom * (1.0 - np.sqrt(law.p))**2)
    return 0.0
  if weights == "gaussian":
    return 0.0
  d_low = float(law.lower[np.sum(law.upper > 0) - 1])
  with jax.enable_x64(True):
    # x -> 0 makes 1 + m ~ -x E[1/d]: the grid stops where 1 + m still has digits (z -> 0 there).
    x = d_low * (1.0 - jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-12, 1.0 - 1e-6, 4000)]))
    m = _m_d2_real(x, law)
    log_z = (depth * (2.0 * np.log(sigma_w) + jnp.log(x))
             + (depth - 1) * (jnp.log(-m) - jnp.log(-1.0 - m)))
    log_z = jnp.where(jnp.isfinite(m) & (m < -1.0 - 1e-10), log_z, -jnp.inf)
    if depth == 1:
      log_z = log_z.at[0].set(2.0 * np.log(sigma_w) + np.log(d_low))
    return float(jnp.exp(jnp.max(log_z)))


def spectral_grid(lambda_max, num=1000, decades=10.0):
  """Grid for the density: half logarithmic over `decades` below lambda_max, half linear.

  Kept for callers that know only lambda_max; `spectral_grid_for` resolves every support (a
  near-isometric spectrum, e.g. within 1e-3 of chi**L, falls between two points of this one).
  Ends just above lambda_max.
  """
  bottom, top = lambda_max * 10.0**-decades, lambda_max * 1.02
  grid = np.concatenate([np.geomspace(bottom, top, num - num // 2),
                         np.linspace(bottom, top, num // 2 + 2)[1:-1]])
  return np.unique(grid)


_BULK_STDS = 12.0         # spectral_grid_for: a narrow bulk's grid starts 12 standard deviations
                          # below the mean (or at lambda_min); mass_below reports the rest
_NARROW = 0.25            # ... when that is above this fraction of lambda_max


def spectral_grid_for(activation, sigma_w, sigma_b, depth, weights, num=1000, decades=10.0):
  """A grid that resolves the spectrum of this network: `num` points, ascending.

  How a grid is picked. The spectrum lies in [lambda_min, lambda_max]
  (`min_squared_singular_value`, `max_squared_singular_value`), and, apart from a tail of small
  mass, within a dozen standard deviations of its mean chi**L (`jacobian_moments`):
    - narrow bulk (that window starts above lambda_max / 4: orthogonal networks near isometry,
      small q* or few layers): half the points linear from bottom = max(lambda_min,
      mean - 12 std) less a margin to the middle of [bottom, lambda_max];
    - spread over decades (Gaussian weights, deep networks): a quarter of the points log-spaced
      from lambda_max 10**-decades to lambda_max / 8, where the density is lambda**-a-like, a
      quarter linear up to lambda_max / 2;
    and the other half clustered at the top edge: lambda = lambda_max - (lambda_max - mid) s**2
    (s uniform: a square-root edge is smooth in s), then geometric in lambda_max - lambda down
    to the solver's smoothing scale and above lambda_max (inverse square-root edges: one
    orthogonal layer, whose top edge is the law of phi'(h)**2 at its maximum).
  The grid ends 2% of the spectrum's width above lambda_max (the solver starts there), or more
  where the solver's Cauchy smoothing (relative height delta) leaves more than 1e-5 of the mass
  above that. What lies
  below the grid is reported by `jacobian_spectral_density` as `mass_below`, from the theory.
  With Monte-Carlo samples, float64 squared singular values of a product of L matrices are
  rounding noise below ~1e-10 lambda_max: keep decades <= 10 for KS distances.

  Args:
    activation, sigma_w, sigma_b, depth, weights: the network, as for the density.
    num: number of points (>= 16); the density solver compiles once per grid size.
    decades: depth of the logarithmic part below lambda_max.

  Returns:
    (num,) float64 grid.
  """
  num = int(num)
  if num < 16:
    raise ValueError(f"num must be >= 16, got {num}")
  if not decades > 0:
    raise ValueError(f"decades must be > 0, got {decades}")
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  top = max_squared_singular_value(act, sigma_w, sigma_b, depth, weights)
  mean, variance = jacobian_moments(act, sigma_w, sigma_b, depth, weights)
  if variance <= 1e-24 * mean**2:
    raise ValueError(f"the spectrum of this {weights} {act.name} network is the single atom "
                     f"chi**L = {mean:.6g}: there is no density to put a grid under")
  low = min_squared_singular_value(act, sigma_w, sigma_b, depth, weights)
  q = fixed_point_variance(act, sigma_w, sigma_b)
  _, spread = _scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  try:
    delta = _height(act, q, depth, spread, weights)
  except ValueError:
    delta = _DELTA_MIN
  soft = mean - _BULK_STDS * np.sqrt(variance)
  bulk = max(low, soft)
  # A hard lower edge (a square-root edge of the continuous part away from 0, as for Bernoulli
  # D^2 with Gaussian weights at L = 1) is clustered like the top one; a soft one (the tail of a
  # near-isometric spectrum, `soft` above lambda_min) is not.
  hard_low = low > max(soft, top * 10.0**-decades)
  n_low = (2 * num) // 5
  # Beyond an edge the density is the Cauchy tail of the solver's smoothing, delta lambda /
  # (pi r) of mass beyond a distance r: the grid reaches r = 3e4 delta lambda_max above the top
  # (1e-5 left above), and at least 2% of the spectrum's width.
  margin = 3e4 * delta * top
  if hard_low or bulk > _NARROW * top:
    width = top - bulk
    bottom = max(bulk - max(0.02 * width, 3e4 * delta * bulk), 0.5 * bulk)
    grid_top = top + max(0.02 * width, margin)
    mid = 0.5 * (bulk + top)
    if hard_low:
      lower = _edge_points(bulk, mid, bottom, delta, n_low + 1)[::-1][:-1]
    else:
      lower = np.linspace(bottom, mid, n_low, endpoint=False)
  else:
    grid_top = top + max(0.02 * top, margin)
    mid = 0.5 * top
    # Log-spaced over the decades, then linear over [mid / 4, mid], where a spectrum spread
    # over only a decade or two (shallow networks) holds much of its mass.
    n_log = n_low // 2
    lower = np.concatenate([np.geomspace(top * 10.0**-decades, 0.25 * mid, n_log, endpoint=False),
                            np.linspace(0.25 * mid, mid, n_low - n_log, endpoint=False)])
  return np.concatenate([lower, _edge_points(top, mid, grid_top, delta, num - n_low)])


def _edge_points(edge, inner, beyond, delta, num):
  """`num` points from `inner` through the edge `edge` to `beyond`, clustered at the edge.

  Ordered from inner to beyond (descending where the edge is a lower one); `inner` itself is the
  first point. With t = |edge - lambda| and W = |edge - inner|, the points inside are graded,
  t = W u**4 with u uniform from 1 down to (t_min / W)**(1/4), t_min = delta |edge| / 10 (the
  solver's smoothing scale): the trapezoid rule on such a mesh integrates a density ~ t**beta
  near the edge with O(step**2) error for beta >= -1/2 (graded meshes, exponent >= 2 / (1 +
  beta)), which covers square-root edges and the inverse square root at the top of one
  orthogonal layer (the law of phi'(h)**2 at its maximum). Beyond the edge only the smoothing's
  tail is left (~sqrt(delta) of the mass at an inverse square-root edge, delta**1.5 at a
  square-root one): a sixth of the points, geometric in t up to |beyond - edge|.
  """
  n_beyond = max(4, num // 6)
  n_inside = num - n_beyond
  sign = 1.0 if edge > inner else -1.0
  width = abs(edge - inner)
  near = max(delta * abs(edge) / 10.0, 1e-15 * abs(edge))
  u = np.linspace(1.0, min((near / width)**0.25, 0.5), n_inside)
  out = np.geomspace(near, max(abs(beyond - edge), 2.0 * near), n_beyond)
  return np.concatenate([edge - sign * width * u**4, edge + sign * out])


def cumulative_distribution(result: SpectralDensity) -> np.ndarray:
  """CDF of the squared singular values at `result.lambdas`, atoms included.

  From `result.cdf` (the theory's CDF at each point, `jacobian_spectral_density`). For a
  SpectralDensity built without it: mass_below + point_mass plus the trapezoid rule in
  log lambda from the bottom, or, without mass_below either, 1 - the integral from the top.
  """
  if result.cdf is not None:
    return np.asarray(result.cdf)
  from scipy.integrate import cumulative_trapezoid
  log_lam = np.log(result.lambdas)
  weight = result.density * result.lambdas
  if result.mass_below is not None:
    below = cumulative_trapezoid(weight, log_lam, initial=0.0)
    cdf = result.point_mass + result.mass_below + below
    return np.clip(cdf + result.top_mass * (result.lambdas >= result.top), 0.0, 1.0)
  above = cumulative_trapezoid(weight[::-1], -log_lam[::-1], initial=0.0)
  above = above[::-1] + result.top_mass * (result.lambdas < result.top)
  return np.clip(1.0 - above, 0.0, 1.0)


def ks_distance(result: SpectralDensity, samples) -> float:
  """Kolmogorov-Smirnov distance sup |F_theory - F_empirical| over the grid.

  Args:
    result: the predicted density on a grid (`lambdas` ascending).
    samples: empirical squared singular values (any shape).

  Only lambdas on the grid count; choose the grid's bottom where float64 eigenvalues are still
  meaningful (~1e-10 lambda_max, shared/THEORY.md).
  """
  samples = np.sort(np.ravel(np.asarray(samples)))
  empirical = np.searchsorted(samples, result.lambdas, side="right") / samples.size
  return float(np.max(np.abs(cumulative_distribution(result) - empirical)))
