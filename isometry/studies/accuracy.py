"""Study C: test accuracy of deep MLPs with vs without dynamical isometry.

Deep fully connected classifiers (`isometry.models.mlp_apply`: depth = hidden layers of `width`
units, a Glorot read-out) trained by `isometry.train` on flattened images, four initializations:

  orthogonal_critical      tanh, Haar-orthogonal hidden kernels with gain sigma_w = sigma_w_c,
                           biases N(0, sigma_b^2), where chi(sigma_w_c, sigma_b) = 1. The
                           input-output Jacobian's singular values concentrate near 1 at every
                           depth when q* is small: dynamical isometry.
  gaussian_critical        tanh, Gaussian kernels (variance sigma_w_c^2 / N) at the same point:
                           chi = 1 (no exponential vanishing / explosion on average) but the
                           Jacobian's spectrum widens with depth (no isometry).
  orthogonal_off_critical  tanh, orthogonal kernels at off_critical_sigma_w (default 2.0: the
                           chaotic phase, chi > 1), same sigma_b: orthogonal weights alone,
                           without criticality.
  relu_he                  relu, Gaussian kernels with He gain sqrt(2), no biases: chi = 1, but
                           relu networks cannot reach dynamical isometry with any weights.

The paper's claim: at depth, orthogonal-critical trains fastest and ReLU / Gaussian inits lag
(Pennington, Schoenholz & Ganguli, "Resurrecting the sigmoid in deep learning through dynamical
isometry: theory and practice", NIPS 2017, figures 5 and 6).

Every (activation, depth) is one `isometry.train` sweep (inits of that activation x seeds in one
vmapped program) in its own folder out_dir/<activation>_depth<depth>/, resumed if already there,
so an interrupted study loses no finished epoch. Depths are separate programs rather than one
depth-masked stack: a masked stack spends the deepest network's compute on every member, which
for depths (2, 8, 16, 32, 64) is 320 / 122 = 2.6x the work. All members of a seed share their
batch order; within one sweep, inits of a seed also share their PRNG key.

`run(config, out_dir)` writes study.json, C1_accuracy_vs_depth.png and C2_learning_curves.png.
"""
import dataclasses
import math
import os
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np

from isometry import data
from isometry.studies import gradients as gradient_study
from isometry import io
from isometry import meanfield
from isometry import stats
from isometry import train

INITS = ("orthogonal_critical", "gaussian_critical", "orthogonal_off_critical", "relu_he")
# |chi - 1| below this would make the "off-critical" init critical in all but name.
_MIN_OFF_CRITICAL_DISTANCE = 0.05


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What study C measures. Defaults: the committed run (see results/C_accuracy/README.md).

  Attributes:
    depths: numbers of hidden layers.
    seeds: seeds per (init, depth) (>= 2 for an interval).
    epochs: training epochs.
    width: hidden units.
    sigma_b: tanh bias scale; the critical sigma_w solves chi(sigma_w, sigma_b) = 1.
    off_critical_sigma_w: sigma_w of the orthogonal off-critical tanh init.
    optimizer, lr, batch_size: one setting for every init (not tuned per init).
    max_train_examples: keep the first n training examples (None: all).
    val_size: training examples held out for validation (learning curves).
    dataset, data_dir: images (data_dir None: data.OFFLINE_DIRS, else TFDS).
    synthetic_data: train on data.synthetic_dataset(learnable=True) (smoke tests, --quick).
  """
  depths: Tuple[int, ...] = (2, 8, 16, 32, 64)
  seeds: int = 5
  epochs: int = 8
  width: int = 128
  sigma_b: float = 0.05
  off_critical_sigma_w: float = 2.0
  optimizer: str = "sgd"
  lr: float = 0.01
  batch_size: int = 128
  max_train_examples: Optional[int] = 8192
  val_size: int = 5000
  dataset: str = "fashion_mnist"
  data_dir: Optional[str] = None
  synthetic_data: bool = False

  def __post_init__(self):
    object.__setattr__(self, "depths", tuple(self.depths))
    if not self.depths or any(int(d) != d or d < 1 for d in self.depths):
      raise ValueError(f"depths must be integers >= 1, got {self.depths}")
    if len(set(self.depths)) != len(self.depths):
      raise ValueError(f"depths must be distinct, got {self.depths}")
    if self.seeds < 2:
      raise ValueError(f"seeds must be >= 2 for a confidence interval, got {self.seeds}")
    for name in ("epochs", "width", "batch_size", "val_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.max_train_examples is not None and self.max_train_examples < self.batch_size:
      raise ValueError(f"max_train_examples ({self.max_train_examples}) must be >= batch_size "
                       f"({self.batch_size})")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr must be > 0, got {self.lr}")
    if self.optimizer not in train.OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of "
                       f"{', '.join(train.OPTIMIZERS)}")
    if not self.sigma_b >= 0:
      raise ValueError(f"sigma_b must be >= 0, got {self.sigma_b}")
    if not self.off_critical_sigma_w > 0:
      raise ValueError(f"off_critical_sigma_w must be > 0, got {self.off_critical_sigma_w}")
    if self.dataset not in data.NAMES:
      raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.NAMES)}")
    chi = float(meanfield.chi("tanh", self.off_critical_sigma_w, self.sigma_b))
    if abs(chi - 1) < _MIN_OFF_CRITICAL_DISTANCE:
      raise ValueError(f"off_critical_sigma_w={self.off_critical_sigma_w} gives chi={chi:.4f} at "
                       f"sigma_b={self.sigma_b}: within {_MIN_OFF_CRITICAL_DISTANCE} of 1, not "
                       "off-critical")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: two shallow depths, tiny width, a synthetic task."""
    settings = dict(depths=(1, 3), seeds=2, epochs=2, width=16, batch_size=16,
                    max_train_examples=None, val_size=32, synthetic_data=True, lr=0.05)
    settings.update(overrides)
    return cls(**settings)


def critical_sigma_w(sigma_b: float) -> float:
  """The tanh sigma_w with chi(sigma_w, sigma_b) = 1 (Schoenholz et al. 2016, the order-to-chaos
  line; Brent's method on meanfield.chi, see `gradient_study.critical_sigma_w`)."""
  return gradient_study.critical_sigma_w("tanh", sigma_b)


def init_specs(config: StudyConfig) -> list:
  """The four initializations with their mean-field numbers.

  Returns:
    [{"name", "activation", "init", "sigma_w", "sigma_b", "chi", "q_star"}] in INITS order;
    q_star is None for relu (no bias: every q is a fixed point).
  """
  sw_c = critical_sigma_w(config.sigma_b)
  tanh = [("orthogonal_critical", "orthogonal", sw_c),
          ("gaussian_critical", "gaussian", sw_c),
          ("orthogonal_off_critical", "orthogonal", config.off_critical_sigma_w)]
  specs = [{"name": name, "activation": "tanh", "init": init, "sigma_w": float(sw),
            "sigma_b": float(config.sigma_b),
            "chi": float(meanfield.chi("tanh", sw, config.sigma_b)),
            "q_star": float(meanfield.q_star("tanh", sw, config.sigma_b))}
           for name, init, sw in tanh]
  he = math.sqrt(2.0)
  specs.append({"name": "relu_he", "activation": "relu", "init": "gaussian", "sigma_w": he,
                "sigma_b": 0.0, "chi": float(meanfield.chi("relu", he, 0.0)), "q_star": None})
  return specs


def run_name(activation: str, depth: int) -> str:
  return f"{activation}_depth{depth}"


def train_config(config: StudyConfig, activation: str, depth: int) -> train.TrainConfig:
  """The sweep of one (activation, depth): its inits x seeds as members, labels = init names."""
  specs = [s for s in init_specs(config) if s["activation"] == activation]
  if not specs:
    raise ValueError(f"no init uses activation {activation!r}")
  members = tuple(train.Member(s["name"], s["init"], s["sigma_w"], lr=config.lr, seed=seed,
                               depth=depth)
                  for s in specs for seed in range(config.seeds))
  data_dir = None if config.synthetic_data else data.resolve_data_dir(config.dataset,
                                                                      config.data_dir)
  return train.TrainConfig(
      members=members, model="mlp", dataset=config.dataset, data_dir=data_dir,
      hidden=config.width, activation=activation, sigma_b=specs[0]["sigma_b"], regularizer="none",
      optimizer=config.optimizer, batch_size=config.batch_size, epochs=config.epochs,
      val_size=config.val_size, max_train_examples=config.max_train_examples)


def load_data(config: StudyConfig) -> data.Dataset:
  """The study's images (one load shared by every sweep).

  Raises:
    data.DataUnavailableError: the dataset cannot be read.
  """
  if config.synthetic_data:
    return data.synthetic_dataset(num_train=max(8 * config.batch_size, 128),
                                  num_val=config.val_size, num_test=64, seed=0, learnable=True)
  return data.load_dataset(config.dataset, data.resolve_data_dir(config.dataset, config.data_dir),
                           val_size=config.val_size)


# ----------------------------------------------------------------------------------------------
# Summaries.


def summarize_run(metrics: dict, name: str, seeds: int) -> dict:
  """One init's numbers in one sweep's metrics.json.

  Returns:
    {"test_accuracy": [per seed], "best_val_accuracy": [per seed], "val_curves": (seeds,
     epochs + 1) with column 0 at init, "diverged": count, and "test_accuracy_mean/ci95",
     "best_val_accuracy_mean/ci95", "val_curve_mean/ci95" (per epoch)}. A diverged member keeps
    the accuracy of its last finite parameters (train freezes them) and is counted.
  """
  members = sorted((m for m in metrics["members"] if m["config"]["label"] == name),
                   key=lambda m: m["config"]["seed"])
  if len(members) != seeds:
    raise ValueError(f"expected {seeds} members labelled {name!r}, found {len(members)}")
  nan = lambda v: np.nan if v is None else v
  curves = np.array([[nan(m["initial"]["val_accuracy"])] +
                     [nan(e["val_accuracy"]) for e in m["epochs"]] for m in members], np.float64)
  test = np.array([nan(m["test_accuracy"]) for m in members], np.float64)
  with np.errstate(all="ignore"):
    best = np.nanmax(np.where(np.isfinite(curves[:, 1:]), curves[:, 1:], np.nan), axis=1)
  curve_mean, curve_half = stats.mean_ci(curves, axis=0)
  test_ci, best_ci = stats.interval(test), stats.interval(best)
  return {"test_accuracy": test, "best_val_accuracy": best, "val_curves": curves,
          "diverged": int(sum(m["status"] == "diverged" for m in members)),
          "test_accuracy_mean": test_ci["mean"], "test_accuracy_ci95": test_ci["ci95"],
          "best_val_accuracy_mean": best_ci["mean"], "best_val_accuracy_ci95": best_ci["ci95"],
          "val_curve_mean": curve_mean, "val_curve_ci95": curve_half}


# ----------------------------------------------------------------------------------------------
# Figures.

_COLORS = {"orthogonal_critical": "tab:blue", "gaussian_critical": "tab:red",
           "orthogonal_off_critical": "tab:purple", "relu_he": "tab:green"}


def _legend_label(spec: dict) -> str:
  return (f"{spec['name']} ({spec['activation']}, {spec['init']}, $\\sigma_w$="
          f"{spec['sigma_w']:.3f}, $\\chi$={spec['chi']:.3f})")


def plot_accuracy_vs_depth(result: dict):
  """C1: test accuracy (left) and best validation accuracy (right) vs depth, mean +- 95% CI."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
  depths = np.asarray(result["depths"])
  for ax, metric in zip(axes, ("test_accuracy", "best_val_accuracy")):
    for k, spec in enumerate(result["inits"]):
      rows = result["by_init"][spec["name"]]
      mean = np.array([r[f"{metric}_mean"] for r in rows])
      half = np.array([r[f"{metric}_ci95"] for r in rows])
      shift = 2.0**(0.04 * (k - 1.5))  # side by side where the bars overlap
      ax.errorbar(depths * shift, mean, yerr=half, fmt="o-", capsize=3, ms=4,
                  color=_COLORS.get(spec["name"], "gray"), label=_legend_label(spec))
    ax.axhline(0.1, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths)
    ax.set_xticklabels([str(d) for d in depths])
    ax.set_xlabel("depth (hidden layers)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, loc="lower left")
  fig.suptitle(f"{result['dataset_label']}: accuracy vs depth after {result['config']['epochs']} "
               f"epochs (mean over {result['config']['seeds']} seeds, bars 95% t-interval; "
               "dotted: chance)", fontsize=9)
  fig.tight_layout()
  return fig


def plot_learning_curves(result: dict):
  """C2: validation accuracy per epoch for every depth (the deepest rightmost), mean band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  depths = result["depths"]
  fig, axes = plt.subplots(1, len(depths), figsize=(3.4 * len(depths), 3.8), sharey=True,
                           squeeze=False)
  for ax, (d, depth) in zip(axes[0], enumerate(depths)):
    for spec in result["inits"]:
      row = result["by_init"][spec["name"]][d]
      mean, half = np.asarray(row["val_curve_mean"]), np.asarray(row["val_curve_ci95"])
      epochs = np.arange(len(mean))
      color = _COLORS.get(spec["name"], "gray")
      ax.plot(epochs, mean, "-", color=color, lw=1.4, label=spec["name"])
      ax.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.2)
    ax.set_title(f"depth {depth}", fontsize=10)
    ax.set_xlabel("epoch (0: init)")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("validation accuracy")
  axes[0, -1].legend(fontsize=7, loc="lower right")
  fig.suptitle(f"{result['dataset_label']}: learning curves (mean over seeds, band 95% "
               "t-interval)", fontsize=9)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------------------------
# The study.


def run(config: StudyConfig, out_dir: str, dataset=None) -> dict:
  """Trains every (activation, depth) sweep (resuming finished work), then writes the summary.

  Args:
    config: the study.
    out_dir: results folder; sweeps go to out_dir/<activation>_depth<depth>/.
    dataset: optional preloaded `data.Dataset`-like images (default: `load_data(config)`).

  Returns:
    The study.json content: {"config", "inits": init_specs, "depths", "by_init": {name: [per
    depth `summarize_run` + "depth"]}, "runs": {name: {"status", "seconds"}}, "seconds"}; or,
    if a sweep was interrupted, {"status": "interrupted", "run": its folder} (nothing written).

  Raises:
    data.DataUnavailableError, train.SetupError: data missing or bad (before any training).
  """
  start = time.perf_counter()
  if dataset is None:
    dataset = load_data(config)
  specs = init_specs(config)
  for s in specs:
    logging.info("init %s: %s %s sigma_w=%.6f sigma_b=%g chi=%.6f", s["name"], s["activation"],
                 s["init"], s["sigma_w"], s["sigma_b"], s["chi"])
  activations = list(dict.fromkeys(s["activation"] for s in specs))
  runs = {}
  # Deepest first: the costliest sweeps run while the study is fresh, and an early stop still
  # leaves the depths the question is about.
  for depth in sorted(config.depths, reverse=True):
    for activation in activations:
      name = run_name(activation, depth)
      folder = os.path.join(out_dir, name)
      logging.info("study C: sweep %s", name)
      t0 = time.perf_counter()
      train.run(train_config(config, activation, depth), folder, resume=True, dataset=dataset,
                plots=False)
      status = io.read_json(os.path.join(folder, "status.json"))
      if status["status"] == "interrupted":
        logging.info("interrupted in %s; run again to resume", folder)
        return {"status": "interrupted", "run": folder}
      runs[name] = {"status": status["status"], "seconds": time.perf_counter() - t0,
                    "epoch_seconds": status["epoch_seconds"],
                    "steps_per_epoch": status["steps_per_epoch"]}

  by_init = {s["name"]: [] for s in specs}
  for depth in config.depths:
    for s in specs:
      metrics = io.read_json(os.path.join(out_dir, run_name(s["activation"], depth),
                                          "metrics.json"))
      by_init[s["name"]].append({"depth": int(depth),
                                 **summarize_run(metrics, s["name"], config.seeds)})
  label = "synthetic (learnable)" if config.synthetic_data else config.dataset
  train_size = len(dataset.train_x) if config.max_train_examples is None else min(
      config.max_train_examples, len(dataset.train_x))
  result = {
      "config": dataclasses.asdict(config), "inits": specs, "depths": list(config.depths),
      "dataset_label": (f"{label}, {train_size} train examples, width {config.width}, "
                        f"{config.optimizer} lr {config.lr:g}, batch {config.batch_size}"),
      "data_dir": None if config.synthetic_data else data.resolve_data_dir(config.dataset,
                                                                           config.data_dir),
      "num_train": int(train_size), "num_val": int(len(dataset.val_x)),
      "num_test": int(len(dataset.test_x)), "by_init": by_init, "runs": runs}
  for s in specs:
    for row in by_init[s["name"]]:
      logging.info("%s depth %d: test accuracy %.4f +- %.4f, best val %.4f +- %.4f%s",
                   s["name"], row["depth"], row["test_accuracy_mean"], row["test_accuracy_ci95"],
                   row["best_val_accuracy_mean"], row["best_val_accuracy_ci95"],
                   f" ({row['diverged']} diverged)" if row["diverged"] else "")
  result["seconds"] = time.perf_counter() - start
  io.write_json(os.path.join(out_dir, "study.json"), result)
  io.save_figure(plot_accuracy_vs_depth(result), os.path.join(out_dir, "C1_accuracy_vs_depth.png"))
  io.save_figure(plot_learning_curves(result), os.path.join(out_dir, "C2_learning_curves.png"))
  logging.info("study C done in %.0fs: %s", result["seconds"], out_dir)
  return result
