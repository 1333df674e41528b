"""Figures of the theory results; each function takes the JSON a run wrote and returns a Figure.

Nothing here calls `plt.show()`: callers save with `isometry.io.save_figure`.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = {"orthogonal": "tab:blue", "gaussian": "tab:red"}


def spectra_figure(result: dict):
  """Predicted density over the empirical histogram, one column per depth, one row per weights.

  Both are densities of log10(lambda) (rho(lambda) lambda ln 10 for the theory), because the
  spectra spread over many decades as depth grows; like Figure 2 of Pennington, Schoenholz &
  Ganguli 2017, orthogonal beside Gaussian.
  """
  cases = result["cases"]
  weights = list(dict.fromkeys(c["weights"] for c in cases))
  depths = sorted({c["depth"] for c in cases})
  fig, axes = plt.subplots(len(weights), len(depths), squeeze=False,
                           figsize=(3.2 * len(depths), 2.6 * len(weights)))
  for case in cases:
    ax = axes[weights.index(case["weights"]), depths.index(case["depth"])]
    hist = case["empirical_log10_histogram"]
    edges = np.asarray(hist["edges"])
    ax.stairs(hist["density"], edges, fill=True, color=_COLORS.get(case["weights"], "gray"),
              alpha=0.35, label=f"N={case['width']}, {case['num_networks']} nets")
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
