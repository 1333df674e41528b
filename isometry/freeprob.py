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
  - M_{D^2}(x) = E[d / (x - d)], d = phi'(h)**2, h ~ N(0, q*), is needed for x close to the
    support of d, where Gauss-Hermite quadrature fails. For smooth phi it is computed by product
    integration over h: on each of `NUM_PANELS` panels d(h) and the Gaussian weight times d are
    linear, and the panel integral of (a + b u) / (c - e u) is done in closed form with a stable
    log1p (jax's complex log1p keeps the real part; numpy's does not). Working in h also removes
    the square-root singularity that the law of d has at its top (h = 0). For relu and hard_tanh,
    D^2 is Bernoulli(p) and M_{D^2}(x) = p / (x - 1) exactly; linear is p = 1.
  - Root selection: the physical root is followed from far above the real axis, where
    m ~ m_1 / z + m_2 / z**2, down to z = lambda_top (1 + i delta0); then marched down the grid
    at that relative height (each lambda starts from its neighbour's root); then each lambda
    descends vertically to z = lambda (1 + i delta_min). Newton steps are damped until |F|
    decreases and Im m <= 0, Im G <= 0 hold.
  - w**(1/L): the physical w lies in the lower half plane; the branch cut of the root is put on
    the positive imaginary axis, so the argument runs over (-3 pi / 2, pi / 2].
  - The relative height delta_min = 1e-6 smooths the density by a Cauchy kernel of relative
    width 1e-6: invisible on a log grid, and it makes the grid scale-free, which matters for
    Gaussian weights at large L, whose density spreads over many decades near 0.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isometry import meanfield
from isometry.activations import Activation, get_activation

WEIGHTS = ("orthogonal", "gaussian")
NUM_PANELS = 512         # product-integration panels over h in [0, 8 sqrt(q*)]: CDF error < 3e-4
_HALF_WIDTH = 8.0        # Gaussian mass beyond 8 standard deviations: 1.2e-15
_DELTA0 = 0.1            # relative height of the march along the grid
_DELTA_MIN = 1e-6        # relative height of the final density
_LEVELS = 16             # vertical continuation levels from delta0 to delta_min
_NEWTON = 3              # Newton iterations per level / grid point
_POLISH = 12             # further Newton iterations at the final height (narrow spectra need them)
_MAX_LOG10_SCALE = 250   # |log10 chi**L| beyond this leaves no float64 room for the spread
_BACKTRACK = 8           # step halvings before a Newton step is refused


class SpectralDensity(NamedTuple):
  """Predicted law of the squared singular values of J.

  Attributes:
    lambdas: (K,) grid of squared singular values, ascending, > 0.
    density: (K,) density of the continuous part at `lambdas`.
    point_mass: mass of the atom at lambda = 0 (1 - p for relu and hard_tanh, whose phi'
      vanishes with probability 1 - p; 0 otherwise). The continuous part integrates to
      1 - point_mass.
    residual: (K,) |F(m)| at the returned root: a solver diagnostic, ~1e-15 when converged.
    top_mass: mass of the atom at lambda = `top` = sigma_w**(2L): orthogonal weights with
      Bernoulli(p) D^2 and L (1 - p) < 1 leave a subspace of dimension >= N (1 - L (1 - p)) on
      which every layer is sigma_w times an isometry (the pole of G at z(m -> inf) = sigma_w**(2L)
      has residue 1 - L (1 - p)); 0 otherwise. The continuous part integrates to
      1 - point_mass - top_mass.
  """
  lambdas: np.ndarray
  density: np.ndarray
  point_mass: float
  residual: np.ndarray
  top_mass: float = 0.0
  top: float = np.inf


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
  q = fixed_point_variance(act, sigma_w, sigma_b)
  mu1, mu2 = meanfield.mu(act, q, 1), meanfield.mu(act, q, 2)
  log10_mean = depth * np.log10(sigma_w**2 * mu1)
  if abs(log10_mean) > _MAX_LOG10_SCALE:
    raise ValueError(
        f"chi**L = 10**{log10_mean:.0f} at chi = {sigma_w**2 * mu1:.4g}, L = {depth}: the spectrum's "
        f"scale is outside what float64 can represent with its spread; the theory applies, but "
        f"not in these units (choose a smaller depth or chi closer to 1)")
  mean = float(10.0**log10_mean)
  variance = float(depth * mean**2 * (mu2 / mu1**2 - 1.0 - _w_shift(weights)))
  return mean, variance


# ---------------------------------------------------------------------------------------------
# M-transform of D^2 = phi'(h)^2.


class _D2Law(NamedTuple):
  """The law of d = phi'(h)**2, h ~ N(0, q*), as product-integration panels or a Bernoulli.

  For a Bernoulli law (relu, hard_tanh, linear) `p` is P(d = 1) and the panel arrays are empty;
  otherwise `p` is nan and d(h), 2 N(h; 0, q*) are tabulated at the panel ends h_k >= 0.
  """
  p: float
  h: np.ndarray
  d: np.ndarray
  weight: np.ndarray


def _d2_law(act: Activation, q: float) -> _D2Law:
  empty = np.zeros(0)
  if act.name == "linear":
    return _D2Law(1.0, empty, empty, empty)
  if act.bernoulli_derivative:
    return _D2Law(float(meanfield.mu(act, q, 1)), empty, empty, empty)
  with jax.enable_x64(True):
    h = np.linspace(0.0, _HALF_WIDTH * np.sqrt(q), NUM_PANELS + 1)
    d = np.asarray(jnp.square(act.derivative(jnp.asarray(h))))
  weight = 2.0 * np.exp(-h**2 / (2.0 * q)) / np.sqrt(2.0 * np.pi * q)
  return _D2Law(np.nan, h, d, weight)


def _log1p_ratios(eps):
  """ell = -log1p(-eps) / eps and psi = (ell - 1) / eps, with series where eps is small."""
  small = jnp.abs(eps) < 1e-3
  safe = jnp.where(small, 0.5, eps)
  ell = -jnp.log1p(-safe) / safe
  psi = (ell - 1.0) / safe
  ell_series = 1.0 + eps / 2 + eps**2 / 3 + eps**3 / 4 + eps**4 / 5
  psi_series = 0.5 + eps / 3 + eps**2 / 4 + eps**3 / 5 + eps**4 / 6
  return jnp.where(small, ell_series, ell), jnp.where(small, psi_series, psi)


def _m_d2(x, law: _D2Law):
  """M_{D^2}(x) = E[d / (x - d)] for complex (or real, outside the support) x."""
  if law.h.size == 0:
    return law.p / (x - 1.0)
  h, d, weight = law.h, law.d, law.weight
  width = h[1:] - h[:-1]
  g = weight * d
  g_slope = (g[1:] - g[:-1]) / width
  d_slope = (d[1:] - d[:-1]) / width
  # Integral over u in [0, width] of (g_k + g_slope u) / (a - d_slope u), a = x - d_k, equals
  # (width / a) (g_k ell(eps) + g_slope width psi(eps)) with eps = d_slope width / a.
  a = x - d[:-1]
  ell, psi = _log1p_ratios(d_slope * width / a)
  return jnp.sum(width / a * (g[:-1] * ell + g_slope * width * psi))


# ---------------------------------------------------------------------------------------------
# The scalar equation and its continuation.


def _s_w(m, sigma_w, gaussian):
  return jnp.where(gaussian, 1.0 / (1.0 + m), 1.0) / sigma_w**2


def _x_of(m, z, depth, sigma_w, gaussian):
  """x = M_{D^2}^{-1}(m) implied by the S-transform product, root cut on the positive i axis."""
  w = z * m / (1.0 + m)
  angle = jnp.angle(w)
  angle = jnp.where(angle > jnp.pi / 2, angle - 2 * jnp.pi, angle)
  root = jnp.exp((jnp.log(jnp.abs(w)) + 1j * angle) / depth)
  return (1.0 + m) / m * _s_w(m, sigma_w, gaussian) * root


@jax.jit
def _solve(lambdas, law, depth, sigma_w, gaussian, m1, m2):

  def residual(m, z):
    return _m_d2(_x_of(m, z, depth, sigma_w, gaussian), law) - m

  d_residual = jax.grad(residual, holomorphic=True)

  def newton(m, z, iterations=_NEWTON):
    def step(m, _):
      f = residual(m, z)
      direction = -f / d_residual(m, z)

      def rejected(state):
        _, candidate, halvings = state
        worse = jnp.abs(residual(candidate, z)) >= jnp.abs(f)
        unphysical = (candidate.imag > 0) | (((1.0 + candidate) / z).imag > 0)
        return (worse | unphysical) & (halvings < _BACKTRACK)

      def halve(state):
        scale, _, halvings = state
        return scale / 2, m + scale / 2 * direction, halvings + 1

      _, candidate, halvings = jax.lax.while_loop(
          rejected, halve, (1.0, m + direction, 0))
      return jnp.where(halvings < _BACKTRACK, candidate, m), None

    return jax.lax.scan(step, m, None, length=iterations)[0]

  def descend(lam, m, height_from, height_to, levels):
    def level(m, height):
      return newton(m, lam + 1j * height), None
    return jax.lax.scan(level, m, jnp.geomspace(height_from, height_to, levels))[0]

  top = lambdas[-1]
  far = top + 100j * top
  m_top = descend(top, m1 / far + m2 / far**2, 100.0 * top, _DELTA0 * top, 30)

  def march(m, lam):
    m = newton(m, lam * (1.0 + 1j * _DELTA0))
    return m, m

  m_tube = jax.lax.scan(march, m_top, lambdas[::-1])[1][::-1]

  def finish(lam, m):
    m = descend(lam, m, _DELTA0 * lam, _DELTA_MIN * lam, _LEVELS)
    z = lam * (1.0 + 1j * _DELTA_MIN)
    m = newton(m, z, _POLISH)
    return -((1.0 + m) / z).imag / jnp.pi, jnp.abs(residual(m, z))

  return jax.vmap(finish)(lambdas, m_tube)


def jacobian_spectral_density(activation, sigma_w, sigma_b, depth, weights, lambdas):
  """Density of the squared singular values of J on a grid.

  Args:
    activation: name or `Activation`.
    sigma_w, sigma_b: weight and bias scales; inputs at q*(sigma_w, sigma_b).
    depth: L >= 1.
    weights: "orthogonal" or "gaussian".
    lambdas: (K,) positive grid, ascending; its top should lie at or above the spectrum's edge
      (see `max_squared_singular_value`), since the solver starts there.

  Returns:
    `SpectralDensity` with the density of the continuous part and the atom at 0 reported
    separately.

  Raises:
    ValueError: bad arguments, or a linear network with orthogonal weights, whose spectrum is
      the single atom sigma_w**(2L) (no density).

  References:
    Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in deep learning through
    dynamical isometry: theory and practice", Sec. 3 and Fig. 2.
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  if act.name == "linear" and weights == "orthogonal":
    raise ValueError("a linear orthogonal network has J J^T = sigma_w**(2L) I: the spectrum is "
                     "one atom, not a density")
  lambdas = np.asarray(lambdas, dtype=np.float64)
  if lambdas.ndim != 1 or lambdas.size < 2 or np.any(lambdas <= 0) or np.any(np.diff(lambdas) <= 0):
    raise ValueError("lambdas must be a 1-d ascending grid of positive values")
  q = fixed_point_variance(act, sigma_w, sigma_b)
  law = _d2_law(act, q)
  mean, variance = jacobian_moments(act, sigma_w, sigma_b, depth, weights)
  with jax.enable_x64(True):
    density, residual = _solve(
        jnp.asarray(lambdas), law, float(depth), float(sigma_w), weights == "gaussian", mean,
        variance + mean**2)
    density, residual = np.asarray(density), np.asarray(residual)
  point_mass = 1.0 - law.p if law.h.size == 0 else 0.0
  top_mass = 0.0
  if law.h.size == 0 and weights == "orthogonal":
    top_mass = max(0.0, 1.0 - depth * (1.0 - law.p))
  return SpectralDensity(lambdas, np.maximum(density, 0.0), point_mass, residual, top_mass,
                         float(sigma_w)**(2 * depth))


def max_squared_singular_value(activation, sigma_w, sigma_b, depth, weights):
  """The right edge lambda_max = s_max**2 of the spectrum of J J^T.

  Outside the support, z(m) = M_{JJ^T}^{-1}(m) is real for real m > 0, and the edge is its
  minimum: parametrized by real x > max d (so m = M_{D^2}(x) > 0),
  z(x) = x**L m**(L-1) / ((1 + m)**(L-1) S_W(m)**L). The minimum is taken on a fine logarithmic
  grid of x - max d (a grid minimum of a smooth function: relative error <= f'' h**2 / 8 ~ 1e-5).
  Closed forms this reproduces (tests): Fuss-Catalan (L + 1)**(L + 1) / L**L for linear Gaussian
  networks (Pennington et al. 2017, eq. 18), and for orthogonal weights with Bernoulli(p) D^2
  at chi = 1 the large-L law e L (1 - p) / p.
  """
  act = _check(activation, sigma_w, sigma_b, depth, weights)
  jacobian_moments(act, sigma_w, sigma_b, depth, weights)  # raises where chi**L overflows
  q = fixed_point_variance(act, sigma_w, sigma_b)
  law = _d2_law(act, q)
  d_max = 1.0 if law.h.size == 0 else float(law.d.max())
  with jax.enable_x64(True):
    x = d_max * (1.0 + jnp.geomspace(1e-12, 1e6, 4001))
    m = jax.vmap(lambda xi: _m_d2(xi, law))(x)
    s_w = _s_w(m, sigma_w, weights == "gaussian")
    log_z = (depth * jnp.log(x) + (depth - 1) * (jnp.log(m) - jnp.log1p(m))
             - depth * jnp.log(s_w))
    return float(jnp.exp(jnp.min(log_z)))


def spectral_grid(lambda_max, num=1000, decades=10.0):
  """Grid for the density: half logarithmic over `decades` below lambda_max, half linear.

  The logarithmic half resolves spectra spread over many decades (deep Gaussian networks); the
  linear half resolves narrow ones (near-isometric orthogonal networks at small q*, whose whole
  bulk can fit between two points of a 10-decade log grid). Ends just above lambda_max.
  """
  bottom, top = lambda_max * 10.0**-decades, lambda_max * 1.02
  grid = np.concatenate([np.geomspace(bottom, top, num - num // 2),
                         np.linspace(bottom, top, num // 2 + 2)[1:-1]])
  return np.unique(grid)


def cumulative_distribution(result: SpectralDensity) -> np.ndarray:
  """CDF of the squared singular values at `result.lambdas`, atom at zero included.

  F(lambda) = 1 - int_lambda^top rho: the mass below the grid's bottom (which for Gaussian
  weights at large L is most of it, spread over hundreds of decades) is what the continuous part
  on the grid and the atom do not account for. Trapezoid rule in log lambda.
  """
  from scipy.integrate import cumulative_trapezoid
  log_lam = np.log(result.lambdas)
  above = cumulative_trapezoid((result.density * result.lambdas)[::-1], -log_lam[::-1], initial=0.0)
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
