"""Figures of a training run, read from its metrics.json (written by `isometry.engine.train.run`).

  singular_values.png  per configuration, the tracked weight's singular values over epochs:
                       mean +- std (band) and min / max (lines), averaged over seeds (min and
                       max are the extremes over seeds), like the seed notebook's Fig. 7.
  curves.png           train / validation loss and accuracy over epochs, per configuration the
                       mean over seeds with a 95% t-interval band (Fig. 8).
  gradients.png        RNN: ||dL/dh_t|| against t at init and after the last epoch; MLP:
                       ||dL/dh_l|| against layer l; mean over seeds, log scale.
  monitor.png          only for runs with the isometry monitor on (`monitor_probes` > 0): per
                       member, the mean and variance of the squared singular values of its own
                       Jacobian per epoch (+- 2 standard errors of the probes), next to the
                       tracked kernel's singular values (min, mean +- std, max).
Members are grouped into configurations by `config.label` (monitor.png: one row per member, at
most MONITOR_MEMBERS). Nothing calls plt.show().
"""
import os

import numpy as np

from isometry.results import io
from isometry.results import plots
from isometry.results.stats import mean_ci


def _groups(metrics: dict) -> dict:
  groups = {}
  for member in metrics["members"]:
    groups.setdefault(member["config"]["label"], []).append(member)
  return groups


def _series(members: list, key: str, initial: bool = False) -> np.ndarray:
  """(seeds, epochs) array of `key` per epoch (None -> NaN), optionally with the init first."""
  rows = []
  for m in members:
    entries = ([m["initial"]] if initial else []) + m["epochs"]
    rows.append([np.nan if e.get(key) is None else e[key] for e in entries])
  return np.array(rows, np.float64)


def _sv_series(members: list, stat: str) -> np.ndarray:
  return np.array([[e["singular_values"][stat] for e in [m["initial"]] + m["epochs"]]
                   for m in members], np.float64)


def plot_singular_values(metrics: dict, path: str) -> None:
  """One panel per configuration: singular values over epochs (epoch 0 = init)."""
  plt = plots.pyplot()
  groups = _groups(metrics)
  cols = min(3, len(groups))
  rows = -(-len(groups) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), sharey=True,
                           squeeze=False)
  for ax, (label, members) in zip(axes.flat, groups.items()):
    mean = _sv_series(members, "mean").mean(axis=0)
    std = _sv_series(members, "std").mean(axis=0)
    low = _sv_series(members, "min").min(axis=0)
    high = _sv_series(members, "max").max(axis=0)
    epochs = np.arange(len(mean))
    ax.fill_between(epochs, mean - std, mean + std, color="tab:orange", alpha=0.5,
                    label="mean $\\pm$ std")
    ax.plot(epochs, mean, color="tab:blue", label="mean")
    ax.plot(epochs, high, color="tab:red", label="max")
    ax.plot(epochs, low, color="tab:green", label="min")
    gain = members[0]["config"]["gain"]
    ax.axhline(gain, color="black", linestyle="--", alpha=0.3)
    ax.set_title(f"{label} ({len(members)} seeds)", fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  for ax in axes[:, 0]:
    ax.set_ylabel("singular values")
  for ax in list(axes.flat)[len(groups):]:
    ax.axis("off")
  axes.flat[0].legend(loc="best", fontsize=8)
  fig.tight_layout()
  io.save_figure(fig, path)


def plot_curves(metrics: dict, path: str) -> None:
  """Loss and accuracy curves: mean over seeds and 95% t-interval per configuration."""
  plt = plots.pyplot()
  groups = _groups(metrics)
  panels = (("train_loss", "train loss", False), ("val_loss", "validation loss", True),
            ("train_accuracy", "train accuracy", False),
            ("val_accuracy", "validation accuracy", True))
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  colors = plt.get_cmap("tab10")
  for ax, (key, title, with_initial) in zip(axes.flat, panels):
    for c, (label, members) in enumerate(groups.items()):
      values = _series(members, key, initial=with_initial)
      mean, half = mean_ci(values, axis=0)
      epochs = np.arange(values.shape[1]) + (0 if with_initial else 1)
      plots.band(ax, epochs, mean, half, color=colors(c % 10), label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  axes[0, 0].legend(fontsize=7, loc="best")
  fig.suptitle("mean over seeds, band: 95% t-interval", fontsize=9)
  fig.tight_layout()
  io.save_figure(fig, path)


def plot_gradients(metrics: dict, path: str) -> None:
  """Gradient norms at init (dashed) and after the last epoch (solid), mean over seeds."""
  plt = plots.pyplot()
  groups = _groups(metrics)
  first = metrics["members"][0]
  if "grad_norm_through_time" in first["initial"]:
    steps = metrics.get("grad_norm_time_steps",
                        list(range(len(first["initial"]["grad_norm_through_time"]))))

    def values(entry):
      return entry["grad_norm_through_time"]
    xlabel, ylabel = "time step t", "$\\|\\partial L / \\partial h_t\\|$"
  else:
    steps = None

    def values(entry):
      return entry["grad_norm_by_layer"]["activations"]
    xlabel, ylabel = "layer l", "$\\|\\partial L / \\partial h_l\\|$"
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = plt.get_cmap("tab10")
  for c, (label, members) in enumerate(groups.items()):
    for which, style in (("initial", "--"), ("last", "-")):
      rows = []
      for m in members:
        entry = m["initial"] if which == "initial" else (m["epochs"] or [m["initial"]])[-1]
        rows.append([np.nan if v is None else v for v in values(entry)])
      lengths = {len(r) for r in rows}
      if len(lengths) != 1:  # MLP members of one label share a depth; skip if not.
        continue
      mean = np.nanmean(np.array(rows, np.float64), axis=0)
      x = steps if steps is not None else np.arange(len(mean))
      ax.plot(x, mean, style, color=colors(c % 10),
              label=label if which == "last" else None)
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title("gradient norms on a probe batch: init (dashed), last epoch (solid)", fontsize=9)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  io.save_figure(fig, path)


# monitor.png shows at most this many members (the first ones), one row each.
MONITOR_MEMBERS = 8


def has_monitor(metrics: dict) -> bool:
  """Whether the run recorded the isometry monitor (every member, at init)."""
  return bool(metrics["members"]) and all("jacobian" in m["initial"] for m in metrics["members"])


def monitor_series(member: dict) -> dict:
  """One member's monitor and kernel spectrum per epoch (0 = init), as float arrays (E + 1,).

  Returns:
    {"epoch", "mean", "mean_se", "variance", "variance_se"}: the isometry monitor, the mean and
    variance of the squared singular values of the member's Jacobian and their standard errors
    (None -> NaN); {"sv_min", "sv_mean", "sv_std", "sv_max"}: the tracked kernel's singular
    values.
  """
  entries = [member["initial"]] + member["epochs"]
  series = {"epoch": np.arange(len(entries), dtype=np.float64)}
  for key in ("mean", "mean_se", "variance", "variance_se"):
    series[key] = np.array([np.nan if e["jacobian"][key] is None else e["jacobian"][key]
                            for e in entries], np.float64)
  for stat in ("min", "mean", "std", "max"):
    series[f"sv_{stat}"] = np.array([e["singular_values"][stat] for e in entries], np.float64)
  return series


def plot_monitor(metrics: dict, path: str) -> None:
  """Per member (one row): the Jacobian's spectrum summary per epoch (left, log scale; an
  isometric Jacobian has mean 1 and variance 0; bands of 2 standard errors, cut at a tenth of
  the value so that they stay on the log axis) and the tracked kernel's singular values (right,
  dashed line: the member's gain)."""
  plt = plots.pyplot()
  members = metrics["members"][:MONITOR_MEMBERS]
  fig, axes = plt.subplots(len(members), 2, figsize=(10, 2.8 * len(members)), squeeze=False)
  for (left, right), member in zip(axes, members):
    s = monitor_series(member)
    for key, color, label in (("mean", "tab:blue", "mean of $\\sigma^2$"),
                              ("variance", "tab:red", "variance of $\\sigma^2$")):
      low = np.maximum(s[key] - 2 * s[f"{key}_se"], s[key] / 10)   # keep the band positive
      left.fill_between(s["epoch"], low, s[key] + 2 * s[f"{key}_se"], color=color, alpha=0.2)
      left.plot(s["epoch"], s[key], "o-", ms=3, color=color, label=label)
    left.axhline(1.0, color="black", linestyle="--", alpha=0.3)
    left.set_yscale("log")
    config = member["config"]
    left.set_title(f"{config['label']} seed {config['seed']}: Jacobian "
                   "(band: 2 standard errors)", fontsize=9)
    right.fill_between(s["epoch"], s["sv_mean"] - s["sv_std"], s["sv_mean"] + s["sv_std"],
                       color="tab:orange", alpha=0.5, label="mean $\\pm$ std")
    right.plot(s["epoch"], s["sv_max"], color="tab:red", label="max")
    right.plot(s["epoch"], s["sv_mean"], color="tab:blue", label="mean")
    right.plot(s["epoch"], s["sv_min"], color="tab:green", label="min")
    right.axhline(config["gain"], color="black", linestyle="--", alpha=0.3)
    right.set_title("kernel singular values", fontsize=9)
    for ax in (left, right):
      ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  axes[-1, 0].set_xlabel("epoch (0 = init)")
  axes[-1, 1].set_xlabel("epoch (0 = init)")
  axes[0, 0].legend(fontsize=7, loc="best")
  axes[0, 1].legend(fontsize=7, loc="best")
  shown = len(members)
  total = len(metrics["members"])
  fig.suptitle(f"isometry monitor: squared singular values of each member's Jacobian "
               f"({shown} of {total} members)", fontsize=10)
  fig.tight_layout()
  io.save_figure(fig, path)


def plot_run(out_dir: str) -> list:
  """Writes the run's figures next to its metrics.json (monitor.png only where the run has the
  monitor); returns their paths."""
  metrics = io.read_json(os.path.join(out_dir, "metrics.json"))
  figures = [("singular_values.png", plot_singular_values), ("curves.png", plot_curves),
             ("gradients.png", plot_gradients)]
  if has_monitor(metrics):
    figures.append(("monitor.png", plot_monitor))
  paths = []
  for name, plot in figures:
    path = os.path.join(out_dir, name)
    plot(metrics, path)
    paths.append(path)
  return paths
