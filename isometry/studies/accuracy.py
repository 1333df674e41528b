"""Study C: test accuracy of deep MLPs with vs without dynamical isometry.

Deep fully connected classifiers (`isometry.engine.models.mlp_apply`: depth = hidden layers of `width`
units, a Glorot read-out) trained by `isometry.engine.train` on flattened images, four initializations:

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

Every (activation, depth) is one `isometry.engine.train` sweep (inits of that activation x seeds in one
vmapped program) in its own folder out_dir/<activation>_depth<depth>/, run by
`harness.run_sweeps`, so an interrupted study loses no finished epoch. Depths are separate
programs rather than one depth-masked stack: a masked stack spends the deepest network's compute
on every member, which for depths (2, 8, 16, 32, 64) is 320 / 122 = 2.6x the work. All members
of a seed share their batch order; within one sweep, inits of a seed also share their PRNG key.

The answer is read from paired differences of test accuracy (`paired_comparisons`: the
isometric init against every other init per depth, and its depth steps, Holm-adjusted together).

`run(config, out_dir)` writes study.json, C1_accuracy_vs_depth.png and C2_learning_curves.png.
"""
import dataclasses
import math
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np

from isometry import data
from isometry.theory import meanfield
from isometry.results import plots
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness

INITS = ("orthogonal_critical", "gaussian_critical", "orthogonal_off_critical", "relu_he")
# |chi - 1| below this would make the "off-critical" init critical in all but name.
_MIN_OFF_CRITICAL_DISTANCE = 0.05
SUMMARY = "study.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
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
    synthetic: train on learnable synthetic images instead (smoke runs, --quick).
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

  def __post_init__(self):
    object.__setattr__(self, "depths", tuple(self.depths))
    harness.check(bool(self.depths) and all(int(d) == d and d >= 1 for d in self.depths),
                  f"depths must be integers >= 1, got {self.depths}")
    harness.check(len(set(self.depths)) == len(self.depths),
                  f"depths must be distinct, got {self.depths}")
    harness.check_seeds(self)
    harness.check_at_least(self, ("epochs", "width", "batch_size", "val_size"))
    harness.check_examples(self, "max_train_examples", "batch_size")
    harness.check_positive(self, ("lr", "off_critical_sigma_w"))
    harness.check(self.optimizer in train.OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; "
                  f"choose one of {', '.join(train.OPTIMIZERS)}")
    harness.check(self.sigma_b >= 0, f"sigma_b must be >= 0, got {self.sigma_b}")
    harness.check_data(self)
    chi = float(meanfield.chi("tanh", self.off_critical_sigma_w, self.sigma_b))
    harness.check(abs(chi - 1) >= _MIN_OFF_CRITICAL_DISTANCE,
                  f"off_critical_sigma_w={self.off_critical_sigma_w} gives chi={chi:.4f} at "
                  f"sigma_b={self.sigma_b}: within {_MIN_OFF_CRITICAL_DISTANCE} of 1, not "
                  "off-critical")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: two shallow depths, tiny width, a synthetic task."""
    settings = dict(depths=(1, 3), seeds=2, epochs=2, width=16, batch_size=16,
                    max_train_examples=None, val_size=32, synthetic=True, lr=0.05, monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def init_specs(config: StudyConfig) -> list:
  """The four initializations with their mean-field numbers.

  Returns:
    [{"name", "activation", "init", "sigma_w", "sigma_b", "chi", "q_star"}] in INITS order;
    q_star is None for relu (no bias: every q is a fixed point).
  """
  sw_c = meanfield.critical_sigma_w("tanh", config.sigma_b)
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
  return train.TrainConfig(
      members=members, model="mlp",
      **config.train_data(),
      hidden=config.width, activation=activation, sigma_b=specs[0]["sigma_b"], regularizer="none",
      optimizer=config.optimizer, batch_size=config.batch_size, epochs=config.epochs,
      val_size=config.val_size, max_train_examples=config.max_train_examples)


def load_data(config: StudyConfig) -> data.Dataset:
  """The study's images (one load shared by every sweep).

  Raises:
    data.DataUnavailableError: the dataset cannot be read.
  """
  smoke = harness.Synthetic(num_train=max(8 * config.batch_size, 128), num_val=config.val_size,
                            num_test=64, learnable=True)
  return config.images(config.val_size, smoke)


# ----------------------------------------------------------------------------------------------
# Summaries.


def summarize(result: harness.SweepResult, name: str) -> dict:
  """One init's numbers in one (activation, depth) sweep.

  Returns:
    {"test_accuracy": [per seed], "best_val_accuracy": [per seed], "val_curves": (seeds,
     epochs + 1) with column 0 at init, "diverged": count, and "test_accuracy_mean/ci95",
     "best_val_accuracy_mean/ci95", "val_curve_mean/ci95" (per epoch)}. A diverged member
    counts as missing in the accuracies; its curve (train freezes its last finite parameters)
    stays in the curves.
  """
  test = result.per_seed("test_accuracy", label=name)
  best = result.per_seed("best_val_accuracy", label=name)
  curves = result.history("val_accuracy", label=name)
  curve_mean, curve_half = stats.mean_ci(curves, axis=0)
  test_ci, best_ci = stats.interval(test), stats.interval(best)
  return {"test_accuracy": test, "best_val_accuracy": best, "val_curves": curves,
          "diverged": int(result.diverged(label=name).sum()),
          "test_accuracy_mean": test_ci["mean"], "test_accuracy_ci95": test_ci["ci95"],
          "best_val_accuracy_mean": best_ci["mean"], "best_val_accuracy_ci95": best_ci["ci95"],
          "val_curve_mean": curve_mean, "val_curve_ci95": curve_half}


ISOMETRIC = INITS[0]
HOLM_FAMILY = ("test accuracy, paired by seed: orthogonal_critical minus each other init at "
               "every depth, and orthogonal_critical at each depth minus the next shallower "
               "depth; all of them Holm-adjusted together")


def paired_comparisons(by_init: dict) -> list:
  """The study's family of paired comparisons of test accuracy (HOLM_FAMILY), from study.json's
  per-seed values (seed s: the same batch order in every sweep, the same key for the inits of
  one sweep).

  Args:
    by_init: study.json's "by_init": {init name: [{"depth", "test_accuracy": (seeds,)}, ...]}.

  Returns:
    [{"a": {"init", "depth"}, "b": {"init", "depth"}, **`harness.compare`(a, b) + "p_holm"}]:
    first the init comparisons by depth, then the depth steps of ISOMETRIC.
  """
  rows = {(name, row["depth"]): row["test_accuracy"] for name, per_depth in by_init.items()
          for row in per_depth}
  depths = sorted({depth for _, depth in rows})
  pairs = [((ISOMETRIC, d), (other, d)) for d in depths for other in by_init if other != ISOMETRIC]
  pairs += [((ISOMETRIC, deep), (ISOMETRIC, shallow)) for shallow, deep in zip(depths, depths[1:])]
  family = harness.compare_family({(a, b): (rows[a], rows[b]) for a, b in pairs})
  return [{"a": {"init": a[0], "depth": a[1]}, "b": {"init": b[0], "depth": b[1]}, **record}
          for (a, b), record in family.items()]


def resummarize(out_dir: str) -> dict:
  """Adds `paired_comparisons` (with Holm) to a finished study's study.json from its stored
  per-seed accuracies, without training; every other number stays."""
  return harness.resummarize(out_dir, SUMMARY, lambda result: {
      **result, "paired": paired_comparisons(result["by_init"]), "holm_family": HOLM_FAMILY})


# ----------------------------------------------------------------------------------------------
# Figures.

_COLORS = {"orthogonal_critical": "tab:blue", "gaussian_critical": "tab:red",
           "orthogonal_off_critical": "tab:purple", "relu_he": "tab:green"}


def _legend_label(spec: dict) -> str:
  return (f"{spec['name']} ({spec['activation']}, {spec['init']}, $\\sigma_w$="
          f"{spec['sigma_w']:.3f}, $\\chi$={spec['chi']:.3f})")


def plot_accuracy_vs_depth(result: dict):
  """C1: test accuracy (left) and best validation accuracy (right) vs depth, mean +- 95% CI."""
  plt = plots.pyplot()
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
  plt = plots.pyplot()
  depths = result["depths"]
  fig, axes = plt.subplots(1, len(depths), figsize=(3.4 * len(depths), 3.8), sharey=True,
                           squeeze=False)
  for ax, (d, depth) in zip(axes[0], enumerate(depths)):
    for spec in result["inits"]:
      row = result["by_init"][spec["name"]][d]
      epochs = np.arange(len(row["val_curve_mean"]))
      plots.band(ax, epochs, row["val_curve_mean"], row["val_curve_ci95"], lw=1.4,
                 color=_COLORS.get(spec["name"], "gray"), label=spec["name"])
    ax.set_title(f"depth {depth}", fontsize=10)
    ax.set_xlabel("epoch (0: init)")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("validation accuracy")
  axes[0, -1].legend(fontsize=7, loc="lower right")
  fig.suptitle(f"{result['dataset_label']}: learning curves (mean over seeds, band 95% "
               "t-interval)", fontsize=9)
  fig.tight_layout()
  return fig


FIGURES = {"C1_accuracy_vs_depth.png": plot_accuracy_vs_depth,
           "C2_learning_curves.png": plot_learning_curves}


# ----------------------------------------------------------------------------------------------
# The study.


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset=None) -> Optional[dict]:
  """Trains every (activation, depth) sweep (continuing an interrupted study), then writes the
  summary and the figures.

  Args:
    config: the study.
    out_dir: results folder; sweeps go to out_dir/<activation>_depth<depth>/.
    overwrite: replace a finished study in out_dir (else refused before any work).
    dataset: optional preloaded `data.Dataset`-like images (default: `load_data(config)`).

  Returns:
    The study.json content: {"config", "inits": init_specs, "depths", "by_init": {name: [per
    depth `summarize` + "depth"]}, "runs": {name: {"status", "seconds", ...}}, "paired":
    `paired_comparisons`, "holm_family", "seconds"}; None
    where a sweep was interrupted (run again to continue).

  Raises:
    data.DataUnavailableError, train.SetupError: as `harness.start`, and train.run's own
      (bad data for a sweep), before any training.
  """
  start = time.perf_counter()
  dataset = harness.start(out_dir, SUMMARY, overwrite, lambda: load_data(config), dataset)
  specs = init_specs(config)
  for s in specs:
    logging.info("init %s: %s %s sigma_w=%.6f sigma_b=%g chi=%.6f", s["name"], s["activation"],
                 s["init"], s["sigma_w"], s["sigma_b"], s["chi"])
  activations = list(dict.fromkeys(s["activation"] for s in specs))
  # Deepest first: the costliest sweeps run while the study is fresh, and an early stop still
  # leaves the depths the question is about.
  sweeps = harness.run_sweeps(
      {run_name(activation, depth): train_config(config, activation, depth)
       for depth in sorted(config.depths, reverse=True) for activation in activations},
      out_dir, dataset=dataset, overwrite=overwrite)
  if sweeps is None:
    return None
  runs = {name: {"status": r.status["status"], "seconds": r.seconds,
                 "epoch_seconds": r.status["epoch_seconds"],
                 "steps_per_epoch": r.status["steps_per_epoch"]} for name, r in sweeps.items()}
  by_init = {s["name"]: [{"depth": int(depth), **summarize(
      sweeps[run_name(s["activation"], depth)], s["name"])} for depth in config.depths]
             for s in specs}
  label = "synthetic (learnable)" if config.synthetic else config.dataset
  train_size = len(dataset.train_x) if config.max_train_examples is None else min(
      config.max_train_examples, len(dataset.train_x))
  result = {
      "config": dataclasses.asdict(config), "inits": specs, "depths": list(config.depths),
      "dataset_label": (f"{label}, {train_size} train examples, width {config.width}, "
                        f"{config.optimizer} lr {config.lr:g}, batch {config.batch_size}"),
      "data_dir": config.train_data()["data_dir"],
      "num_train": int(train_size), "num_val": int(len(dataset.val_x)),
      "num_test": int(len(dataset.test_x)), "by_init": by_init, "runs": runs,
      "paired": paired_comparisons(by_init), "holm_family": HOLM_FAMILY}
  for s in specs:
    for row in by_init[s["name"]]:
      logging.info("%s depth %d: test accuracy %.4f +- %.4f, best val %.4f +- %.4f%s",
                   s["name"], row["depth"], row["test_accuracy_mean"], row["test_accuracy_ci95"],
                   row["best_val_accuracy_mean"], row["best_val_accuracy_ci95"],
                   f" ({row['diverged']} diverged)" if row["diverged"] else "")
  result["seconds"] = time.perf_counter() - start
  harness.save(out_dir, SUMMARY, result, FIGURES)
  logging.info("study C done in %.0fs: %s", result["seconds"], out_dir)
  return result
