"""Figures: the theory results' own, and the helpers every figure of the package shares.

Each figure function takes the JSON a run wrote and returns a Figure; nothing here calls
`plt.show()` (callers save with `isometry.results.io.save_figure`). matplotlib takes a second to import,
so it is imported on first use, by `pyplot`, the one place that imports it for a figure.
"""
import numpy as np

# One colour per weight distribution, in every figure.
WEIGHT_COLORS = {"orthogonal": "tab:blue", "gaussian": "tab:red"}


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (imported on the first call)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def band(ax, x, mean, half, *, color, style="-", alpha=0.2, label=None, lw=None) -> None:
  """A mean curve with its interval (mean +- half) as a shaded band."""
  mean, half = np.asarray(mean, np.float64), np.asarray(half, np.float64)
  ax.plot(x, mean, style, color=color, lw=lw, label=label)
  ax.fill_between(x, mean - half, mean + half, color=color, alpha=alpha)


def errorbar_with_seeds(ax, x, means, halves, values, *, color, fmt="o", capsize=3, dx=0.0,
                        alpha=0.4, ms=4, label=None) -> None:
  """Means with interval bars at positions x, and each position's per-seed values as dots
  beside it (at x + dx), so a reader sees the spread behind every bar."""
  ax.errorbar(x, means, yerr=halves, fmt=fmt, color=color, capsize=capsize, label=label)
  for xi, seeds in zip(np.atleast_1d(x), values):
    ax.plot(np.full(len(seeds), xi + dx), seeds, ".", color=color, alpha=alpha, ms=ms)


def spectra_figure(result: dict):
  """Predicted density over the empirical histogram, one column per depth, one row per weights.

  Both are densities of log10(lambda) (rho(lambda) lambda ln 10 for the theory), because the
  spectra spread over many decades as depth grows; like Figure 2 of Pennington, Schoenholz &
  Ganguli 2017, orthogonal beside Gaussian.
  """
  plt = pyplot()
  cases = result["cases"]
  weights = list(dict.fromkeys(c["weights"] for c in cases))
  depths = sorted({c["depth"] for c in cases})
  fig, axes = plt.subplots(len(weights), len(depths), squeeze=False,
                           figsize=(3.2 * len(depths), 2.6 * len(weights)))
  for case in cases:
    ax = axes[weights.index(case["weights"]), depths.index(case["depth"])]
    hist = case["empirical_log10_histogram"]
    edges = np.asarray(hist["edges"])
    ax.stairs(hist["density"], edges, fill=True,
              color=WEIGHT_COLORS.get(case["weights"], "gray"), alpha=0.35,
              label=f"N={case['width']}, {case['num_networks']} nets")
    lam = np.asarray(case["theory"]["lambdas"])
    ax.plot(np.log10(lam), np.asarray(case["theory"]["density"]) * lam * np.log(10), "k-", lw=1.2,
            label="free probability")
    ax.set_title(f"{case['weights']}, L={case['depth']}", fontsize=10)
    ax.text(0.03, 0.95, f"KS={case['ks_distance']:.3f}", transform=ax.transAxes, va="top",
            fontsize=8)
    ax.set_xlabel(r"$\log_{10}\lambda$ ($\lambda = s^2$)")
    ax.set_xlim(edges[0], edges[-1])
  for row in axes:
    row[0].set_ylabel(r"density of $\log_{10}\lambda$")
  axes[0][0].legend(fontsize=7, loc="center left")
  first = cases[0]
  fig.suptitle(f"Squared singular values of the input-output Jacobian: {first['activation']}, "
               f"sigma_w={first['sigma_w']:.4g}, sigma_b={first['sigma_b']:.4g}, "
               f"q*={first['q_star']:.4g}, chi={first['chi']:.4f}", fontsize=10)
  fig.tight_layout()
  return fig
