"""The law of D^2 = phi'(h)**2, h ~ N(0, q*), and its M-transform M_{D^2}(x) = E[d / (x - d)].

An atom law for relu, hard_tanh, linear (and any phi at q* = 0); for smooth phi (tanh, erf)
product-integration panels over t = d, exact near x and Gauss-Legendre far from it, accurate to
3e-10 relative at any distance from the support. The numerics are described in
`isometry.theory.freeprob`'s docstring, which this module serves.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from isometry.theory import meanfield
from isometry.theory.activations import Activation


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


class D2Law(NamedTuple):
  """The law of d = phi'(h)**2, h ~ N(0, q*): an atom, or product-integration panels.

  An atom law (relu, hard_tanh, linear; any phi at q* = 0) puts mass `p` on d = `atom` and
  1 - p on d = 0, and has no panel rows. A smooth law (tanh, erf) has `atom` = d_max = max d and
  rows for panels over t = d, padded with empty rows to a size in `_PANEL_BUCKETS`:
    row 0, the top panel t in [`lower`, `upper`] = [d_max - Y, d_max]: `coef` holds
      K(w) = sum_j coef_j w**j with k(v) = K(v**2 / Y), k(v) dv = f(t) dt, v = sqrt(d_max - t)
      (smooth where f has its square-root singularity; see `m_d2`);
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
  by the log-potential E[log(x - d)] (the CDF, `arg_d2`).
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


def atom_law(p: float, atom: float = 1.0) -> D2Law:
  empty = np.zeros((0, _RULE))
  return D2Law(float(p), float(atom), empty, empty, np.zeros((0, _FIT)), np.zeros(0),
                np.zeros(0), np.zeros((0, _FIT)))


@functools.partial(jax.jit, static_argnums=0)
def _d_and_slope_jit(act: Activation, h):
  first, second = jax.jvp(act.derivative, (h,), (jnp.ones_like(h),))
  return jnp.square(first), 2.0 * first * second


def d_and_slope(act: Activation, h):
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
def d2_law(act: Activation, q: float) -> D2Law:
  if act.name == "linear":
    return atom_law(1.0)
  if act.bernoulli_derivative:
    p = float(meanfield.mu(act, q, 1))
    # Within _ATOM_SPREAD of 1 (hard_tanh at q* ~ 0): the atom at 0 is below float64's reach.
    return atom_law(1.0 if p >= 1.0 - _ATOM_SPREAD else p)
  if q <= 0:
    # h = 0: every layer is linear with gain phi'(0).
    d0, _ = d_and_slope(act, np.zeros(1))
    return atom_law(1.0, float(d0[0]))
  return _panel_law(act, q)


def _gauss_legendre(lo, hi, num):
  """Nodes and weights of num-point Gauss-Legendre rules on the intervals [lo, hi] (arrays)."""
  x, w = np.polynomial.legendre.leggauss(num)
  mid, half = (lo + hi)[:, None] / 2, (hi - lo)[:, None] / 2
  return mid + half * x[None, :], half * w[None, :]


def _panel_law(act: Activation, q: float) -> D2Law:
  """Panels for a smooth phi whose phi'**2 decreases in |h| from its maximum at h = 0."""
  sq = np.sqrt(q)
  end = np.sqrt(2.0 * q) * special.erfcinv(_TAIL_MASS)
  h = np.linspace(0.0, end, _FINE)
  d, slope = d_and_slope(act, h)
  d_max = d[0]
  below = d < _D_FLOOR * d_max
  if d_max > 0 and np.any(below):
    first = max(int(np.argmax(below)), 1)
    end = float(np.interp(np.log(_D_FLOOR), np.log(d[first - 1:first + 1][::-1] / d_max),
                          h[first - 1:first + 1][::-1]))
    h = np.linspace(0.0, end, _FINE)
    d, slope = d_and_slope(act, h)
  if not (np.isfinite(d_max) and d_max > 0 and np.all(np.isfinite(d)) and np.all(slope[1:] < 0)):
    raise ValueError(
        f"the density solver needs phi'(h)**2 finite, positive and strictly decreasing in |h| "
        f"(as for tanh and erf); {act.name} does not satisfy this at q* = {q:.6g}")
  s = d_max - d
  if s[-1] <= _ATOM_SPREAD * d_max:
    # Narrower than float64 resolves (and far narrower than the density's relative height).
    return atom_law(1.0, float(d_max))
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
    d_nodes, slope_nodes = d_and_slope(act, h_nodes)
    g = 2.0 * np.exp(-h_nodes**2 / (2.0 * q)) / np.sqrt(2.0 * np.pi * q) * d_nodes
    return d_nodes, g, g / np.abs(slope_nodes)

  h_rule, w_rule = _gauss_legendre(lo, hi, _RULE)
  nodes, g, _ = density(h_rule)
  weights = w_rule * g
  h_fit, _ = _gauss_legendre(lo, hi, _FIT)
  t_fit, _, f_fit = density(h_fit)
  d_ends, _ = d_and_slope(act, ends)

  # Top panel: s = d_max - d by Gauss-Legendre of -d' on [0, h] (no cancellation near h = 0).
  def s_of(hs):
    inner_h, inner_w = _gauss_legendre(np.zeros_like(hs), hs, _FIT)
    return -np.sum(d_and_slope(act, inner_h)[1] * inner_w, axis=1)

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
  return D2Law(0.0, float(d_max), nodes, weights, coef, lower, upper, density_coef)


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


def _top_panel(x, law: "D2Law"):
  """The top panel [d_max - Y, d_max] of `m_d2` and `arg_d2` at x: (Y, sigma, near_top, kappa_0).

  sigma = (x - d_max) / Y, replaced by 1 where |sigma| > _NEAR_TOP (the panel is then summed by
  its rule, and the exact terms are masked out), and kappa_0 = int_0^1 dr / (sigma + r**2) =
  arctan(1 / root) / root = log((root + i) / (root - i)) / (2 i root), root = sqrt(sigma), with
  root - i = (sigma + 1) / (root + i) and sigma + 1 from the shared end point d_max - Y.
  """
  d_max, bottom = law.upper[0], law.lower[0]
  big_y = d_max - bottom
  sigma = (x - d_max) / big_y
  near_top = jnp.abs(sigma) <= _NEAR_TOP
  sigma = jnp.where(near_top, sigma, 1.0)
  root = jnp.sqrt(sigma)
  end = jnp.where(near_top, (x - bottom) / big_y, 1.0)
  kappa = jnp.log(jnp.square(root + 1j) * reciprocal(end)) * reciprocal(2j * root)
  return big_y, sigma, near_top, kappa


def reciprocal(a):
  """1 / a for complex a by real arithmetic (XLA's complex division is several times slower)."""
  norm = jnp.square(a.real) + jnp.square(a.imag)
  return jax.lax.complex(a.real / norm, -a.imag / norm)


def m_d2(x, law: D2Law):
  """M_{D^2}(x) = E[d / (x - d)] and its derivative, for complex x off the support of d.

  Far panels by their Gauss-Legendre rules; the top panel (|sigma| <= _NEAR_TOP) and the
  t-panels with |eps| >= _NEAR (at most _WINDOW, found by `_window_start`) by exact integrals
  of their interpolating polynomials.
  """
  if law.nodes.shape[0] == 0:
    value = law.p * law.atom * reciprocal(x - law.atom)
    return value, -value * reciprocal(x - law.atom)
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
  b = law.coef[0]
  big_y, sigma, near_top, kappa = _top_panel(x, law)
  lam = (reciprocal(1.0 + sigma) + kappa) * reciprocal(2.0 * sigma)
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
  ratio = jnp.where(near, (x - lower) * reciprocal(x - upper), 3.0)
  phi = jnp.log(ratio) * inv
  psi = 2.0 * jnp.square(inv) * reciprocal(jnp.square(inv) - 1.0)
  total, d_total = c[:, 0] * phi, c[:, 0] * psi
  for j in range(1, fit):
    moment = 2.0 / j if j % 2 else 0.0          # int_{-1}^1 u**(j-1) du
    phi, psi = (phi - moment) * inv, (psi - phi) * inv
    total, d_total = total + c[:, j] * phi, d_total + c[:, j] * psi
  eps = reciprocal(inv)
  exact = eps * total
  d_exact = -jnp.square(eps) * d_total / jnp.where(near, half, 1.0)
  m += jnp.sum(jnp.where(near, exact - window(rows), 0.0))
  dm += jnp.sum(jnp.where(near, d_exact - window(d_rows), 0.0))
  return m, dm


def arg_d2(x, law: D2Law):
  """Theta(x) = E[arg(x - d)] = Im E[log(x - d)] for complex x with Im x >= 0, in [0, pi].

  The imaginary part of the log-potential of the law of d, which the CDF of J J^T is built from
  (`_upper_mass`). Far panels by their Gauss-Legendre rules (weights carry f = t p_d, hence the
  division by the node); the top panel and the near t-panels (the same window as `m_d2`) by
  exact integrals of `density_coef` against log(x - t):
    t-panels: half int_{-1}^1 P(u) log(a - u) du, a = (x - centre) / half, with
      int u^j log(a - u) du = [log(a - 1) - (-1)^(j+1) log(a + 1) + K_{j+1}(a)] / (j + 1),
      K_k = int u^k / (a - u) du = a K_{k-1} - int u^(k-1) du, K_0 = log((a + 1) / (a - 1));
    top panel: V int_0^1 K_p(r^2) log(Y (sigma + r^2)) dr, V = sqrt(Y), sigma = (x - d_max) / Y,
      with int_0^1 r^2j log(sigma + r^2) dr = (log(1 + sigma) - 2 kappa_{j+1}) / (2 j + 1) and the
      kappa_j of `m_d2`.
  Only imaginary parts are formed (arguments from the shared panel ends, as in `m_d2`).
  """
  angle = lambda v: jnp.arctan2(v.imag, v.real)
  if law.nodes.shape[0] == 0:
    return law.p * angle(x - law.atom) + (1.0 - law.p) * angle(x)
  rows = jnp.sum(law.weights * jnp.arctan2(x.imag, x.real - law.nodes) / law.nodes, axis=1)
  total = jnp.sum(rows)
  fit = law.density_coef.shape[1]

  b = law.density_coef[0]
  big_y, sigma, near_top, kappa = _top_panel(x, law)
  end_angle = jnp.arctan2(x.imag, x.real - law.lower[0])
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
  k = jnp.log(jnp.where(near, (x - lower) * reciprocal(x - upper), 3.0))     # K_0
  angle_upper = jnp.arctan2(x.imag, x.real - upper)
  angle_lower = jnp.arctan2(x.imag, x.real - lower)
  exact = 0.0
  for j in range(fit):
    k = a * k - (2.0 / (j + 1) if j % 2 == 0 else 0.0)          # K_{j+1}
    sign = 1.0 if j % 2 else -1.0                                # (-1)**(j + 1)
    exact = exact + c[:, j] * (angle_upper - sign * angle_lower + k.imag) / (j + 1)
  total += jnp.sum(jnp.where(near, half * exact - window(rows), 0.0))
  return total


@jax.jit
def m_d2_real(x, law):
  return jax.vmap(lambda xi: m_d2(xi + 0j, law)[0].real)(x)
