"""Theory against Monte-Carlo for the Jacobian spectrum of deep networks: the spectra command.

For each weight distribution and depth: the free-probability density of the squared singular
values of J (`isometry.theory.freeprob`) next to the squared singular values of sampled width-N networks
(`isometry.theory.jacobian`), with the Kolmogorov-Smirnov distance between the two CDFs and the first two
moments with Monte-Carlo standard errors. Writes `spectra.json` and `spectra.png` (the layout of
Figure 2 of Pennington, Schoenholz & Ganguli 2017: one column per depth, orthogonal above Gaussian).
"""
import dataclasses
import time
from typing import Optional, Tuple

import jax
import numpy as np
from absl import logging

from isometry.theory import freeprob, jacobian, meanfield
from isometry.results import io
from isometry.theory.activations import get_activation


@dataclasses.dataclass(frozen=True)
class SpectraConfig:
  """What to compare: a point of the phase diagram, the depths, and the sampled networks.

  The point is either `q_star` (on the critical line chi = 1) or both `sigma_w` and `sigma_b`.

  Attributes:
    activation: tanh, hard_tanh, relu, erf or linear.
    weights: weight laws to compare: orthogonal, gaussian.
    q_star: fixed point of the pre-activation variance on the critical line chi = 1 (ignored
      when sigma_w and sigma_b are given). Small q* is where orthogonal networks are nearly
      isometric (Pennington, Schoenholz & Ganguli 2017, Fig. 2); at q* = 1 both laws spread.
    sigma_w: weight scale (with sigma_b: any point of the phase diagram).
    sigma_b: bias scale.
    depths: depths L; one chain of products per network serves them all.
    width: width N of the sampled networks (shared/THEORY.md's checks, KS <= 0.02, are at 1000).
    num_networks: independent networks per (weights, depth): the moments' standard errors.
    seed: PRNG seed of the networks.
    grid_points: points of the grid on which the density and the KS distance are evaluated
      (`freeprob.spectral_grid_for`: it resolves the support, dense across a narrow bulk).
    grid_decades: where the spectrum spreads towards 0, the grid's logarithmic part spans at
      most this many decades below lambda_max (below ~1e-10 lambda_max float64 eigenvalues are
      noise); the mass below the grid is reported beside the fraction of samples there.
  """
  activation: str = "tanh"
  weights: Tuple[str, ...] = ("orthogonal", "gaussian")
  q_star: Optional[float] = 1.0 / 64
  sigma_w: Optional[float] = None
  sigma_b: Optional[float] = None
  depths: Tuple[int, ...] = (2, 8, 32, 128)
  width: int = 1000
  num_networks: int = 3
  seed: int = 0
  grid_points: int = 500
  grid_decades: float = 10.0

  def __post_init__(self):
    get_activation(self.activation)
    for w in self.weights:
      if w not in freeprob.WEIGHTS:
        raise ValueError(f"unknown weights {w!r}; choose from {', '.join(freeprob.WEIGHTS)}")
    if not self.weights:
      raise ValueError("weights must name at least one of orthogonal, gaussian")
    if (self.sigma_w is None) != (self.sigma_b is None):
      raise ValueError(
          "give both sigma_w and sigma_b, or neither (then q_star picks the critical point)")
    if self.sigma_w is None and self.q_star is None:
      raise ValueError("give q_star, or sigma_w and sigma_b")
    if self.sigma_w is not None and not self.sigma_w > 0:
      raise ValueError(f"sigma_w must be > 0, got {self.sigma_w}")
    if self.sigma_b is not None and not self.sigma_b >= 0:
      raise ValueError(f"sigma_b must be >= 0, got {self.sigma_b}")
    if self.sigma_w is None and not self.q_star > 0:
      raise ValueError(f"q_star must be > 0, got {self.q_star}")
    if not self.depths or any(int(d) != d or d < 1 for d in self.depths):
      raise ValueError(f"depths must be integers >= 1, got {self.depths}")
    for name in ("width", "num_networks", "grid_points"):
      if getattr(self, name) < 2:
        raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")

  def scales(self):
    """(sigma_w, sigma_b): the given ones, or the critical point at q_star."""
    if self.sigma_w is not None:
      return float(self.sigma_w), float(self.sigma_b)
    sigma_w, sigma_b = meanfield.critical_point(self.activation, self.q_star)
    return float(sigma_w), float(sigma_b)


def _moment_summary(samples):
  """Pooled mean and variance of (num_networks, width) samples, standard errors across networks.

  The networks are independent; the eigenvalues within one network are not, so the standard
  error is that of the per-network moments over networks.
  """
  per_network_mean = samples.mean(axis=1)
  per_network_var = samples.var(axis=1)
  n = samples.shape[0]
  return {
      "mean": float(samples.mean()),
      "variance": float(samples.var()),
      "mean_standard_error": float(per_network_mean.std(ddof=1) / np.sqrt(n)),
      "variance_standard_error": float(per_network_var.std(ddof=1) / np.sqrt(n)),
  }


def compare(config: SpectraConfig, weights: str, depth: int, samples) -> dict:
  """Theory against the sampled spectra for one (weights, depth) case; see `run` for the fields.

  Args:
    config: the comparison.
    weights: "orthogonal" or "gaussian".
    depth: L.
    samples: (num_networks, width) squared singular values of sampled networks of depth L.
  """
  sigma_w, sigma_b = config.scales()
  act = config.activation
  samples = np.asarray(samples)
  mean, variance = freeprob.jacobian_moments(act, sigma_w, sigma_b, depth, weights)
  lambda_max = freeprob.max_squared_singular_value(act, sigma_w, sigma_b, depth, weights)
  grid = freeprob.spectral_grid_for(act, sigma_w, sigma_b, depth, weights, config.grid_points,
                                    config.grid_decades)
  density = freeprob.jacobian_spectral_density(act, sigma_w, sigma_b, depth, weights, grid)
  cdf = freeprob.cumulative_distribution(density)
  empirical = _moment_summary(samples)
  empirical["lambda_max"] = float(samples.max())
  empirical["fraction_below_grid"] = float(np.mean(samples < grid[0]))
  empirical["mean_z_score"] = (empirical["mean"] - mean) / empirical["mean_standard_error"]
  empirical["variance_z_score"] = ((empirical["variance"] - variance)
                                   / empirical["variance_standard_error"])
  return {
      "activation": act, "weights": weights, "depth": depth,
      "sigma_w": sigma_w, "sigma_b": sigma_b,
      "q_star": float(meanfield.input_variance(act, sigma_w, sigma_b)),
      "chi": float(meanfield.chi(act, sigma_w, sigma_b)),
      "width": config.width, "num_networks": config.num_networks,
      "theory": {
          "mean": mean, "variance": variance, "lambda_max": lambda_max,
          "point_mass_at_zero": density.point_mass,
          # The KS distance covers the grid only: this is the mass the theory puts below it
          # (the atom at zero included), to set beside empirical["fraction_below_grid"].
          "mass_below_grid": float(density.mass_below + density.point_mass),
          "lambdas": density.lambdas, "density": density.density, "cdf": cdf,
          "max_residual": float(density.residual.max()),
      },
      "empirical": empirical,
      "ks_distance": freeprob.ks_distance(density, samples),
      "empirical_log10_histogram": _log_histogram(samples, grid),
  }


def _log_histogram(samples, grid, bins=60):
  """Histogram of log10 of the samples over the grid's range, as a density of log10 lambda.

  Normalised so that it integrates to the fraction of samples inside the range, like the
  theory curve rho(lambda) lambda ln 10 does.
  """
  log_samples = np.log10(samples[samples > 0])
  edges = np.linspace(np.log10(grid[0]), np.log10(grid[-1]), bins + 1)
  counts, _ = np.histogram(log_samples, edges)
  return {"edges": edges, "density": counts / (samples.size * np.diff(edges))}


def run(config: SpectraConfig, out_dir: str) -> dict:
  """Runs every (weights, depth) case and writes spectra.json and spectra.png into out_dir.

  One chain of products per network serves every depth (the network of depth L is the first L
  layers of the deepest one), and both weight laws use the same key: the orthogonal W_l is the
  Q factor of the Gaussian draw that is, rescaled, the Gaussian W_l (common random numbers).

  Returns:
    The JSON content: {"config": ..., "seconds": ..., "cases": [...]}, one case per
    (weights, depth) with its parameters, theory (mean, variance, lambda_max, point mass at
    zero, mass below the grid, density and CDF on the grid), empirical moments with standard
    errors across networks and the fraction of eigenvalues below the grid, and the KS distance
    (taken on the grid only).
  """
  from isometry.results import plots  # Deferred: matplotlib takes a second to import.
  started = time.time()
  sigma_w, sigma_b = config.scales()
  key = jax.random.key(config.seed)
  cases = []
  for weights in config.weights:
    start = time.time()
    logging.info("sampling %d %s networks of width %d to depth %d (compiles first)",
                 config.num_networks, weights, config.width, max(config.depths))
    samples = jacobian.jacobian_squared_singular_values(
        key, config.activation, weights, sigma_w, sigma_b, config.depths, config.width,
        config.num_networks)
    logging.info("sampled %s networks in %.1fs", weights, time.time() - start)
    for depth, depth_samples in zip(config.depths, samples):
      start = time.time()
      case = compare(config, weights, depth, depth_samples)
      cases.append(case)
      logging.info("%s %s L=%d: KS %.4f, below grid %.3f (theory %.3f), mean %.3g (theory %.3g, "
                   "z %.1f), var %.3g (theory %.3g, z %.1f), %.1fs", config.activation, weights,
                   depth, case["ks_distance"], case["empirical"]["fraction_below_grid"],
                   case["theory"]["mass_below_grid"], case["empirical"]["mean"],
                   case["theory"]["mean"], case["empirical"]["mean_z_score"],
                   case["empirical"]["variance"], case["theory"]["variance"],
                   case["empirical"]["variance_z_score"], time.time() - start)
  result = {"config": dataclasses.asdict(config), "seconds": time.time() - started,
            "cases": cases}
  io.write_json(f"{out_dir}/spectra.json", result)
  io.save_figure(plots.spectra_figure(result), f"{out_dir}/spectra.png")
  return result
