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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from isometry.theory import meanfield
from isometry.theory.activations import Activation, get_activation
from isometry.theory import continuation
from isometry.theory import derivative_law


WEIGHTS = ("orthogonal", "gaussian")


MAX_LOG10_SCALE = 150   # |log10 chi**L| beyond this leaves no float64 room for the spread


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
  height: float = continuation.DELTA


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


def law_variance(act: Activation, sigma_w, sigma_b) -> float:
  """The variance q of h whose law of D^2 = phi'(h)**2 the spectrum needs: q*; for a positively
  homogeneous phi (relu, linear) that law does not depend on q (and q* may be infinite, or any q
  on their critical line), so 1."""
  if act.homogeneous:
    return 1.0
  return float(meanfield.q_star(act, sigma_w, sigma_b))


def w_shift(weights: str) -> float:
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
  mean, spread = scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  variance = depth * mean**2 * spread
  if not np.isfinite(variance):
    raise ValueError(
        f"the variance L chi**(2L) (mu_2 / mu_1**2 - 1 - s_1) = 10**"
        f"{np.log10(depth * spread) + 2 * np.log10(mean):.0f} overflows float64 at L = {depth}")
  return float(mean), float(variance)


def scale_and_spread(act: Activation, sigma_w, sigma_b, depth, weights):
  """chi**L and mu_2 / mu_1**2 - 1 - s_1; ValueError where chi**L leaves float64's room.

  The density solver works in units of chi**L (`_solve` sees chi = 1), so only the scale itself
  must be representable; MAX_LOG10_SCALE also leaves room for the variance and the grid.
  """
  q = law_variance(act, sigma_w, sigma_b)
  mu1, mu2 = float(meanfield.mu(act, q, 1)), float(meanfield.mu(act, q, 2))
  chi = sigma_w**2 * mu1
  log10_mean = depth * np.log10(chi) if chi > 0 else -np.inf
  if not abs(log10_mean) <= MAX_LOG10_SCALE:
    raise ValueError(
        f"chi**L = 10**{log10_mean:.0f} at chi = {chi:.4g}, L = {depth}: the spectrum's "
        f"scale is outside what float64 can represent with its spread; the theory applies, but "
        f"not in these units (choose a smaller depth or chi closer to 1)")
  # mu_2 >= mu_1**2 (Jensen); rounding leaves -1e-16 where d is an atom (q* = 0).
  return np.float64(10.0)**log10_mean, max(mu2 / mu1**2 - 1.0, 0.0) - w_shift(weights)


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
  q = law_variance(act, sigma_w, sigma_b)
  law = derivative_law.d2_law(act, q)
  atom_law = law.nodes.shape[0] == 0
  if atom_law and law.p == 1.0 and weights == "orthogonal":
    where = "" if act.name == "linear" else f" at q* = {q:.3g} (phi'(h)**2 constant to 1e-12)"
    raise ValueError(f"a {act.name} orthogonal network{where} has J J^T = "
                     f"(sigma_w**2 phi'(0)**2)**L I: the spectrum is one atom, not a density")
  # Solve for J J^T / chi**L (same m = M(z) at z / chi**L), whose weights have
  # sigma_w**2 mu_1 = 1: every number the solver sees is O(1) whatever chi**L.
  mean, spread = scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  delta = continuation.height(act, q, depth, spread, weights)
  noise = continuation.rounding_scale(act, q, law)
  unit_sigma_w = float(sigma_w / mean**(0.5 / depth))
  gaussian = weights == "gaussian"
  with jax.enable_x64(True):
    unit_lambdas = jnp.asarray(lambdas / mean)
    # Python floats throughout: a numpy float64 among them is a different (strong) type to jit,
    # and would compile the solver a second time.
    m, residual, reached = continuation.solve(unit_lambdas, law, float(depth), unit_sigma_w,
                                              bool(gaussian), 1.0, float(1.0 + depth * spread),
                                              float(delta), float(noise))
    upper = continuation.upper_mass(m, unit_lambdas, law, float(depth), unit_sigma_w,
                                    bool(gaussian), float(delta))
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
  q = law_variance(act, sigma_w, sigma_b)
  law = derivative_law.d2_law(act, q)
  with jax.enable_x64(True):
    x = law.atom * (1.0 + jnp.geomspace(1e-12, 1e6, 4001))
    m = derivative_law.m_d2_real(x, law)
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
  q = law_variance(act, sigma_w, sigma_b)
  law = derivative_law.d2_law(act, q)
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
    m = derivative_law.m_d2_real(x, law)
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
  q = law_variance(act, sigma_w, sigma_b)
  _, spread = scale_and_spread(act, sigma_w, sigma_b, depth, weights)
  try:
    delta = continuation.height(act, q, depth, spread, weights)
  except ValueError:
    delta = continuation.DELTA_MIN
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
