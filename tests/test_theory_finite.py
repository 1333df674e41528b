"""The theory functions over the whole phase diagram: finite answers, or a clear ValueError.

A coarse grid of (sigma_w, sigma_b) covering the ordered phase, the critical line and the chaotic
phase, depths 1 to 1000 and both weight distributions. Every call of meanfield.q_star, chi,
c_star, depth_scales and freeprob.jacobian_moments, max_squared_singular_value and
jacobian_spectral_density must either return finite values or raise ValueError with a message;
nothing may come back nan or inf, and no other exception may escape. Densities must also be >= 0,
converged (residual < 1e-6) and hold at most the mass a law has.

The expected ValueErrors, for the record: q* that does not exist or is not unique (relu, linear
at sigma_w**2 c >= 1); chi**L outside [1e-150, 1e150] (deep networks off the critical line);
orthogonal networks whose spectrum is a single atom (linear, or q* = 0 where phi'**2 is
constant). The one documented infinity: a depth scale is +inf where its slope is 1 to within
chi's rounding (|chi - 1| <= meanfield.CHI_TOLERANCE: linear at sigma_w = 1, relu at
sigma_w = sqrt(2), sigma_b = 0; tanh and hard_tanh at sigma_w = 1, sigma_b = 0, where q* = 0),
which the test allows only there.

Cost: the density solver compiles once per grid size and law size (the 100-point grid below, and
the panel counts of tanh and erf, which fall into two or three buckets, plus the atom laws).
"""
import numpy as np
import pytest

from isometry.theory import freeprob as fp
from isometry.theory import correlations
from isometry.theory import meanfield as mf

SIGMA_W = (0.5, 1.0, 1.5, 3.0)
SIGMA_B = (0.0, 0.3, 1.0)
DEPTHS = (1, 10, 100, 1000)
GRID = 100
RESIDUAL = 1e-6     # converged Newton iterates: ~1e-16 relative; 1e-6 leaves rho unchanged


def _points(activation):
  points = [(sw, sb) for sw in SIGMA_W for sb in SIGMA_B]
  if activation == "relu":
    points.append((np.sqrt(2.0), 0.0))     # the critical point: every q is a fixed point
  return points


def _call(failures, label, fn):
  """fn() or None if it raised ValueError with a message; records what is wrong."""
  try:
    return fn()
  except ValueError as error:
    if not str(error).strip():
      failures.append(f"{label}: ValueError without a message")
    return None


def _finite(failures, label, value):
  if not np.all(np.isfinite(np.asarray(value, dtype=float))):
    failures.append(f"{label}: returned {value}")
    return False
  return True


@pytest.mark.parametrize("activation", ["tanh", "erf", "relu", "hard_tanh", "linear"])
def test_mean_field_finite_or_value_error(activation):
  failures = []
  for sw, sb in _points(activation):
    label = f"{activation} sigma_w={sw:.4g} sigma_b={sb}"
    q = _call(failures, label + " q_star", lambda: mf.q_star(activation, sw, sb))
    if q is not None and _finite(failures, label + " q_star", q):
      assert q >= 0, (label, q)
    chi = _call(failures, label + " chi", lambda: mf.chi(activation, sw, sb))
    if chi is not None:
      _finite(failures, label + " chi", chi)
    c = _call(failures, label + " c_star", lambda: correlations.c_star(activation, sw, sb))
    if c is not None and _finite(failures, label + " c_star", c):
      assert -1 - 1e-12 <= c <= 1 + 1e-12, (label, c)
    scales = _call(failures, label + " depth_scales", lambda: correlations.depth_scales(activation, sw, sb))
    if scales is not None:
      xi_q, xi_c = (float(v) for v in scales)
      # +inf is documented where the slope is 1 to chi's rounding (the linear q-map at
      # sigma_w**2 c = 1, and xi_c at chi = 1); nowhere else.
      exactly_critical = chi is not None and abs(float(chi) - 1.0) <= mf.CHI_TOLERANCE
      for name, xi in (("xi_q", xi_q), ("xi_c", xi_c)):
        if not (np.isfinite(xi) or (xi == np.inf and exactly_critical)):
          failures.append(f"{label} depth_scales {name} = {xi} (chi = {chi})")
  assert not failures, "\n".join(failures)


@pytest.mark.compute_bound
@pytest.mark.parametrize("activation", ["tanh", "erf", "relu", "hard_tanh", "linear"])
def test_free_probability_finite_or_value_error(activation):
  failures = []
  solved = 0
  for sw, sb in _points(activation):
    for weights in fp.WEIGHTS:
      for depth in DEPTHS:
        args = (activation, sw, sb, depth, weights)
        label = " ".join(str(a) for a in args)
        moments = _call(failures, label + " moments", lambda: fp.jacobian_moments(*args))
        if moments is not None and _finite(failures, label + " moments", moments):
          assert moments[0] > 0 and moments[1] >= 0, (label, moments)
        edge = _call(failures, label + " edge", lambda: fp.max_squared_singular_value(*args))
        if edge is None or not _finite(failures, label + " edge", edge):
          continue
        assert edge > 0, (label, edge)
        grid = fp.spectral_grid(edge, GRID)
        result = _call(failures, label + " density",
                       lambda: fp.jacobian_spectral_density(*args, grid))
        if result is None:
          continue
        solved += 1
        ok = all(_finite(failures, f"{label} {name}", getattr(result, name))
                 for name in ("density", "residual", "point_mass", "top_mass"))
        if not ok:
          continue
        if np.any(result.density < 0):
          failures.append(f"{label}: negative density")
        # |F| / (|m| + |1 + m|): on the Cauchy peak of an atom (|m| ~ 1 / delta) rounding limits
        # |F| to ~1e-16 |m|.
        if np.max(result.residual) >= RESIDUAL:
          failures.append(f"{label}: residual {np.max(result.residual):.2g} (relative)")
        atoms = result.point_mass + result.top_mass
        if not 0 <= atoms <= 1:
          failures.append(f"{label}: atoms {result.point_mass}, {result.top_mass}")
        if result.top_mass > 0 and _finite(failures, label + " top", result.top):
          assert result.top <= edge * (1 + 1e-9), (label, result.top, edge)
        # The continuous part on the grid cannot hold more than the law leaves it: a wrong
        # branch of the solver typically shows up as mass from nowhere. (`density` leaves the
        # atoms' Cauchy kernels out.) Trapezoid in log lambda on this coarse grid, whose linear
        # half resolves the top: a few percent at most. The top edge itself is left out: for
        # L = 1 the law of phi'**2 puts a square-root singularity there. (The full mass budget on
        # grids that resolve the support: test_spectral_sweep.py.)
        below = grid < 0.99 * edge
        mass = np.trapezoid((result.density * grid)[below], np.log(grid[below]))
        if mass > 1.05 * (1 - atoms) + 1e-6:
          failures.append(f"{label}: continuous mass {mass:.4g} > {1 - atoms:.4g}")
  assert not failures, "\n".join(failures)
  # The grid is mostly inside the theory's range: most densities are solved, not refused.
  assert solved >= 0.5 * len(_points(activation)) * len(DEPTHS) * 2 or activation == "linear"
