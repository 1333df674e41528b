"""A summary of a Jacobian spectrum that a researcher reads at a glance, set against the
free-probability prediction where the theory covers the network, and its figure (see
`isometry.theory.diagnostics`)."""
import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from isometry.theory import freeprob
from isometry.theory.diagnostics import estimators


DENSE_AUTO_MAX = 1024   # `summary` computes the dense spectrum when max(n, m) is at most this


class Theory(NamedTuple):
  """A network the free-probability theory covers: h_l = W_l x_{l-1} + b_l, x_l = phi(h_l).

  L square layers, W_l = sigma_w x (Haar orthogonal) or Gaussian of variance sigma_w**2 / N,
  b_l ~ N(0, sigma_b**2), inputs at the fixed point q*(sigma_w, sigma_b), J = dx_L / dx_0.
  """
  activation: str
  sigma_w: float
  sigma_b: float
  weights: str   # "orthogonal" or "gaussian"


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a researcher reads at a glance about a Jacobian spectrum (numpy / float values).

  Every estimate comes from one SLQ run (P probes x k Lanczos steps per input): the moments are
  the quadrature's, which are Hutchinson's for the same probes; s_max2 is the largest top Ritz
  value over the probes. `dense` holds the exact spectrum where it was computed, and then
  `near_zero_fraction` uses it (otherwise the SLQ CDF, which cannot resolve eigenvalues below
  `slq_floor`).
  """
  mean: float                  # m_1 = mean squared singular value (chi**L for a deep network)
  mean_se: float
  variance: float              # m_2 - m_1**2
  variance_se: float
  spread: float                # variance / mean**2 (0 for dynamical isometry)
  spread_se: float
  depth: Optional[int]
  chi: Optional[float]         # mean**(1/depth): the mean squared singular value per layer
  s_max2: float                # largest Ritz value over probes (a lower bound on s_max**2)
  s_max2_residual: float       # an eigenvalue lies within this of s_max2
  near_zero_threshold: float   # relative threshold times mean
  near_zero_fraction: float    # fraction of squared singular values below the threshold
  quadrature: estimators.Quadrature  # SLQ nodes, weights, residuals (numpy, (inputs x probes, k))
  slq_floor: float             # largest over probes of the smallest node: below it the SLQ
  # law is a lump (Lanczos resolves ~lambda_max / k**2 near 0)
  dense: Optional[np.ndarray]  # exact eigenvalues of J J^T (pooled over inputs, ascending)
  theory: Optional[Theory] = None
  predicted_mean: Optional[float] = None
  predicted_variance: Optional[float] = None
  predicted_spread: Optional[float] = None
  predicted_s_max2: Optional[float] = None
  predicted: Optional[freeprob.SpectralDensity] = None
  ks_slq: Optional[float] = None     # sup |F_theory - F_SLQ| over the theory's grid >= slq_floor
  ks_dense: Optional[float] = None   # freeprob.ks_distance(predicted, dense)
  theory_note: str = ""

  def as_dict(self) -> dict:
    """The scalar fields (JSON-ready; arrays and the theory's density left out)."""
    out = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None or isinstance(value, (int, float, str)):
        out[field.name] = value
    if self.theory is not None:
      out["theory"] = self.theory._asdict()
    return out


def _numpy_cdf(quad: estimators.Quadrature, lambdas: np.ndarray) -> np.ndarray:
  """`quadrature_cdf` in float64 numpy (by sorting the pooled nodes)."""
  nodes, weights = np.ravel(quad.nodes), np.ravel(quad.weights) / quad.nodes.shape[0]
  order = np.argsort(nodes)
  cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
  return cumulative[np.searchsorted(nodes[order], lambdas, side="right")]


@functools.partial(jax.jit, static_argnames=("f", "num_probes", "num_steps", "probe"))
def _quadratures(f, x, key, num_probes, num_steps, probe):
  """`lanczos_quadrature` at every row of x (B, n): (B, P, k) fields, one compiled program."""
  return jax.vmap(
      lambda x, k: estimators.lanczos_quadrature(f, x, k, num_probes, num_steps, probe))(
          x, jax.random.split(key, x.shape[0]))


def summary(f: Callable, x, key: jax.Array, *, depth: Optional[int] = None,
            theory: Optional[Theory] = None, num_probes: int = 32, num_steps: int = 32,
            probe: str = "rademacher", near_zero: float = 1e-3,
            dense: Optional[bool] = None, grid_points: int = 1000) -> Summary:
  """Jacobian-spectrum summary of f at x, with the free-probability prediction where it applies.

  With several inputs (x of shape (B, n)) the spectral law is pooled over them (the average of
  the per-input laws), and so are its moments (`moments_from_probes` with (B, P) estimates).

  Resolution. Lanczos nodes are spaced for a polynomial approximation on [0, lambda_max]: near
  0 they resolve about lambda_max / k**2, whatever the decades below. For spectra spread over
  decades (deep Gaussian networks, large q*), mass below `slq_floor` is lumped into the first
  nodes; `ks_slq` is therefore measured above `slq_floor` only, and the dense spectrum (or more
  steps) is what tells the bottom of such a law.

  Args:
    f: maps an (n,) array to an (m,) array; traced with jit once per call (its closed-over arrays
      become constants of the program; for a large model call the pieces inside your own jit).
    x: (n,) or (B, n) inputs. For the theory to apply they must sit at the fixed point q*
      (e.g. `meanfield.sample_inputs_at_q`) and f must be the theory's network (`Theory`).
    key: PRNG key.
    depth: L, for the per-layer chi = mean**(1/L) (and the theory).
    theory: the network's `Theory`, or None; needs `depth`.
    num_probes, num_steps, probe: of the SLQ (see `lanczos_quadrature`); both >= 2.
    near_zero: a squared singular value below near_zero * mean counts as a near-zero direction.
    dense: also compute the dense spectrum (default: when max(n, m) <= DENSE_AUTO_MAX).
    grid_points: points of the theory's `freeprob.spectral_grid`.

  Returns:
    `Summary`.
  """
  x = jnp.asarray(x)
  xs = x[None] if x.ndim == 1 else x
  if xs.ndim != 2:
    raise ValueError(f"x must be (n,) or (B, n), got shape {x.shape}")
  if theory is not None and depth is None:
    raise ValueError("a theory needs the network's depth")
  if num_steps < 2 or num_probes < 2:
    raise ValueError(f"summary needs num_steps >= 2 and num_probes >= 2 (its moments and their "
                     f"errors are the quadrature's), got {num_steps} and {num_probes}")
  per_input = _quadratures(f, xs, key, num_probes, num_steps, probe)
  nodes, weights, residuals = (np.asarray(v, np.float64) for v in per_input)
  # A k-node Gauss rule (k >= 2) integrates lambda and lambda**2 exactly: these are the
  # Hutchinson estimates of m_1 and m_2 of each (unit) probe.
  moments = estimators.moments_from_probes(jnp.asarray(np.sum(weights * nodes, axis=-1)),
                                jnp.asarray(np.sum(weights * nodes**2, axis=-1)))
  mean, variance = float(moments.mean), float(moments.variance)
  mean_se, variance_se = float(moments.mean_se), float(moments.variance_se)
  # Relative errors added in quadrature, as for a ratio of independent estimates.
  spread = variance / mean**2
  spread_se = abs(spread) * float(np.hypot(variance_se / variance if variance else 0.0,
                                           2 * mean_se / mean))
  quad = estimators.Quadrature(
      nodes=nodes.reshape(-1, num_steps),
      weights=weights.reshape(-1, num_steps),
      residuals=residuals.reshape(-1, num_steps))
  m = int(jax.eval_shape(f, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)).shape[0])
  if dense is None:
    dense = max(xs.shape[1], m) <= DENSE_AUTO_MAX
  eigenvalues = np.sort(estimators.jacobian_spectrum(f, xs), axis=None) if dense else None
  threshold = near_zero * mean
  if eigenvalues is not None:
    near = float(np.mean(eigenvalues < threshold))
  else:
    near = float(_numpy_cdf(quad, np.array([threshold]))[0])
  floor = float(np.max(np.min(quad.nodes, axis=1)))
  top = int(np.argmax(quad.nodes[:, -1]))
  result = dict(
      mean=mean, mean_se=mean_se, variance=variance, variance_se=variance_se,
      spread=spread, spread_se=spread_se, depth=depth,
      chi=(float(np.sign(mean) * abs(mean)**(1.0 / depth)) if depth else None),
      s_max2=float(quad.nodes[top, -1]), s_max2_residual=float(quad.residuals[top, -1]),
      near_zero_threshold=float(threshold), near_zero_fraction=near, quadrature=quad,
      slq_floor=floor, dense=eigenvalues)
  if theory is None:
    return Summary(**result)
  args = (theory.activation, theory.sigma_w, theory.sigma_b, depth, theory.weights)
  p_mean, p_var = freeprob.jacobian_moments(*args)
  result.update(theory=theory, predicted_mean=p_mean, predicted_variance=p_var,
                predicted_spread=p_var / p_mean**2)
  try:
    edge = freeprob.max_squared_singular_value(*args)
    predicted = freeprob.jacobian_spectral_density(
        *args, freeprob.spectral_grid(edge, grid_points))
  except ValueError as error:   # e.g. a single atom (linear orthogonal): no density to compare
    return Summary(**result, theory_note=str(error))
  theory_cdf = freeprob.cumulative_distribution(predicted)
  slq_cdf = _numpy_cdf(quad, predicted.lambdas)
  resolved = predicted.lambdas >= floor
  result.update(predicted_s_max2=edge, predicted=predicted,
                ks_slq=float(np.max(np.abs(theory_cdf - slq_cdf)[resolved], initial=0.0)),
                ks_dense=(freeprob.ks_distance(predicted, eigenvalues)
                          if eigenvalues is not None else None))
  return Summary(**result)


def summary_figure(result: Summary, num_points: int = 400):
  """Estimated (SLQ, kernel-smoothed; dense histogram if any) and predicted densities.

  All on a log10(lambda) axis as densities of log10(lambda) (rho(lambda) lambda ln 10), like
  `isometry.results.plots.spectra_figure`. matplotlib is imported here, with the Agg backend; nothing is
  shown: the caller saves the returned Figure.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib.figure import Figure

  quad = estimators.Quadrature(*(jnp.asarray(v) for v in result.quadrature))
  top = max(float(np.max(result.quadrature.nodes)), result.predicted_s_max2 or 0.0)
  bottom = top * 1e-8
  if result.predicted is not None:
    bottom = max(bottom, float(result.predicted.lambdas[0]))
  lambdas = np.geomspace(bottom, 2 * top, num_points)
  est = estimators.smooth_density(quad, jnp.asarray(lambdas))
  fig = Figure(figsize=(5.0, 3.4), layout="constrained")
  ax = fig.add_subplot()
  log_lam = np.log10(lambdas)
  if result.dense is not None:
    # Normalized by all eigenvalues, so the bars hold the mass above `bottom` only.
    counts, edges = np.histogram(np.log10(result.dense[result.dense > bottom]), bins=40,
                                 range=(log_lam[0], log_lam[-1]))
    ax.stairs(counts / (result.dense.size * np.diff(edges)), edges, fill=True,
              color="tab:gray", alpha=0.35, label="dense")
  ax.plot(log_lam, np.asarray(est.density) * lambdas * np.log(10.0), "tab:blue", lw=1.5,
          label=f"SLQ (h={float(est.bandwidth):.2g} dec)")
  if result.predicted is not None:
    lam = result.predicted.lambdas
    ax.plot(np.log10(lam), result.predicted.density * lam * np.log(10.0), "k--", lw=1.2,
            label=f"free probability (KS={result.ks_slq:.3f})")
  ax.set_xlim(log_lam[0], log_lam[-1])
  ax.set_xlabel(r"$\log_{10}\lambda$ ($\lambda = s^2$)")
  ax.set_ylabel(r"density of $\log_{10}\lambda$")
  chi = f", chi={result.chi:.4f}" if result.chi is not None else ""
  ax.set_title(f"mean={result.mean:.4g}, spread={result.spread:.3g}{chi}", fontsize=9)
  ax.legend(fontsize=7)
  return fig
