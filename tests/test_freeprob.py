"""Free-probability Jacobian spectra against closed forms and Monte-Carlo.

Closed forms: the moments chi**L and L chi**(2L) (mu_2 / mu_1**2 - 1 - s_1); the Fuss-Catalan law of
linear Gaussian networks (Marchenko-Pastur at L = 1) and its edge; the edges of Bernoulli D**2
(relu, hard_tanh) from the explicit inverse M-transform, and their large-L laws with the 1/L term;
mass, mean and second moment of every density by Simpson's rule on an edge-clustered grid. With
orthogonal weights and Bernoulli D**2 at L (1 - p) < 1 the law has an atom at sigma_w**(2L).
Monte-Carlo: KS distances to the squared singular values of two width-500 networks, the fraction
of zero singular values (relu, hard_tanh) and of those at sigma_w**(2L).
The solver's parts: M_{D^2} against adaptive quadrature off the support and the Plemelj formula on
it (panel ends included); one orthogonal layer, whose spectrum is the law of sigma_w**2 phi'**2 in
closed form; a march through the Cauchy peak of an atom against one that stops below it; a
spectrum at chi**L = 1e-140 against Fuss-Catalan and against the same law in units of chi**L.

Cost: the density solver compiles once per grid shape and per law kind (Bernoulli or product
integration), so every density here is solved on a GRID_SIZE-point grid, and densities shared by
several tests are cached.
"""
import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from isometry.theory import derivative_law
from isometry.theory import freeprob as fp
from isometry.theory import jacobian
from isometry.theory import meanfield as mf
from isometry.theory.activations import get_activation

GRID_SIZE = 300
# Integration grid (see `_integration_grid`): three pieces sharing their end points; Simpson's rule
# on each (scipy's even-N variant on the edge piece).
_PIECES = (61, 141, 100)      # [1e-20, 1e-4], [1e-4, 1/2] lambda_max geometric; edge-clustered
_BOTTOM, _SPLIT, _HALF = 1e-20, 1e-4, 0.5
_MC_WIDTH = 500
_DELTA_MIN = 1e-6             # freeprob's relative height of the final density
# max_squared_singular_value minimizes z on a log grid of x - max d with 4001 points over 18
# decades: step h = ln(1e18) / 4000 in log m. The grid minimum of log z overestimates the true one
# by at most f'' h**2 / 8, f'' = d**2 log z / d(log m)**2 at the minimum.
_EDGE_LOG_STEP = np.log(1e18) / 4000


def _critical(activation, q):
  return tuple(float(v) for v in mf.critical_point(activation, q))


TANH_1 = ("tanh",) + _critical("tanh", 1.0)
TANH_64 = ("tanh",) + _critical("tanh", 1 / 64)
RELU = ("relu", np.sqrt(2.0), 0.0)
LINEAR = ("linear", 1.0, 0.0)
HARD_TANH_Q = 0.5
HARD_TANH = ("hard_tanh",) + _critical("hard_tanh", HARD_TANH_Q)
HARD_TANH_P = special.erf(1 / np.sqrt(2 * HARD_TANH_Q))   # P(|h| < 1), h ~ N(0, q*)


# --------------------------------------------------------------------------- helpers

def _integration_grid(lambda_max):
  """GRID_SIZE points: geometric on [1e-20, 1e-4] and [1e-4, 1/2] lambda_max (h = 0.61 and 0.061 in
  log lambda), then lambda_max (1 - s**2 / 2) with s uniform down to 0 (h = 1/99), so that a
  square-root edge sqrt(lambda_max - lambda) is linear in s."""
  n_bottom, n_middle, n_edge = _PIECES
  bottom = np.geomspace(_BOTTOM * lambda_max, _SPLIT * lambda_max, n_bottom)
  middle = np.geomspace(_SPLIT * lambda_max, _HALF * lambda_max, n_middle)[1:]
  s = np.linspace(1.0, 0.0, n_edge)[1:]
  grid = np.concatenate([bottom, middle, lambda_max * (1.0 - s**2 / 2)])
  assert grid.size == GRID_SIZE
  return grid


def _moment(result, k):
  """int lambda**k rho over the integration grid: Simpson's rule in log lambda on the geometric
  pieces and in s on the edge piece, where the integrands are smooth (O(h**4) errors)."""
  lam, rho = result.lambdas, result.density
  n_bottom, n_middle, _ = _PIECES
  total = 0.0
  for piece in (slice(0, n_bottom), slice(n_bottom - 1, n_bottom + n_middle - 1)):
    total += integrate.simpson(rho[piece] * lam[piece]**(k + 1), x=np.log(lam[piece]))
  edge = slice(n_bottom + n_middle - 2, None)
  top = lam[-1]
  s = np.sqrt(np.clip(2.0 * (1.0 - lam[edge] / top), 0.0, None))
  return total + integrate.simpson(rho[edge] * lam[edge]**k * top * s, x=-s)


def _tail(result):
  """Mass below the grid, extrapolating rho ~ lambda**(alpha - 1) from the bottom points.

  With Gaussian weights the density diverges at 0 (as lambda**(-L/(L+1)) for linear networks),
  so a grid starting at 1e-20 lambda_max still misses some mass: lambda_0 rho_0 / alpha. (An
  independent estimate of what `mass_below` reports from the theory.)
  """
  lam = result.lambdas[:5]
  f = lam * result.density[:5]
  if np.any(f <= 0):
    return 0.0
  alpha = np.log(f[-1] / f[0]) / np.log(lam[-1] / lam[0])
  return f[0] / alpha if alpha > 0 else 0.0


_SOLVED = {}


def _density(activation, sigma_w, sigma_b, depth, weights):
  """The density on the integration grid, solved once per case and shared between tests."""
  args = (activation, sigma_w, sigma_b, depth, weights)
  if args not in _SOLVED:
    lambda_max = fp.max_squared_singular_value(*args)
    _SOLVED[args] = fp.jacobian_spectral_density(*args, _integration_grid(lambda_max))
  return _SOLVED[args]


def _marchenko_pastur(x):
  """Density of W W^T, W N x N Gaussian with variance 1 / N: sqrt((4 - x) x) / (2 pi x)."""
  return np.sqrt(np.clip((4.0 - x) * x, 0.0, None)) / (2 * np.pi * x)


def _marchenko_pastur_cdf(x):
  # x = 4 sin(t)**2 turns the density into (4 / pi) cos(t)**2 dt.
  t = np.arcsin(np.sqrt(np.clip(x, 0.0, 4.0)) / 2)
  return 2 / np.pi * (t + np.sin(t) * np.cos(t))


def _fuss_catalan(x, depth):
  """Density of the Fuss-Catalan law with s = L + 1 (linear Gaussian networks of depth L).

  Parametrization (Haagerup & Moller 2012; Neuschel 2014): for 0 < phi < pi / s,
  x = sin(s phi)**s / (sin(phi) sin((s - 1) phi)**(s - 1)), running from s**s / (s - 1)**(s - 1)
  down to 0, and rho = sin(phi)**2 sin((s - 1) phi)**(s - 2) / (pi sin(s phi)**(s - 1)). Written in
  eta = pi / s - phi (x ~ (s eta / sin(pi / s))**s near 0) to keep digits at tiny x; eta(x) by
  bisection in log eta (100 halvings of [1e-40, pi / s]: eta to 1e-12 relative).
  """
  s = depth + 1
  a = np.pi / s

  def parts(eta):
    return np.sin(s * eta), np.sin(a - eta), np.sin(a + (s - 1) * eta)

  def x_of(eta):
    top, first, last = parts(eta)
    return top**s / (first * last**(s - 1))

  lo, hi = np.full_like(x, np.log(1e-40)), np.full_like(x, np.log(a))
  for _ in range(100):
    mid = (lo + hi) / 2
    below = x_of(np.exp(mid)) < x
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  top, first, last = parts(np.exp((lo + hi) / 2))
  return first**2 * last**(s - 2) / (np.pi * top**(s - 1))


def _expected_max_of_normals(n):
  """E[max of n i.i.d. N(0, 1)] by quadrature of n z phi(z) Phi(z)**(n-1)."""
  return integrate.quad(lambda z: n * z * stats.norm.pdf(z) * stats.norm.cdf(z)**(n - 1),
                        -12, 12)[0]


# --------------------------------------------------------------------------- moments

@pytest.mark.parametrize("depth", [1, 3, 7])
def test_moments_closed_forms(depth):
  L = depth
  p = HARD_TANH_P
  cases = [
      # Fuss-Catalan: m_1 = 1, m_2 = L + 1.
      (LINEAR + (L, "gaussian"), 1.0, float(L)),
      (LINEAR + (L, "orthogonal"), 1.0, 0.0),
      # Off the critical line the spectrum scales by sigma_w**(2L) (q* = 0.09 / 0.19 here).
      (("linear", 0.9, 0.3, L, "gaussian"), 0.81**L, L * 0.81**(2 * L)),
      (("linear", 0.9, 0.3, L, "orthogonal"), 0.81**L, 0.0),
      # Bernoulli(p) D**2 at chi = 1: var = L (1/p - 1 - s_1).
      (RELU + (L, "orthogonal"), 1.0, L * (1 / 0.5 - 1)),
      (RELU + (L, "gaussian"), 1.0, L * (1 / 0.5 - 1 + 1)),
      (HARD_TANH + (L, "orthogonal"), 1.0, L * (1 / p - 1)),
      (HARD_TANH + (L, "gaussian"), 1.0, L * (1 / p)),
  ]
  for args, mean, variance in cases:
    got_mean, got_variance = fp.jacobian_moments(*args)
    # Closed forms in float64: a few roundings per layer, and q* / chi from meanfield to ~1e-13.
    np.testing.assert_allclose(got_mean, mean, rtol=1e-11, err_msg=str(args))
    np.testing.assert_allclose(got_variance, variance, rtol=1e-11, atol=1e-12, err_msg=str(args))


def _scipy_gauss(f, q):
  s = np.sqrt(q)
  return integrate.quad(lambda h: f(h) * stats.norm.pdf(h, scale=s), -12 * s, 12 * s,
                        epsabs=1e-15, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize("sigma_w,sigma_b", [TANH_1[1:], (1.3, 0.3)])
@pytest.mark.parametrize("weights", ["orthogonal", "gaussian"])
def test_tanh_moments_against_quadrature(sigma_w, sigma_b, weights):
  # Independent of meanfield: q* by brentq on scipy quadrature, then mu_k = E[tanh'(h)**(2k)].
  depth = 4
  q = optimize.brentq(lambda q: sigma_w**2 * _scipy_gauss(lambda h: np.tanh(h)**2, q)
                      + sigma_b**2 - q, 1e-6, 10.0, xtol=1e-15, rtol=1e-14)
  mu1 = _scipy_gauss(lambda h: (1 - np.tanh(h)**2)**2, q)
  mu2 = _scipy_gauss(lambda h: (1 - np.tanh(h)**2)**4, q)
  chi = sigma_w**2 * mu1
  s1 = 0.0 if weights == "orthogonal" else -1.0
  mean, variance = fp.jacobian_moments("tanh", sigma_w, sigma_b, depth, weights)
  # quad to ~1e-13 relative, q* to 1e-14; the L-th power multiplies relative errors by L = 4.
  np.testing.assert_allclose(mean, chi**depth, rtol=1e-10)
  np.testing.assert_allclose(variance, depth * chi**(2 * depth) * (mu2 / mu1**2 - 1 - s1),
                             rtol=1e-10)


# --------------------------------------------------------------------------- edges

@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_edge_fuss_catalan(depth):
  L = depth
  exact = (L + 1)**(L + 1) / L**L
  got = fp.max_squared_singular_value(*LINEAR, L, "gaussian")
  # log z = (L + 1) log x - L log(x - 1) with x - 1 = e**u has d2/du2 = L / (L + 1) < 1 at the
  # minimum, so the grid minimum is above the true one by at most h**2 / 8 = 1.3e-5 (relative).
  bound = _EDGE_LOG_STEP**2 / 8
  assert -1e-14 <= got / exact - 1 <= bound, (got, exact)


def _bernoulli_edge(sigma_w, p, depth, weights):
  """Exact edge and the curvature f'' of log z in log m there (for the grid tolerance).

  Orthogonal: z(m) = sigma_w**(2L) (m + p)**L / (m (1 + m)**(L - 1)), minimized at
  m* = p / (L (1 - p) - 1) when L (1 - p) > 1; otherwise z decreases to its limit sigma_w**(2L) as
  m -> inf. Gaussian: z(m) = sigma_w**(2L) (1 + m) (m + p)**L / m, minimized at the positive root
  of L m**2 + (L - 1) m - p = 0. Both from M^{-1}(m) = (1 + m) / (m S(m)) with
  S = ((1 + m) / (m + p))**L S_W**L.
  """
  L = depth
  if weights == "orthogonal":
    if L * (1 - p) <= 1:
      return sigma_w**(2 * L), 0.0
    m = p / (L * (1 - p) - 1)
    z = sigma_w**(2 * L) * (m + p)**L / (m * (1 + m)**(L - 1))
    curvature = m * (L * p / (m + p)**2 - (L - 1) / (1 + m)**2)
  else:
    m = (-(L - 1) + np.sqrt((L - 1)**2 + 4 * L * p)) / (2 * L)
    z = sigma_w**(2 * L) * (1 + m) * (m + p)**L / m
    curvature = m * (L * p / (m + p)**2 + 1 / (1 + m)**2)
  return z, curvature


@pytest.mark.parametrize("weights", ["orthogonal", "gaussian"])
@pytest.mark.parametrize("args,p", [(RELU, 0.5), (HARD_TANH, HARD_TANH_P)])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 8, 32])
def test_edge_bernoulli(args, p, depth, weights):
  exact, curvature = _bernoulli_edge(args[1], p, depth, weights)
  got = fp.max_squared_singular_value(*args, depth, weights)
  # Grid minimum of a smooth function: one-sided, at most f'' h**2 / 8 above. Where the infimum
  # is the limit m -> inf (L (1 - p) <= 1), the grid stops at m = p 1e12, where z - sigma_w**(2L)
  # = O(1e-12) relative.
  bound = max(curvature * _EDGE_LOG_STEP**2 / 8, 1e-11)
  assert -1e-12 <= got / exact - 1 <= bound, (got, exact, bound)


@pytest.mark.parametrize("args,p", [(RELU, 0.5), (HARD_TANH, HARD_TANH_P)])
@pytest.mark.parametrize("depth", [100, 1000])
def test_edge_large_depth_laws(args, p, depth):
  # At chi = sigma_w**2 p = 1, expanding log z(m*) in 1/L (m* ~ p / (L (1 - p)) orthogonal,
  # ~ p / L Gaussian) gives
  #   orthogonal: lambda_max = e L (1 - p) / p (1 - 1 / (2 L) + O(1/L**2)),
  #   Gaussian:   lambda_max = e L / p (1 + (p - 1/2) / L + O(1/L**2)).
  # Allowed: 1/L**2 for the next order plus the grid-minimum error (<= 1.3e-5, see above).
  L = depth
  for weights, law, correction in (("orthogonal", np.e * L * (1 - p) / p, -0.5 / L),
                                    ("gaussian", np.e * L / p, (p - 0.5) / L)):
    got = fp.max_squared_singular_value(*args, L, weights)
    assert abs(got / law - 1 - correction) <= 1 / L**2 + _EDGE_LOG_STEP**2 / 8, (weights, got, law)


# --------------------------------------------------------------------------- densities

@pytest.mark.parametrize("depth", [1, 2, 5])
def test_density_matches_fuss_catalan(depth):
  result = _density(*LINEAR, depth, "gaussian")
  lam = result.lambdas
  edge = (depth + 1)**(depth + 1) / depth**depth
  exact = _fuss_catalan(lam, depth)
  if depth == 1:
    # The parametrization against the explicit law (bisection to ~1e-12 at the edge).
    np.testing.assert_allclose(exact, _marchenko_pastur(lam), rtol=1e-8, atol=1e-9)
  # The solver returns the density smoothed by a Cauchy kernel of relative width 1e-6. On a
  # smooth density that is a relative change ~1e-6; at distance d from a square-root edge it is
  # ~1e-6 lambda / d, <= 1e-4 for d >= 0.01 lambda_max. Near 0 (rho ~ lambda**(-L/(L+1))) it is
  # again ~1e-6 relative.
  inside = lam <= 0.99 * edge
  np.testing.assert_allclose(result.density[inside], exact[inside], rtol=1e-4)


def test_cdf_and_ks_against_marchenko_pastur():
  result = _density(*LINEAR, 1, "gaussian")
  cdf = fp.cumulative_distribution(result)
  # cumulative_distribution integrates lambda rho from the top by the trapezoid rule in log
  # lambda. Its error on this grid: below 1e-4 lambda_max (h = 0.61) the relative error on a
  # power law lambda**(1/2) is (h / 2)**2 / 12 = 8e-3 of the mass there, F(4e-4) = 0.013: 1e-4;
  # between 1e-4 and 1/2 lambda_max (h = 0.061), ~h**2 / 12 |f''/f| <= 3e-4 of the mass; at the
  # edge, O(h**2) in s with h = 1/99: ~1e-5. Total < 3e-4.
  np.testing.assert_allclose(cdf, _marchenko_pastur_cdf(result.lambdas), rtol=0, atol=3e-4)
  # The CDF is the theory's (the log-potential at each point, smoothed at relative height 1e-6):
  # at the edge lambda = 4 the smoothing has put ~delta sqrt(lambda) / pi ~ 1e-6 of the mass above.
  assert np.all(np.diff(cdf) >= 0) and 1 - 2e-6 <= cdf[-1] <= 1.0
  # Samples at the exact quantiles (i + 1/2) / n: the empirical CDF is within 1/(2n) of the law
  # everywhere, so KS <= 1/(2n) + the CDF error above.
  n = 2000
  quantiles = optimize.brentq
  samples = np.array([quantiles(lambda x: _marchenko_pastur_cdf(x) - (i + 0.5) / n, 0.0, 4.0,
                                xtol=1e-14) for i in range(n)])
  ks = fp.ks_distance(result, samples)
  assert ks <= 0.5 / n + 3e-4, ks
  # and it sees a wrong law: the same samples scaled by 1.1.
  assert fp.ks_distance(result, 1.1 * samples) > 0.02


# (args, depth, weights, atom at lambda_max): laws with tails below 1e-20 lambda_max small enough
# to extrapolate (Gaussian weights at small L only, see `_tail`).
INTEGRAL_CASES = [
    (LINEAR, 2, "gaussian"),
    (LINEAR, 5, "gaussian"),
    (RELU, 3, "orthogonal"),
    (RELU, 8, "orthogonal"),
    (RELU, 3, "gaussian"),
    (HARD_TANH, 8, "orthogonal"),
    (HARD_TANH, 4, "gaussian"),
    (TANH_1, 2, "orthogonal"),
    (TANH_1, 2, "gaussian"),
]


@pytest.mark.parametrize("args,depth,weights", INTEGRAL_CASES)
def test_density_integrals(args, depth, weights):
  result = _density(*args, depth, weights)
  mean, variance = fp.jacobian_moments(*args, depth, weights)
  tail = _tail(result)
  mass = _moment(result, 0) + tail
  # Error budget. Solver: 1e-5 relative pointwise (Fuss-Catalan test, measured). Quadrature:
  # Simpson in log lambda and in s, O(h**4): < 1e-5. Tail: extrapolating the bottom's local power
  # law, trusted to 30% (the exponent still drifts there; tail <= 3e-3 in these cases). Smooth
  # phi: M_{D^2} by product integration on panels, < 1e-9 relative (test_m_d2_against_quadrature;
  # the solver's former 512 linear panels had a CDF error < 3e-4 and needed that much here).
  panels = 1e-9 if args[0] == "tanh" else 0.0
  tolerance = 1e-4 + 0.3 * tail + panels
  assert tail < 3e-3
  assert abs(mass - (1 - result.point_mass)) <= tolerance, (mass, result.point_mass, tail)
  assert result.point_mass == pytest.approx(
      {"relu": 0.5, "hard_tanh": 1 - HARD_TANH_P}.get(args[0], 0.0), abs=1e-14)
  # The mass the theory reports below the grid (its CDF at the bottom) closes the budget with the
  # quadrature of the density: same error budget, without the extrapolated tail.
  assert abs(_moment(result, 0) + result.mass_below + result.point_mass + result.top_mass - 1) <= (
      1e-4 + panels), (result.mass_below, tail)
  assert abs(result.mass_below - tail) <= 0.3 * tail + 1e-6, (result.mass_below, tail)
  # Moments: the mass below the grid carries lambda <= 1e-20 lambda_max, nothing of these.
  np.testing.assert_allclose(_moment(result, 1), mean, rtol=1e-4 + panels)
  np.testing.assert_allclose(_moment(result, 2), variance + mean**2, rtol=1e-4 + panels)


def test_residual_and_positivity():
  # Runs after the tests above in file order, so every cached density is checked; alone, it
  # solves two itself.
  _density(*LINEAR, 2, "gaussian")
  _density(*TANH_1, 2, "orthogonal")
  for args, result in _SOLVED.items():
    assert np.all(np.isfinite(result.density)) and np.all(result.density >= 0), args
    assert 0.0 <= result.point_mass < 1.0, args
    # Converged Newton iterates: machine precision at the median point. Elsewhere |F| is limited by
    # rounding in M_{D^2}: in a spectral gap (m ~ -1, x ~ 0; 2.5e-11 measured for tanh at
    # q* = 1/64) and at the far bottom for smooth phi with Gaussian weights (up to 4e-8 measured,
    # where Im m ~ lambda rho ~ 1e-13 and the mass is negligible). A residual r moves m by
    # ~r / |F'(m)|, rho by ~r / (pi lambda): 1e-6 is far below what the integral tests resolve.
    residual = result.residual
    assert np.median(residual) < 1e-13, args
    assert np.quantile(residual, 0.9) < 1e-10, args
    assert np.max(residual) < 1e-6, (args, np.max(residual))


# --------------------------------------------------------------------------- atoms

@pytest.mark.parametrize("depth", [2, 4])
def test_orthogonal_bernoulli_continuous_part_below_atom(depth):
  # Orthogonal weights, Bernoulli(p) D**2 with L (1 - p) < 1: the subspace on which every D_l W_l
  # acts as sigma_w times an isometry has dimension >= N (1 - L (1 - p)), so J J^T has an atom
  # of mass a = 1 - L (1 - p) at sigma_w**(2L) (the pole of G at z(m -> inf) = sigma_w**(2L) has
  # residue a). The continuous part then holds 1 - (1 - p) - a = (L - 1)(1 - p), and ends at the
  # local minimum of the same z(m), now at m* = p / (L (1 - p) - 1) < -1.
  p = HARD_TANH_P
  sigma_w = HARD_TANH[1]
  assert depth * (1 - p) < 1
  m = p / (depth * (1 - p) - 1)
  edge = sigma_w**(2 * depth) * (m + p)**depth / (m * (1 + m)**(depth - 1))
  top = fp.max_squared_singular_value(*HARD_TANH, depth, "orthogonal")
  assert top == pytest.approx(sigma_w**(2 * depth), rel=1e-9) and edge < top
  result = fp.jacobian_spectral_density(*HARD_TANH, depth, "orthogonal", _integration_grid(edge))
  # Same error budget as test_density_integrals (Bernoulli: no panels); the atom's Cauchy tail
  # (relative width 1e-6) puts ~a 1e-6 lambda / (pi d) <= 1e-6 on the grid, d >= 0.1 lambda_max.
  np.testing.assert_allclose(_moment(result, 0) + _tail(result), (depth - 1) * (1 - p), atol=1e-4)


def test_march_through_the_atom_keeps_the_branch():
  # The same law as above at L = 2, solved once on a grid that stops below the continuous edge and
  # once on one whose top lies above the atom at sigma_w**(2L): the march down the second crosses
  # the atom's Cauchy peak (|m| ~ 1 / delta) and must come out on the same branch. The two solves
  # share no path, so agreement at the common points (1e-9: converged roots differ by rounding,
  # amplified near the continuous edge) means both found the physical root.
  p = HARD_TANH_P
  sigma_w = HARD_TANH[1]
  depth = 2
  m = p / (depth * (1 - p) - 1)
  edge = sigma_w**(2 * depth) * (m + p)**depth / (m * (1 + m)**(depth - 1))
  top = sigma_w**(2 * depth)
  below = _integration_grid(edge)
  through = np.concatenate([below[:-20], np.geomspace(1.001 * edge, 1.05 * top, 20)])
  assert through[-1] > top > through[-21]
  a = fp.jacobian_spectral_density(*HARD_TANH, depth, "orthogonal", below)
  b = fp.jacobian_spectral_density(*HARD_TANH, depth, "orthogonal", through)
  np.testing.assert_allclose(b.density[:-20], a.density[:-20], rtol=1e-9)
  # Above the continuous edge only Cauchy kernels remain: the atoms' (which `density` leaves
  # out) and the continuous part's,
  # which at distance r above the edge is at most delta lambda (L - 1)(1 - p) / (pi r**2).
  lam = through[-20:]
  tail = _DELTA_MIN * lam * (depth - 1) * (1 - p) / (np.pi * (lam - edge)**2)
  assert np.all(np.abs(b.density[-20:]) <= tail), (b.density[-20:], tail)


# --------------------------------------------------------------------------- the solver's parts

def _d_and_slope(activation):
  """phi'(h)**2 and its derivative in closed form (independent of isometry.theory.activations)."""
  if activation == "tanh":
    return (lambda h: np.cosh(h)**-4.0), (lambda h: -4.0 * np.tanh(h) * np.cosh(h)**-4.0)
  return (lambda h: 4 / np.pi * np.exp(-2 * h**2)), (lambda h: -16 / np.pi * h * np.exp(-2 * h**2))


def _m_d2_by_quad(activation, q, x):
  """E[d / (x - d)] by adaptive quadrature over h >= 0, with break points around d(h) = Re x."""
  d, slope = _d_and_slope(activation)
  end = 12 * np.sqrt(q)
  g = lambda h: 2 * stats.norm.pdf(h, scale=np.sqrt(q)) * d(h)
  points = None
  if d(end) < x.real < d(0.0):
    root = optimize.brentq(lambda h: d(h) - x.real, 0.0, end, xtol=1e-15)
    width = min(abs(x.imag / slope(root)), np.sqrt(abs(x.imag)))
    points = sorted({min(max(root + k * width, 0.0), end) for k in (-100, -10, -1, 0, 1, 10, 100)})
  parts = [integrate.quad(lambda h: part(g(h) / (x - d(h))), 0.0, end, points=points, limit=500,
                          epsabs=1e-14, epsrel=1e-12)[0] for part in (np.real, np.imag)]
  return parts[0] + 1j * parts[1]


@pytest.mark.parametrize("activation,q", [("tanh", 1.0), ("tanh", 1 / 64), ("erf", 1.0)])
def test_m_d2_against_quadrature(activation, q):
  law = derivative_law.d2_law(get_activation(activation), q)
  d_max = law.atom
  d, slope = _d_and_slope(activation)
  assert d_max == pytest.approx(d(0.0), rel=1e-15)
  m_d2 = jax_m_d2(law)
  # At distance >= 1e-3 d_max from the real axis (where quad is reliable): the panels' rules and
  # exact integrals agree with quadrature to < 3e-10 relative (measured; 1e-9 allowed). M' against
  # a central difference with step 1e-4 Im x (error ~1e-8 from truncation, ~1e-11 from rounding).
  for re in np.array([-0.2, 0.02, 0.3, 0.6, 0.9, 0.99, 1.2]) * d_max:
    for im in np.array([1e-1, 1e-3]) * d_max:
      x = re + 1j * im
      value, derivative = m_d2(x)
      np.testing.assert_allclose(value, _m_d2_by_quad(activation, q, x), rtol=1e-9, err_msg=x)
      step = 1e-4 * im
      central = (m_d2(x + step)[0] - m_d2(x - step)[0]) / (2 * step)
      np.testing.assert_allclose(derivative, central, rtol=1e-6, err_msg=x)
  # On the support, 1e-13 t above it (Plemelj): Im M = -pi f(t), f(t) = t p_d(t) = g(h) / |d'(h)|
  # at d(h) = t, up to the Cauchy smoothing ~1e-13 t |f'| / f: from the square-root singularity
  # at the top (h = 0.01 sqrt(q*): 1 - t ~ 2e-4 q*) down to the tail (h = 4 sqrt(q*); below
  # d = 1e-16 d_max, which erf reaches at h = 4.3, the law is lumped). h = 1 sqrt(q*) is the top
  # panel's end for q* = 1/64, where two panels' log singularities must cancel.
  for h in np.array([0.01, 0.3, 1.0, 2.0, 4.0]) * np.sqrt(q):
    t = d(h)
    value, _ = m_d2(t * (1 + 1e-13j))
    f = 2 * stats.norm.pdf(h, scale=np.sqrt(q)) * d(h) / abs(slope(h))
    np.testing.assert_allclose(-value.imag / np.pi, f, rtol=1e-8, err_msg=h)


def _arg_d2_by_quad(activation, q, x):
  """E[arg(x - d)] by adaptive quadrature over h >= 0, break points around d(h) = Re x."""
  d, slope = _d_and_slope(activation)
  end = 12 * np.sqrt(q)
  g = lambda h: 2 * stats.norm.pdf(h, scale=np.sqrt(q))
  points = None
  if d(end) < x.real < d(0.0):
    root = optimize.brentq(lambda h: d(h) - x.real, 0.0, end, xtol=1e-15)
    width = min(abs(x.imag / slope(root)), np.sqrt(abs(x.imag)))
    points = sorted({min(max(root + k * width, 0.0), end) for k in (-100, -10, -1, 0, 1, 10, 100)})
  return integrate.quad(lambda h: g(h) * np.arctan2(x.imag, x.real - d(h)), 0.0, end,
                        points=points, limit=500, epsabs=1e-14, epsrel=1e-12)[0]


@pytest.mark.parametrize("activation,q", [("tanh", 1.0), ("tanh", 1 / 64), ("erf", 1e-3)])
def test_arg_d2_against_quadrature(activation, q):
  """Im E[log(x - d)], from which the CDF and mass_below are built (`_upper_mass`).

  The panels' rules far from x, product integration of the density polynomials against
  log(x - t) near it. Off the support's axis (Im x >= 1e-6 d_max) against adaptive quadrature
  (measured: <= 7e-13); on it (Im x = 1e-14 d_max, where the integrand is a step) against the
  limit pi P(d > Re x) = pi erf(h0 / sqrt(2 q*)), d(h0) = Re x, which it reaches up to
  O(Im x log) ~ 1e-13 (measured <= 1e-13). 1e-10 of pi covers the panels' fit (~1e-10 of f)."""
  import jax
  import jax.numpy as jnp
  law = derivative_law.d2_law(get_activation(activation), q)
  d_max = law.atom
  d, _ = _d_and_slope(activation)

  def arg_d2(x):
    with jax.enable_x64(True):
      return float(derivative_law.arg_d2(jnp.asarray(x, dtype=jnp.complex128), law))

  for re in np.array([-0.2, 0.3, 0.9, 0.999, 1.0 - 1e-6, 1.2]) * d_max:
    for im in np.array([1e-1, 1e-3, 1e-6]) * d_max:
      x = re + 1j * im
      np.testing.assert_allclose(arg_d2(x), _arg_d2_by_quad(activation, q, x), rtol=0,
                                 atol=1e-10, err_msg=str(x))
  for re in np.array([0.3, 0.9, 0.999, 1.0 - 1e-6]) * d_max:
    # (For erf at q* = 1e-3 the points below 0.98 d_max are below the support: the limit is pi up
    # to the 1e-14 tail.)
    h0 = optimize.brentq(lambda h: d(h) - re, 0.0, 40 * np.sqrt(q), xtol=1e-16, rtol=1e-15)
    limit = np.pi * special.erf(h0 / np.sqrt(2 * q))
    np.testing.assert_allclose(arg_d2(re + 1e-14j * d_max), limit, rtol=0, atol=1e-10,
                               err_msg=str(re))


def jax_m_d2(law):
  """M_{D^2} and its derivative at one complex x, as numpy complex numbers."""
  import jax
  import jax.numpy as jnp

  def m_d2(x):
    with jax.enable_x64(True):
      value, derivative = derivative_law.m_d2(jnp.asarray(x, dtype=jnp.complex128), law)
      return complex(value), complex(derivative)

  return m_d2


@pytest.mark.parametrize("activation,q,h_bottom", [("tanh", 1.0, 7.0), ("erf", 1.0, 4.2),
                                                    ("tanh", 1 / 64, 3.0)])
def test_one_orthogonal_layer_is_the_law_of_phi_prime_squared(activation, q, h_bottom):
  # L = 1, orthogonal: J J^T = sigma_w**2 D W W^T D = sigma_w**2 D**2, whose density is the law of
  # d = phi'(h)**2 scaled by sigma_w**2: rho(lambda) = 2 N(h; 0, q*) / |d'(h)| / sigma_w**2 at
  # d(h) = lambda / sigma_w**2. This goes through every panel of the law: the top one with the
  # square-root singularity, the graded ones and the tail, down to h_bottom sqrt(q*) (tanh at
  # q* = 1: d ~ 1e-12; erf: d ~ 1e-15, just above where freeprob lumps the law, 1e-16 d_max). The
  # solver's Cauchy smoothing (relative height delta = 1e-6) changes a smooth density by ~delta
  # relative, by ~delta lambda / distance near the singular top edge (<= 1e-4 below 0.99 of it),
  # and adds the kernel's tail ~delta lambda / (pi distance**2) of the bulk, which at q* = 1/64
  # (bulk within 0.3 of the top) swamps the law's Gaussian tail below h ~ 4 sqrt(q*): the grid
  # stops at 3 sqrt(q*) there (measured: < 1e-7 relative everywhere else).
  sigma_w, sigma_b = _critical(activation, q)
  d, slope = _d_and_slope(activation)
  edge = fp.max_squared_singular_value(activation, sigma_w, sigma_b, 1, "orthogonal")
  # The edge is the minimum of z(x) on a grid of x starting 1e-12 above d_max.
  assert edge == pytest.approx(sigma_w**2 * d(0.0), rel=2e-12)
  grid = np.geomspace(sigma_w**2 * d(h_bottom * np.sqrt(q)), 0.99 * edge, GRID_SIZE)
  result = fp.jacobian_spectral_density(activation, sigma_w, sigma_b, 1, "orthogonal", grid)
  h = np.array([optimize.brentq(lambda h: d(h) - t, 0.0, 20 * np.sqrt(q), xtol=1e-15, rtol=1e-15)
                for t in grid / sigma_w**2])
  exact = 2 * stats.norm.pdf(h, scale=np.sqrt(q)) / np.abs(slope(h)) / sigma_w**2
  np.testing.assert_allclose(result.density, exact, rtol=1e-4)


def test_deep_off_critical_network_in_units_of_chi_to_the_l():
  # Linear Gaussian network with sigma_w = 0.2, L = 100: J J^T = sigma_w**(2L) times a
  # Fuss-Catalan matrix, a spectrum at 1e-140 (the solver works in units of chi**L; in absolute
  # units |z|**2 underflows). Tolerance: 1e-4 as in test_density_matches_fuss_catalan, plus the
  # Cauchy kernel's tail at relative height delta, delta / (pi lambda) times the mass farther than
  # lambda / 2 away (<= 1): at L = 100 most of the mass sits far below any lambda here (rho ~
  # lambda**(-100/101)), which makes this 3e-5 of rho at the bottom and 7e-4 at 0.99 of the edge.
  sigma_w, depth = 0.2, 100
  scale = sigma_w**(2 * depth)
  edge = fp.max_squared_singular_value("linear", sigma_w, 0.0, depth, "gaussian")
  assert edge == pytest.approx(scale * (depth + 1)**(depth + 1) / depth**depth, rel=2e-5)
  grid = np.geomspace(1e-8 * edge, 0.99 * edge, GRID_SIZE)
  result = fp.jacobian_spectral_density("linear", sigma_w, 0.0, depth, "gaussian", grid)
  x = grid / scale
  exact = _fuss_catalan(x, depth)
  error = np.abs(result.density * scale - exact)
  assert np.all(error <= 1e-4 * exact + 2 * _DELTA_MIN / (np.pi * x)), np.max(error / exact)
  # Scale-free: the same law with sigma_w = 1 (chi = 1) on the grid in units of chi**L.
  unit = fp.jacobian_spectral_density("linear", 1.0, 0.0, depth, "gaussian", x)
  # The two solves see grids 1 ulp apart (grid / chi**L against x) and march along different
  # paths; each Newton stops within ~4e-16 (|m| + |1 + m|) <= 1e-15 of its root, which moves
  # rho = -Im((1 + m) / z) / pi by up to 1e-15 / (pi x): relative 1e-12 where rho is small (near
  # the edge, where Im m ~ 1e-3).
  assert np.all(np.abs(result.density * scale - unit.density)
                <= 1e-12 * unit.density + 1e-15 / (np.pi * x))


# --------------------------------------------------------------------------- Monte-Carlo

# KS distance between theory and the pooled squared singular values of 2 networks of width 500.
# Finite-N effects: the realized per-layer chi_l and layer variances q_l fluctuate by O(N**-1/2)
# and move log lambda of the whole spectrum (by ~sqrt(L Var d / N) / E d from the d's alone), which
# moves the CDF by that shift times sup(lambda rho); at small q* the layer variance relaxes over
# ~30 layers (chi_q = 0.97 at q* = 1/64), so at L = 32 its wander adds up (THEORY.md); otherwise
# O(1/N). Measured over 5 draws per case (N = 500, 2 networks pooled; tanh at q* = 1 and 1/64,
# both weights, L = 2, 8, 32): <= 0.025, except q* = 1/64 orthogonal at L = 32: pooled <= 0.048,
# one network alone up to 0.11 (two networks shifted the same way can pool to that). Wrong laws
# land far above: the other weights' law 0.23-0.96, a root-selection failure 0.39, a missed
# atom 0.36.
KS_BOUND = 0.05
KS_BOUND_Q_WANDER = 0.15
_MC_NETWORKS = 2


def _mc_grid(lambda_max, samples):
  """From half the smallest sample (no lower than 1e-10 lambda_max: below, float64 singular values
  of a product of L matrices are rounding noise) to just above the edge, GRID_SIZE points."""
  bottom = max(1e-10 * lambda_max, 0.5 * float(np.min(samples)))
  return np.geomspace(bottom, 1.02 * lambda_max, GRID_SIZE)


@pytest.mark.compute_bound
@pytest.mark.parametrize("weights,depth,qs", [
    ("orthogonal", 2, (1.0, 1 / 64)),
    ("orthogonal", 32, (1 / 64,)),
    ("gaussian", 8, (1.0, 1 / 64)),
])
def test_tanh_monte_carlo(key, weights, depth, qs):
  cases = {1.0: TANH_1, 1 / 64: TANH_64}
  # The critical points as one gain sweep: one compiled program, common random numbers.
  sigma_w = np.array([cases[q][1] for q in qs])
  sigma_b = np.array([cases[q][2] for q in qs])
  spectra = jacobian.jacobian_squared_singular_values(
      key, "tanh", weights, sigma_w, sigma_b, depth, _MC_WIDTH, _MC_NETWORKS)
  for q, samples in zip(qs, spectra):
    args = cases[q]
    lambda_max = fp.max_squared_singular_value(*args, depth, weights)
    result = fp.jacobian_spectral_density(*args, depth, weights, _mc_grid(lambda_max, samples))
    bound = KS_BOUND_Q_WANDER if (q < 0.1 and weights == "orthogonal" and depth > 8) else KS_BOUND
    ks = fp.ks_distance(result, samples)
    assert ks <= bound, (q, ks, bound)
    if weights == "gaussian" and q == 1.0:
      # The bound discriminates: the orthogonal law is far outside it (0.26 measured).
      other = fp.jacobian_spectral_density(*args, depth, "orthogonal", result.lambdas)
      assert fp.ks_distance(other, samples) > 3 * bound


def test_sharp_spectrum_on_a_fine_grid():
  # tanh at q* = 1/64, orthogonal, L = 2: a narrow spectrum (0.7 to 1.0 lambda_max) that piles up
  # towards its top edge (rho up to ~15 / lambda_max). On a grid that resolves it (spacing 0.35%)
  # the Newton continuation must still find the physical root at every point. Trapezoid error
  # of the mass: below rho_max h lambda_max ~ 15 * 0.0035 = 5%; a lost root loses ~40%.
  lambda_max = fp.max_squared_singular_value(*TANH_64, 2, "orthogonal")
  grid = np.geomspace(0.35 * lambda_max, 1.02 * lambda_max, GRID_SIZE)
  result = fp.jacobian_spectral_density(*TANH_64, 2, "orthogonal", grid)
  assert np.max(result.residual) < 1e-6
  for k in (0, 1):   # mass 1, mean chi**L = 1
    moment = integrate.trapezoid(result.density * grid**(k + 1), np.log(grid))
    assert abs(moment - 1) < 0.05, (k, moment)


@pytest.mark.parametrize("args,p,depth,weights", [
    (RELU, 0.5, 4, "orthogonal"),
    # L (1 - p) = 0.63 < 1: an atom of mass 1 - L (1 - p) = 0.37 at sigma_w**(2L).
    (HARD_TANH, HARD_TANH_P, 4, "orthogonal"),
])
def test_bernoulli_monte_carlo(key, args, p, depth, weights):
  samples = jacobian.jacobian_squared_singular_values(
      key, args[0], weights, args[1], args[2], depth, _MC_WIDTH, _MC_NETWORKS)
  lambda_max = fp.max_squared_singular_value(*args, depth, weights)
  result = fp.jacobian_spectral_density(*args, depth, weights, _mc_grid(lambda_max, samples))
  assert result.point_mass == pytest.approx(1 - p, abs=1e-14)
  # Zeros: exact 0 up to svd rounding (~1e-16 lambda_max), far below the continuous part. J has
  # rank min_l n_l, n_l ~ Binomial(N, p) the active units of layer l, so the zero fraction is
  # 1 - p + sqrt(p (1 - p) / N) max_l z_l (normal approximation, z_l ~ N(0, 1)), whose standard
  # deviation is below that of one z_l.
  std = np.sqrt(p * (1 - p) / _MC_WIDTH)
  expected = result.point_mass + std * _expected_max_of_normals(depth)
  zero_fraction = np.mean(samples < 1e-10 * lambda_max)
  assert abs(zero_fraction - expected) <= 4 * std / np.sqrt(_MC_NETWORKS), (zero_fraction, expected)
  atom = max(0.0, 1 - depth * (1 - p))
  if atom:
    # The subspace where every layer is an isometry has dimension N - sum_l (N - n_l).
    top = np.mean(np.abs(samples / args[1]**(2 * depth) - 1) < 1e-8)
    assert abs(top - atom) <= 4 * np.sqrt(depth) * std / np.sqrt(_MC_NETWORKS), (top, atom)
  # KS: as for tanh, plus the excess zeros (the finite-N rank deficit, measured above), which
  # shift the empirical CDF by that much just above 0.
  bound = KS_BOUND + abs(zero_fraction - result.point_mass)
  ks = fp.ks_distance(result, samples)
  assert ks <= bound, (ks, bound)


# --------------------------------------------------------------------------- bad input

def test_bad_input():
  good = dict(activation="tanh", sigma_w=1.2, sigma_b=0.1, depth=3, weights="orthogonal")
  bad = [
      dict(activation="softplus"),
      dict(sigma_w=0.0), dict(sigma_w=-1.0),
      dict(sigma_b=-0.1),
      dict(depth=0), dict(depth=2.5),
      dict(weights="uniform"),
      # chi**L outside float64's range.
      dict(sigma_w=3.0, depth=5000),
  ]
  grid = np.geomspace(1e-3, 10.0, GRID_SIZE)
  for change in bad:
    kwargs = {**good, **change}
    args = [kwargs[k] for k in ("activation", "sigma_w", "sigma_b", "depth", "weights")]
    with pytest.raises(ValueError):
      fp.jacobian_moments(*args)
    with pytest.raises(ValueError):
      fp.max_squared_singular_value(*args)
    with pytest.raises(ValueError):
      fp.jacobian_spectral_density(*args, grid)
  args = [good[k] for k in ("activation", "sigma_w", "sigma_b", "depth", "weights")]
  for lambdas in (grid[::-1], np.concatenate([[0.0], grid[1:]]), -grid, grid[:1],
                  grid.reshape(2, -1), np.array([1.0, 1.0, 2.0])):
    with pytest.raises(ValueError):
      fp.jacobian_spectral_density(*args, lambdas)
  # A linear orthogonal network is one atom at sigma_w**(2L): no density to return.
  with pytest.raises(ValueError, match="atom"):
    fp.jacobian_spectral_density(*LINEAR, 3, "orthogonal", grid)
  assert fp.jacobian_moments(*LINEAR, 3, "orthogonal") == (1.0, 0.0)


def test_spectral_grid():
  lambda_max, num, decades = 7.5, GRID_SIZE, 10.0
  grid = fp.spectral_grid(lambda_max, num, decades)
  # num points (the solver compiles once per grid shape, so the caller's num must be the shape).
  assert grid.shape == (num,)
  assert np.all(np.diff(grid) > 0)
  np.testing.assert_allclose([grid[0], grid[-1]], [lambda_max * 10**-decades, 1.02 * lambda_max],
                             rtol=1e-12)
  # Resolves both a spectrum spread over decades (log half: ~num / 2 points over 10 decades) and
  # a narrow one (linear half: spacing ~2 lambda_max / num at the top).
  top_half = grid[grid > 0.5 * lambda_max]
  assert np.max(np.diff(top_half)) <= 2.1 * 1.02 * lambda_max / num
  assert np.max(np.diff(np.log(grid))) <= 2.1 * decades * np.log(10) / num
