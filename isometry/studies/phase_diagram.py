"""The order-to-chaos phase diagram in the (sigma_w^2, sigma_b^2) plane, as data and a figure.

`run(config, out_dir)` evaluates `correlations.phase_diagram` on a grid and writes
  phase_diagram.json: the config, the grids, and q*, chi, c*, xi_q, xi_c as nested lists
                      ([i][j] at sigma_w2[i], sigma_b2[j]; 10 significant digits; NaN and
                      Infinity as Python's json writes them, e.g. q* = Infinity for relu beyond
                      chi = 1), and the critical points marked on the figure;
  phase_diagram.png:  left, log chi on a diverging colour map centred at chi = 1 with the chi = 1
                      contour, the phases labelled and points of given q* on the critical line
                      (the layout of Pennington, Schoenholz & Ganguli 2017, Fig. 1); right, the
                      correlation depth scale xi_c, which diverges on that line (Schoenholz et
                      al. 2016, Fig. 1).
"""
import dataclasses
import logging
import os
import time
from typing import Tuple

import numpy as np

from isometry.results import io
from isometry.theory import correlations
from isometry.theory import meanfield
from isometry.theory.activations import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class PhaseDiagramConfig:
  """The window and resolution of a phase diagram.

  Attributes:
    activation: the nonlinearity (a name in isometry.theory.activations.ACTIVATIONS).
    sigma_w2_min, sigma_w2_max: the weight-variance axis sigma_w^2 (> 0).
    sigma_b2_min, sigma_b2_max: the bias-variance axis sigma_b^2 (>= 0).
    grid: grid points per axis, in [2, 1001].
    q_star_marks: fixed points q* whose critical points (chi = 1) are marked where they fall in
      the window.
  """
  activation: str = "tanh"          # a name from isometry.theory.activations
  sigma_w2_min: float = 0.5         # weight-variance axis (sigma_w^2), > 0
  sigma_w2_max: float = 4.0
  sigma_b2_min: float = 0.0         # bias-variance axis (sigma_b^2), >= 0
  sigma_b2_max: float = 0.5
  grid: int = 121                   # points per axis
  # Fixed points q* whose critical points (chi = 1) are marked, where they fall in the window.
  q_star_marks: Tuple[float, ...] = (1 / 64, 1 / 4, 1 / 2, 1.0, 2.0)

  def validate(self) -> None:
    """Raises ValueError with a one-line message for an unusable config."""
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; choose one of "
                       f"{', '.join(sorted(ACTIVATIONS))}")
    if not 0 < self.sigma_w2_min < self.sigma_w2_max:
      raise ValueError(f"need 0 < sigma_w2_min < sigma_w2_max, got {self.sigma_w2_min}, "
                       f"{self.sigma_w2_max}")
    if not 0 <= self.sigma_b2_min < self.sigma_b2_max:
      raise ValueError(f"need 0 <= sigma_b2_min < sigma_b2_max, got {self.sigma_b2_min}, "
                       f"{self.sigma_b2_max}")
    if not 2 <= self.grid <= 1001:
      raise ValueError(f"grid must be in [2, 1001], got {self.grid}")
    if not all(q > 0 for q in self.q_star_marks):
      raise ValueError(f"q_star_marks must be > 0, got {self.q_star_marks}")


def _critical_marks(config):
  """[(q*, sigma_w^2, sigma_b^2)] on the critical line inside the plotted window."""
  marks = []
  for q in config.q_star_marks:
    try:
      sw, sb = meanfield.critical_point(config.activation, q)
    except ValueError:
      continue
    point = (float(q), float(sw)**2, float(sb)**2)
    if (config.sigma_w2_min <= point[1] <= config.sigma_w2_max
        and config.sigma_b2_min <= point[2] <= config.sigma_b2_max):
      marks.append(point)
  return marks


def _distinct_marks(marks):
  """[(label, sigma_w^2, sigma_b^2)]: one per point; relu and linear map every q* to one point."""
  distinct = []
  for q, w2, b2 in marks:
    same = [i for i, m in enumerate(distinct) if abs(m[1] - w2) + abs(m[2] - b2) < 1e-9]
    if same:
      distinct[same[0]] = (r"any $q^*$", w2, b2)
    else:
      distinct.append((rf"$q^*={_q_label(q)}$", w2, b2))
  return distinct


def _q_label(q):
  inverse = 1 / q
  if q < 1 and abs(inverse - round(inverse)) < 1e-9:
    return f"1/{round(inverse)}"
  return f"{q:g}"


def _plot(config, sigma_w2, sigma_b2, diagram, marks, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import colors

  extent = (sigma_w2[0], sigma_w2[-1], sigma_b2[0], sigma_b2[-1])
  log_chi = np.log10(diagram.chi).T                       # rows: sigma_b2, columns: sigma_w2
  span = max(float(np.nanmax(np.abs(log_chi))), 1e-3)
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), constrained_layout=True)

  ax = axes[0]
  image = ax.imshow(log_chi, origin="lower", extent=extent, aspect="auto", cmap="RdBu_r",
                    norm=colors.TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span),
                    interpolation="bilinear")
  bar = fig.colorbar(image, ax=ax, pad=0.02)
  bar.set_label(r"$\log_{10}\chi$")
  ax.set_title(rf"Mean squared singular value per layer $\chi$ ({config.activation})")

  # xi_c is inf exactly on the line and nan where q* does not exist; the colour scale stops at
  # 1e3 layers.
  xi_max = 1e3
  xi_c = np.minimum(diagram.xi_c, xi_max).T
  ax_xi = axes[1]
  image = ax_xi.imshow(np.maximum(xi_c, 1.0), origin="lower", extent=extent,
                       aspect="auto", cmap="magma",
                       norm=colors.LogNorm(vmin=max(1.0, float(np.nanmin(xi_c))), vmax=xi_max),
                       interpolation="bilinear")
  bar = fig.colorbar(image, ax=ax_xi, pad=0.02, extend="max")
  bar.set_label(r"$\xi_c$ (layers)")
  ax_xi.set_title(r"Correlation depth scale $\xi_c = -1/\log\chi_c$")

  finite_q = np.isfinite(diagram.q_star).T
  for a in axes:
    if not np.all(finite_q):
      # Unbounded q (relu, linear beyond chi = 1): hatch where no fixed point exists.
      a.contourf(sigma_w2, sigma_b2, (~finite_q).astype(float), levels=[0.5, 1.5],
                 colors="none", hatches=["//"])
      a.text(0.97, 0.03, r"hatched: no finite $q^*$", transform=a.transAxes, ha="right",
             va="bottom", fontsize=9, color="0.15",
             bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.8))
    if np.nanmin(diagram.chi) < 1 < np.nanmax(diagram.chi):
      a.contour(sigma_w2, sigma_b2, log_chi, levels=[0.0], colors="k", linewidths=1.8)
    a.set_xlabel(r"$\sigma_w^2$")
    a.set_ylabel(r"$\sigma_b^2$")

  # Each phase is labelled above (ordered) or below (chaotic) the middle of the window, at the
  # mean sigma_w^2 of the grid points it occupies, so the labels stay clear of the tilted line.
  # The x position is clamped so that the text box stays inside the axes.
  w_grid = np.broadcast_to(sigma_w2[None, :], log_chi.shape)
  w_range = sigma_w2[-1] - sigma_w2[0]
  for inside, height, name, colour in (
      (log_chi < 0, 0.62, "ordered\n" + r"$\chi<1$, vanishing gradients", "#08306b"),
      (log_chi > 0, 0.22, "chaotic\n" + r"$\chi>1$, exploding gradients", "#67000d")):
    if np.mean(inside) > 0.05:
      x = np.clip((np.mean(w_grid[inside]) - sigma_w2[0]) / w_range, 0.23, 0.77)
      axes[0].text(x, height, name, color=colour, transform=axes[0].transAxes,
                   fontsize=11, fontweight="bold", ha="center", va="center",
                   bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="none", alpha=0.6))

  marks = _distinct_marks(marks)
  if marks:
    cmap = plt.get_cmap("viridis")
    for k, (label, w2, b2) in enumerate(marks):
      colour = cmap(k / max(len(marks) - 1, 1))
      for a in axes:
        a.plot(w2, b2, "o", ms=8, mfc=colour, mec="white", mew=1.2, zorder=5, clip_on=False,
               label=label if a is axes[0] else None)
    axes[0].legend(loc="upper right", fontsize=8.5, title="on the critical line",
                   title_fontsize=8.5, framealpha=0.9)

  io.save_figure(fig, path)


def _rounded(array):
  """Nested lists with 10 significant digits: the file is for plots and lookups, and full
  float64 precision is a function call away (correlations.phase_diagram)."""
  return np.vectorize(lambda v: float(f"{v:.10g}"), otypes=[float])(np.asarray(array)).tolist()


def run(config: PhaseDiagramConfig, out_dir: str) -> dict:
  """Computes the phase diagram of `config` and writes its JSON and PNG into out_dir.

  Returns:
    The dict written to phase_diagram.json.
  """
  config.validate()
  start = time.time()
  sigma_w2 = np.linspace(config.sigma_w2_min, config.sigma_w2_max, config.grid)
  sigma_b2 = np.linspace(config.sigma_b2_min, config.sigma_b2_max, config.grid)
  diagram = correlations.phase_diagram(config.activation, sigma_w2, sigma_b2)
  marks = _critical_marks(config)
  seconds = time.time() - start

  result = {
      "config": dataclasses.asdict(config),
      "layout": "field[i][j] is at (sigma_w2[i], sigma_b2[j])",
      "sigma_w2": sigma_w2.tolist(),
      "sigma_b2": sigma_b2.tolist(),
      **{name: _rounded(value) for name, value in diagram._asdict().items()},
      "critical_points": [{"q_star": q, "sigma_w2": w2, "sigma_b2": b2} for q, w2, b2 in marks],
      "seconds": seconds,
  }
  os.makedirs(out_dir, exist_ok=True)
  io.write_json(os.path.join(out_dir, "phase_diagram.json"), result)
  _plot(config, sigma_w2, sigma_b2, diagram, marks, os.path.join(out_dir, "phase_diagram.png"))
  logging.info("phase diagram of %s on a %d x %d grid in %.1fs -> %s", config.activation,
               config.grid, config.grid, seconds, out_dir)
  return result
