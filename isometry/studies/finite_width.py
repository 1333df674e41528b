"""Study: finite-width moments of deep-network Jacobian spectra, many networks against theory.

Samples hundreds to thousands of networks per width N and depth L with the matrix-free sampler of
`isometry.theory.finite_width` and sets E[m_1], E[var] and Var(m_1) of the squared singular values
of J (95% intervals over networks) against the infinite-width free-probability values, the exact
independent-layers recursion and the forward-pass correction derived there (the estimand, the
sampler and the derivation are in that module's docstring). `run(config, out_dir)` writes
finite_width.json and finite_width.png (mean, variance ratio and spread against L / N).
"""
import dataclasses
import os
import time
from typing import Tuple

import jax
import numpy as np
from absl import logging

from isometry.results import io
from isometry.results import stats
from isometry.theory import meanfield
from isometry.theory.finite_width import (LAWS, MODELS, SMOOTH, continuum, layer_constants,
                                          predictions, sample_moments)

_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclasses.dataclass(frozen=True)
class FiniteWidthConfig:
  """Many networks per (width, depth), both weight laws, against theory with and without 1/N.

  Attributes:
    activation: tanh or erf (smooth: the correction differentiates phi four times).
    q_star: fixed point on the critical line chi = 1 (1.0: sigma_w = 1.4674, sigma_b = 0.3885).
    weights: weight laws: orthogonal, gaussian.
    widths: widths N.
    depths: depths L recorded on each chain (the deepest sets the cost).
    num_networks: independent networks at each width (same order as widths).
    num_probes: Gaussian probes per network (P + 1 <= the smallest width); the probe noise is
      part of the spread between networks.
    control_widths: widths where the independent-layers model (D**2 drawn independently of
      the forward pass, step 1 of the module docstring) is sampled too, as a check of the exact
      recursion.
    reference: (width, depth, networks) of the README's dense run: the study reports the
      distribution of an n-network pooled estimate there.
    chunk: networks per compiled call.
    seed: PRNG seed.
  """
  activation: str = "tanh"
  q_star: float = 1.0
  weights: Tuple[str, ...] = LAWS
  widths: Tuple[int, ...] = (128, 250, 500, 1000, 2000)
  depths: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
  num_networks: Tuple[int, ...] = (2048, 2048, 1024, 1024, 512)
  num_probes: int = 32
  control_widths: Tuple[int, ...] = (250,)
  reference: Tuple[int, ...] = (1000, 128, 3)
  chunk: int = 64
  seed: int = 0

  def __post_init__(self):
    if self.activation not in SMOOTH:
      raise ValueError(f"activation must be one of {', '.join(SMOOTH)}, got {self.activation!r}")
    meanfield.critical_point(self.activation, self.q_star)
    if not self.weights or any(w not in LAWS for w in self.weights):
      raise ValueError(f"weights must name some of {', '.join(LAWS)}, got {self.weights}")
    if not self.widths or len(self.widths) != len(self.num_networks):
      raise ValueError(f"num_networks must give one count per width: {self.num_networks} for "
                       f"widths {self.widths}")
    if any(n < 2 for n in self.num_networks):
      raise ValueError(f"num_networks must be >= 2, got {self.num_networks}")
    if not self.depths or any(int(d) != d or d < 1 for d in self.depths):
      raise ValueError(f"depths must be integers >= 1, got {self.depths}")
    if self.num_probes < 4 or any(self.num_probes + 1 > n for n in self.widths):
      raise ValueError(f"num_probes must be >= 4 and below every width, got {self.num_probes} "
                       f"for widths {self.widths}")
    if any(n not in self.widths for n in self.control_widths):
      raise ValueError(f"control_widths must be among widths, got {self.control_widths}")
    if len(self.reference) != 3 or min(self.reference) < 1:
      raise ValueError(f"reference must be (width, depth, networks), got {self.reference}")
    if self.chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {self.chunk}")

  @classmethod
  def quick(cls) -> "FiniteWidthConfig":
    """A smoke run of a few seconds: one small width, three depths, few networks and probes."""
    return cls(widths=(24,), depths=(1, 4, 12), num_networks=(16,), num_probes=6,
               control_widths=(24,), reference=(24, 12, 3), chunk=16)


def _interval(values) -> dict:
  mean, half = stats.mean_ci(values)
  quantiles = np.quantile(values, _QUANTILES)
  return {"mean": float(mean), "ci95": float(half), "n": int(len(values)),
          "quantiles": {f"{q:g}": float(v) for q, v in zip(_QUANTILES, quantiles)}}


def _spread(values, probe_variance, rng, resamples=1000) -> dict:
  """Var across networks (minus the probe noise), with a bootstrap 95% interval."""
  n = len(values)
  boot = np.var(values[rng.integers(0, n, (resamples, n))], axis=1, ddof=1)
  low, high = np.quantile(boot, (0.025, 0.975))
  return {"value": float(np.var(values, ddof=1) - probe_variance),
          "ci95_low": float(low - probe_variance), "ci95_high": float(high - probe_variance),
          "probe_variance": float(probe_variance)}


def _pooled(m1, var, n, rng, resamples=20000) -> dict:
  """Distribution of what `spectra.py` reports from n networks: the mean of their m_1 and the
  variance of their pooled eigenvalues, mean(var_i) + population variance of the m_1,i."""
  pick = rng.integers(0, len(m1), (resamples, n))
  mean = m1[pick].mean(axis=1)
  pooled_var = var[pick].mean(axis=1) + m1[pick].var(axis=1)
  q = (0.025, 0.16, 0.5, 0.84, 0.975)
  return {"networks": n, "quantile_levels": list(q),
          "mean_quantiles": np.quantile(mean, q).tolist(),
          "pooled_variance_quantiles": np.quantile(pooled_var, q).tolist()}


def _rounded(values, digits=5):
  return [float(f"{v:.{digits}g}") for v in values]


def summarize(config: FiniteWidthConfig, weights: str, model: str, width: int,
              samples: np.ndarray, rng) -> list:
  """One record per depth for one (weights, model, width) from (networks, depths, 7) samples."""
  theory = predictions(config.activation, config.q_star, weights, width, config.depths)
  records = []
  for i, depth in enumerate(config.depths):
    m1, m2, m11 = samples[:, i, 0], samples[:, i, 1], samples[:, i, 2]
    var = m2 - m11
    # Halves of the probes are independent given the network: (a - b)**2 / 4 estimates the probe
    # variance of their average: exact for m_1, an overestimate for var (the full U-statistic
    # also uses the pairs across halves). Only Var(m_1) is corrected with it.
    probe_m1 = float(np.mean(np.square(samples[:, i, 3] - samples[:, i, 5])) / 4)
    probe_var = float(np.mean(np.square(samples[:, i, 4] - samples[:, i, 6])) / 4)
    record = {
        "weights": weights, "model": model, "width": width, "depth": depth,
        "depth_over_width": depth / width, "networks": int(len(m1)),
        "mean": _interval(m1), "variance": _interval(var), "second_moment": _interval(m2),
        "mean_spread": _spread(m1, probe_m1, rng),
        "probe_variance": {"mean": probe_m1, "variance": probe_var},
        "theory": {
            "infinite_width": {"mean": float(theory["infinite_width"]["mean"][i]),
                               "variance": float(theory["infinite_width"]["variance"][i])},
            **{name: {key: float(theory[name][key][i]) for key in
                      ("mean", "variance", "second_moment", "mean_spread")}
               for name in ("independent_layers", "network")}},
    }
    if depth == max(config.depths):
      record["values"] = {"mean": _rounded(m1), "variance": _rounded(var)}
    if (width, depth) == tuple(config.reference[:2]) and model == "network":
      record["pooled_estimate"] = _pooled(m1, var, config.reference[2], rng)
    records.append(record)
  return records


def run(config: FiniteWidthConfig, out_dir: str) -> dict:
  """Samples every (width, weights, model), compares with theory, writes finite_width.json and
  finite_width.png into out_dir.

  Returns:
    The JSON content: {"config", "seconds", "constants": {weights: LayerConstants dict},
    "cases": [one record per (weights, model, width, depth), see `summarize`]}.
  """
  started, cpu_started, load_started = time.time(), time.process_time(), os.getloadavg()
  key = jax.random.key(config.seed)
  rng = np.random.default_rng(config.seed)
  cases = []
  for width, count in zip(config.widths, config.num_networks):
    models = MODELS if width in config.control_widths else ("network",)
    states = [(w, m) for m in models for w in config.weights]
    start = time.time()
    samples = sample_moments(jax.random.fold_in(key, width), config.activation, config.q_star,
                             width, config.depths, count, config.num_probes, states,
                             config.chunk)
    logging.info("width %d: %d networks x %d states to depth %d in %.1fs", width, count,
                 len(states), max(config.depths), time.time() - start)
    for (weights, model), part in zip(states, samples):
      for record in summarize(config, weights, model, width, part, rng):
        cases.append(record)
        logging.info("%s %s N=%d L=%d: mean %.3f +- %.3f (theory %.3f / corrected %.3f), "
                     "var %.4g +- %.2g (inf %.4g, indep %.4g, corrected %.4g)", weights, model,
                     width, record["depth"], record["mean"]["mean"], record["mean"]["ci95"],
                     record["theory"]["infinite_width"]["mean"],
                     record["theory"]["network"]["mean"], record["variance"]["mean"],
                     record["variance"]["ci95"], record["theory"]["infinite_width"]["variance"],
                     record["theory"]["independent_layers"]["variance"],
                     record["theory"]["network"]["variance"])
  constants = {w: layer_constants(config.activation, config.q_star, w)._asdict()
               for w in config.weights}
  # The machine is shared: the 1-minute load averages say how much of it the run had.
  result = {"config": dataclasses.asdict(config), "seconds": time.time() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "load_average_1min": {"start": load_started[0], "end": os.getloadavg()[0]},
            "constants": constants, "cases": cases}
  io.write_json(f"{out_dir}/finite_width.json", result)
  io.save_figure(figure(result), f"{out_dir}/finite_width.png")
  return result


_WIDTH_MARKERS = "osD^vP*X"


def figure(result: dict):
  """Mean, variance (over its infinite-width value) and spread of m_1 against L / N.

  One column per weight law. Points: networks of the sampled model with 95% intervals over
  networks, one marker per width (open markers: the independent-layers model). Lines: the
  continuum limit (steps 2-3 of the module docstring) of the infinite-width theory, of
  independent layers, and of the network with the forward-pass correction. Where the per-network
  values are heavy-tailed (Gaussian weights at L / N >= 0.5) the t-intervals undercover: the
  independent-layers model, whose recursion is exact, shows how far.
  """
  import matplotlib
  import matplotlib.ticker  # noqa: F401  (FixedLocator, FixedFormatter)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cases = result["cases"]
  laws = list(dict.fromkeys(c["weights"] for c in cases))
  widths = sorted({c["width"] for c in cases})
  fig, axes = plt.subplots(3, len(laws), squeeze=False, figsize=(5.2 * len(laws), 10.5),
                           sharex=True)
  tau_max = max(c["depth_over_width"] for c in cases)
  tau = np.geomspace(min(c["depth_over_width"] for c in cases) / 1.3, tau_max * 1.15, 200)
  for col, law in enumerate(laws):
    k = result["constants"][law]
    lines = {"infinite width": (0.0, 0.0, None),
             "independent layers": (k["r"] - 1, 0.0, "tab:gray"),
             "network (forward-pass correction)": (k["v"], k["c"], "k")}
    ax_mean, ax_var, ax_spread = axes[:, col]
    for label, (v, c, color) in lines.items():
      if color is None:
        ax_mean.axhline(1.0, color="tab:green", lw=1, label=label)
        ax_var.axhline(1.0, color="tab:green", lw=1, label=label)
        ax_spread.plot(tau, 0 * tau + 1e-9, color="tab:green", lw=1, label=label)
        continue
      theory = continuum(tau, k["s"], v, c)
      style = dict(color=color, lw=1.2, ls="--" if color == "tab:gray" else "-", label=label)
      ax_mean.plot(tau, theory["mean"], **style)
      ax_var.plot(tau, theory["variance_ratio"], **style)
      ax_spread.plot(tau, theory["mean_spread"], **style)
    for w_index, width in enumerate(widths):
      for model in MODELS:
        rows = [c for c in cases if c["weights"] == law and c["width"] == width
                and c["model"] == model]
        if not rows:
          continue
        x = np.array([c["depth_over_width"] for c in rows])
        color = plt.cm.viridis(w_index / max(len(widths) - 1, 1))
        marker = _WIDTH_MARKERS[w_index % len(_WIDTH_MARKERS)]
        face = color if model == "network" else "none"
        label = f"N={width}" + ("" if model == "network" else ", independent layers (open)")
        style = dict(fmt=marker, color=color, mfc=face, ms=4, capsize=2, lw=0.8, label=label)
        ax_mean.errorbar(x, [c["mean"]["mean"] for c in rows],
                         [c["mean"]["ci95"] for c in rows], **style)
        inf = np.array([c["theory"]["infinite_width"]["variance"] for c in rows])
        ax_var.errorbar(x, np.array([c["variance"]["mean"] for c in rows]) / inf,
                        np.array([c["variance"]["ci95"] for c in rows]) / inf, **style)
        spread = np.array([c["mean_spread"]["value"] for c in rows])
        err = np.array([[c["mean_spread"]["value"] - c["mean_spread"]["ci95_low"],
                         c["mean_spread"]["ci95_high"] - c["mean_spread"]["value"]]
                        for c in rows]).T
        ax_spread.errorbar(x, spread, err, **style)
    ax_mean.set_title(f"{law}: E[m1] over networks")
    ax_var.set_title(f"{law}: E[var] / (infinite-width variance)")
    ax_spread.set_title(f"{law}: Var(m1) across networks")
    ax_var.set_yscale("log")
    ax_var.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_var.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_var.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_spread.set_yscale("log")
    ax_spread.set_ylim(bottom=1e-4)
    ax_spread.set_xlabel("L / N")
    ticks = [t for t in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
             if tau[0] <= t <= tau[-1]]
    for ax in axes[:, col]:
      ax.set_xscale("log")
      ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
      ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in ticks]))
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.grid(alpha=0.3, which="major")
  axes[0, 0].legend(fontsize=7, loc="upper left")
  axes[1, 0].legend(fontsize=7, loc="upper left")
  config = result["config"]
  fig.suptitle(f"{config['activation']} on the critical line at q* = {config['q_star']:g}: "
               f"finite-width moments of the squared singular values of J", fontsize=11)
  fig.tight_layout()
  return fig
