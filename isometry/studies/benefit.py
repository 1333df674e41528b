"""Study E: does depth or sequence length change how much an orthogonality penalty helps?

The benefit of the soft-orthogonality penalty is a paired difference: accuracy of a network
trained with the penalty minus that of the same network (same seed: same init, same batch
order) trained without it. It is measured along two axes:

  1. MLP depth. tanh MLPs (`isometry.engine.models`, `depth` hidden layers of `width` units) with
     orthogonal hidden and input kernels at gain `mlp_gain`, trained with Adam on flattened
     images; the penalty reg * sum_l ||W_l^T W_l / g^2 - I||_F^2 acts on the active hidden
     kernels (depth - 1 square matrices). All depths x {0, reg} x seeds are members of one
     `isometry.engine.train` program (a depth-masked stack of max(depths) layers).
  2. Sequence length. A vanilla tanh RNN with an orthogonal recurrent kernel at gain
     `rnn_gain`, penalty reg * ||W^T W / g^2 - I||_F^2 on the recurrent kernel, on the same
     images read row by row (28 steps of 28 inputs) or pixel by pixel (784 steps of 1). One
     program per task ({0, reg} x seeds); both tasks use the same training subset, epochs,
     optimizer and evaluation, so the only difference is the sequence length T.

Per depth / task and metric (test accuracy after the last epoch, best validation accuracy over
epochs) the study reports the per-seed accuracies with and without the penalty, their paired
differences and the mean difference with its 95% Student-t interval (`isometry.results.stats.mean_ci`)
and paired t-test, Holm-adjusted over every depth, task and metric (HOLM_FAMILY),
plus how far the penalized matrices ended from orthogonal (max |s_i / g - 1| over their singular
values), which shows whether the penalty did anything at all.

Penalty on W^T W / g^2 (gain-adjusted), so at an orthogonal init of gain g it starts at 0 and
only acts against the drift that training causes (Hlav 2019, eq. 11; Bansal et al. 2018's SO).

`run(config, out_dir)` trains out_dir/mlp/ and out_dir/rnn_<task>/ (each an `isometry.engine.train`
run folder, by `harness.run_sweeps`: running again continues an interrupted study), then writes
study.json, benefit_vs_depth.png, benefit_row_vs_pixel.png and learning_curves.png.

References:
  N. Bansal, X. Chen, Z. Wang, Can we gain more from orthogonality regularizations in training
  deep CNNs?, NeurIPS 2018 (the SO penalty).
  E. Vorontsov, C. Trabelsi, S. Kadoury, C. Pal, On orthogonality and learning recurrent
  networks with long term dependencies, ICML 2017 (soft vs hard orthogonality against T).
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019.
"""
import dataclasses
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np

from isometry import data
from isometry.results import plots
from isometry.engine import regularizers
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness

TASKS = ("row", "pixel")
METRICS = ("test_accuracy", "best_val_accuracy")
CHANCE = 0.1  # Ten classes.
SUMMARY = "study.json"
# The smoke runs' images: 6 x 6, so the pixel task has T = 36.
SYNTHETIC_SIDE = 6


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """What study E trains. Defaults: the committed run (see results/E_benefit/README.md).

  Attributes:
    depths: MLP depths (hidden layers, >= 2 so there is a hidden kernel to penalize); empty
      skips the MLP arm.
    tasks: RNN tasks among row, pixel; empty skips the RNN arm.
    regularizer: penalty name (`isometry.engine.regularizers`), "so" by default.
    reg_strength: penalty strength of the penalized arm (the other has 0).
    seeds: seeds 0..seeds-1 (>= 2 for an interval); seed s gives the same init and batch
      order with and without the penalty.
    epochs, batch_size: training length and batch size, shared by every arm.
    max_train_examples: the first n training examples (None or 0: all), shared by every arm.
    val_size: training examples held out for validation.
    width, mlp_gain, mlp_sigma_b, mlp_lr: the MLPs (orthogonal kernels at gain mlp_gain,
      biases N(0, mlp_sigma_b^2), Adam at mlp_lr).
    hidden, rnn_gain, rnn_lr, unroll: the RNNs (orthogonal recurrent kernel at gain rnn_gain,
      Adam at rnn_lr, lax.scan unroll over time).
    dataset, data_dir: images (data_dir None: `data.resolve_data_dir`).
    synthetic: train on learnable 6 x 6 synthetic images instead (smoke runs).
  """
  depths: Tuple[int, ...] = (2, 8, 32)
  tasks: Tuple[str, ...] = TASKS
  regularizer: str = "so"
  reg_strength: float = 1.0
  seeds: int = 5
  epochs: int = 10
  batch_size: int = 128
  max_train_examples: Optional[int] = 4096
  val_size: int = 2000
  width: int = 128
  mlp_gain: float = 1.0
  mlp_sigma_b: float = 0.0
  mlp_lr: float = 1e-3
  hidden: int = 64
  rnn_gain: float = 1.0
  rnn_lr: float = 1e-3
  unroll: int = 8

  def __post_init__(self):
    object.__setattr__(self, "depths", tuple(self.depths))
    object.__setattr__(self, "tasks", tuple(self.tasks))
    if self.max_train_examples == 0:
      object.__setattr__(self, "max_train_examples", None)
    harness.check(bool(self.depths or self.tasks), "nothing to run: depths and tasks are both "
                  "empty")
    harness.check(all(int(d) == d and d >= 2 for d in self.depths),
                  f"depths must be integers >= 2 (a depth-1 MLP has no hidden kernel to "
                  f"penalize), got {self.depths}")
    harness.check(len(set(self.depths)) == len(self.depths), f"depths has repeats: {self.depths}")
    harness.check_choices(self, "tasks", TASKS)
    penalties = [n for n in regularizers.NAMES if n != "none"]
    harness.check(self.regularizer in penalties, f"regularizer must be one of "
                  f"{', '.join(penalties)}, got {self.regularizer!r}")
    harness.check_positive(self, ("reg_strength", "mlp_gain", "mlp_lr", "rnn_gain", "rnn_lr"))
    harness.check(self.mlp_sigma_b >= 0, f"mlp_sigma_b must be >= 0, got {self.mlp_sigma_b}")
    harness.check_seeds(self)
    harness.check_at_least(self, ("epochs", "batch_size", "val_size", "width", "hidden",
                                  "unroll"))
    harness.check_examples(self, "max_train_examples", "batch_size")
    harness.check_data(self)

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: tiny networks on 6 x 6 synthetic images (pixel T = 36)."""
    settings = dict(depths=(2, 4), seeds=2, epochs=2, batch_size=16, max_train_examples=None,
                    val_size=32, width=16, hidden=8, unroll=1, synthetic=True, monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def load_data(config: StudyConfig) -> data.Dataset:
  """The study's images: the synthetic task, or config.dataset (offline copy or TFDS).

  Raises:
    data.DataUnavailableError: the dataset cannot be read here (the message says what to do).
  """
  smoke = harness.Synthetic(256, config.val_size, 64, side=SYNTHETIC_SIDE, learnable=True)
  return config.images(config.val_size, smoke)


def _label(arm: str, reg: float) -> str:
  return f"{arm}_reg{reg:g}"


def _strengths(config: StudyConfig) -> Tuple[float, float]:
  return (0.0, float(config.reg_strength))


def _common(config: StudyConfig) -> dict:
  return dict(**config.train_data(),
              regularizer=config.regularizer, optimizer="adam", batch_size=config.batch_size,
              epochs=config.epochs, val_size=config.val_size,
              max_train_examples=config.max_train_examples,
              eval_batch_size=min(1000, config.val_size))


def mlp_train_config(config: StudyConfig) -> train.TrainConfig:
  """The MLP arm: depths x {0, reg} x seeds in one depth-masked program."""
  members = tuple(
      train.Member(_label(f"depth{d}", reg), "orthogonal", config.mlp_gain, reg, True,
                   config.mlp_lr, seed, int(d))
      for d in config.depths for reg in _strengths(config) for seed in range(config.seeds))
  return train.TrainConfig(members=members, model="mlp", hidden=config.width,
                           activation="tanh", sigma_b=config.mlp_sigma_b, **_common(config))


def rnn_train_config(config: StudyConfig, task: str) -> train.TrainConfig:
  """The RNN arm of one task: {0, reg} x seeds in one program."""
  members = tuple(
      train.Member(_label(task, reg), "orthogonal", config.rnn_gain, reg, True, config.rnn_lr,
                   seed)
      for reg in _strengths(config) for seed in range(config.seeds))
  return train.TrainConfig(members=members, model="rnn", task=task, hidden=config.hidden,
                           unroll=config.unroll, **_common(config))


def run_configs(config: StudyConfig) -> dict:
  """{folder name: TrainConfig} of every training run of the study, in run order."""
  runs = {}
  if config.depths:
    runs["mlp"] = mlp_train_config(config)
  for task in config.tasks:
    runs[f"rnn_{task}"] = rnn_train_config(config, task)
  return runs


# ----------------------------------------------------------------------------------------------
# Statistics.


def paired_difference(record: dict) -> dict:
  """A `harness.compare` record (with - without) under this study's names: {"mean", "ci95",
  "n_pairs", "p_value", "p_holm", "family_size", "penalty_wins", "differences", "verdict"}."""
  result = dict(record)
  result["mean"] = result.pop("mean_difference")
  result["penalty_wins"] = result.pop("wins")
  return result


HOLM_FAMILY = ("with - without penalty at every depth and task, in test and best validation "
               "accuracy: (depths + tasks) x 2 paired comparisons, Holm-adjusted together")


def with_differences(result: dict) -> dict:
  """The study.json content with every arm's "difference" (with - without penalty, paired by
  seed, per metric) computed from its stored per-seed accuracies, and Holm's adjustment over
  the family HOLM_FAMILY; nothing else changes."""
  arms = [(group, name) for group in ("depths", "tasks") for name in result[group]]
  family = harness.compare_family({
      (group, name, metric): (result[group][name]["with_penalty"][metric]["values"],
                              result[group][name]["without_penalty"][metric]["values"])
      for group, name in arms for metric in METRICS})
  out = {**result, "depths": dict(result["depths"]), "tasks": dict(result["tasks"]),
         "holm_family": HOLM_FAMILY}
  for group, name in arms:
    out[group][name] = {**result[group][name], "difference": {
        metric: paired_difference(family[(group, name, metric)]) for metric in METRICS}}
  return out


def resummarize(out_dir: str) -> dict:
  """`with_differences` of a finished study's study.json, written back without training."""
  return harness.resummarize(out_dir, SUMMARY, with_differences)


def orthogonality_gaps(result: harness.SweepResult, **fields) -> np.ndarray:
  """(seeds,) max |s / g - 1| over the singular values of each selected member's penalized
  matrices (the active hidden kernels of an MLP, the recurrent kernel), after the last epoch."""
  mlp = result.config.model == "mlp"
  spectra = result.spectra("hidden" if mlp else "recurrent", **fields)   # (seeds, E + 1, ...)
  gaps = np.full(result.num_seeds, np.nan)
  for seed, i in result.select(**fields).items():
    member = result.config.members[i]
    s = spectra[seed, -1, :member.depth - 1] if mlp else spectra[seed, -1]
    gaps[seed] = np.max(np.abs(s / member.gain - 1.0))
  return gaps


def summarize_arm(result: harness.SweepResult, reg_strength: float, **fields) -> dict:
  """One depth (fields: depth=d) or task of a finished sweep: accuracies with and without the
  penalty, validation curves and orthogonality gaps ("difference" is filled by
  `with_differences`, over every arm at once)."""
  entry = {"with_penalty": {}, "without_penalty": {}, "difference": {}, "curves": {},
           "orthogonality_gap": {}}
  for name, reg in (("without_penalty", 0.0), ("with_penalty", reg_strength)):
    chosen = dict(fields, reg_strength=reg)
    entry[name] = {metric: stats.interval(result.per_seed(metric, **chosen))
                   for metric in METRICS}
    mean, half = stats.mean_ci(result.history("val_accuracy", **chosen), axis=0)
    entry["curves"][name] = {"val_accuracy_mean": mean, "val_accuracy_ci95": half}
    entry["orthogonality_gap"][name] = stats.interval(orthogonality_gaps(result, **chosen))
    entry[name]["diverged"] = int(result.diverged(**chosen).sum())
  return entry


def analyse(config: StudyConfig, sweeps: harness.Sweeps) -> dict:
  """The study.json content (minus timings) from the finished sweeps."""
  result = {"config": dataclasses.asdict(config), "chance_accuracy": CHANCE,
            "depths": {}, "tasks": {}}
  reg = float(config.reg_strength)
  for d in config.depths:
    result["depths"][str(d)] = summarize_arm(sweeps["mlp"], reg, depth=int(d))
  for task in config.tasks:
    result["tasks"][task] = summarize_arm(sweeps[f"rnn_{task}"], reg)
    result["tasks"][task]["time_steps"] = _time_steps(config, task)
  return with_differences(result)


def _time_steps(config: StudyConfig, task: str) -> int:
  side = {True: SYNTHETIC_SIDE, False: 32 if config.dataset == "cifar10" else 28}[
      config.synthetic]
  return side if task == "row" else side * side


# ----------------------------------------------------------------------------------------------
# Figures (from the study.json content).


_METRIC_NAMES = {"test_accuracy": "test accuracy", "best_val_accuracy": "best val accuracy"}
_COLORS = {"with_penalty": "tab:blue", "without_penalty": "tab:gray"}


def _plot_benefit(entries: dict, positions: np.ndarray, ticks: list, xlabel: str, title: str,
                  log_x: bool):
  """Left: paired difference with 95% CI per arm and metric; right: accuracies."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  ax = axes[0]
  span = float(np.ptp(np.log2(positions) if log_x else positions)) or 1.0
  for k, metric in enumerate(METRICS):
    offset = (k - 0.5) * 0.04 * span
    x = positions * 2.0 ** offset if log_x else positions + offset
    d = [e["difference"][metric] for e in entries.values()]
    plots.errorbar_with_seeds(ax, x, [v["mean"] for v in d], [v["ci95"] for v in d],
                              [v["differences"] for v in d], color=f"C{k}", fmt="o-",
                              capsize=4, ms=5, label=f"{_METRIC_NAMES[metric]} (mean, 95% CI)")
  ax.axhline(0.0, color="k", lw=0.8)
  ax.set_ylabel("accuracy with penalty - without (paired by seed)")
  ax.legend(fontsize=8)
  ax = axes[1]
  for k, name in enumerate(("without_penalty", "with_penalty")):
    offset = (k - 0.5) * 0.04 * span
    x = positions * 2.0 ** offset if log_x else positions + offset
    acc = [e[name]["test_accuracy"] for e in entries.values()]
    ax.errorbar(x, [a["mean"] for a in acc], yerr=[a["ci95"] for a in acc], fmt="s-",
                capsize=4, color=_COLORS[name], label=name.replace("_", " "))
  ax.axhline(CHANCE, color="r", lw=0.8, ls=":", label="chance")
  ax.set_ylabel("test accuracy (mean, 95% CI)")
  ax.legend(fontsize=8)
  for ax in axes:
    if log_x:
      ax.set_xscale("log", base=2)
    ax.set_xticks(positions)
    ax.set_xticklabels(ticks)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def plot_benefit_vs_depth(result: dict):
  c = result["config"]
  depths = result["depths"]
  seeds = c["seeds"]
  return _plot_benefit(
      depths, np.array([int(d) for d in depths], np.float64), list(depths),
      "MLP depth (hidden layers)",
      f"tanh MLP, width {c['width']}, orthogonal g={c['mlp_gain']:g}: {c['regularizer']} penalty "
      f"{c['reg_strength']:g} on hidden kernels, {seeds} seeds", log_x=True)


def plot_benefit_vs_task(result: dict):
  c = result["config"]
  tasks = result["tasks"]
  ticks = [f"{t}\n(T = {e['time_steps']})" for t, e in tasks.items()]
  return _plot_benefit(
      tasks, np.arange(len(tasks), dtype=np.float64), ticks, "task",
      f"tanh RNN, hidden {c['hidden']}, orthogonal g={c['rnn_gain']:g}: {c['regularizer']} penalty "
      f"{c['reg_strength']:g} on the recurrent kernel, {c['seeds']} seeds", log_x=False)


def plot_learning_curves(result: dict):
  """Validation accuracy against epoch, with and without the penalty, one panel per arm."""
  plt = plots.pyplot()
  arms = [(f"MLP depth {d}", e) for d, e in result["depths"].items()]
  arms += [(f"RNN {t} (T = {e['time_steps']})", e) for t, e in result["tasks"].items()]
  fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms), 3.4), squeeze=False)
  for ax, (title, entry) in zip(axes[0], arms):
    for name in ("without_penalty", "with_penalty"):
      curve = entry["curves"][name]
      epochs = np.arange(len(curve["val_accuracy_mean"]))
      plots.band(ax, epochs, curve["val_accuracy_mean"], curve["val_accuracy_ci95"],
                 color=_COLORS[name], alpha=0.25, label=name.replace("_", " "))
    ax.axhline(CHANCE, color="r", lw=0.8, ls=":")
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: init)")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("validation accuracy (mean, 95% CI)")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def figures(result: dict) -> dict:
  """{file name: figure function} of the figures this result has arms for."""
  out = {}
  if result["depths"]:
    out["benefit_vs_depth.png"] = plot_benefit_vs_depth
  if result["tasks"]:
    out["benefit_row_vs_pixel.png"] = plot_benefit_vs_task
  out["learning_curves.png"] = plot_learning_curves
  return out


# ----------------------------------------------------------------------------------------------


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset: Optional[data.Dataset] = None) -> Optional[dict]:
  """Trains every arm (continuing an interrupted study), then writes study.json and the figures.

  Args:
    config: the study.
    out_dir: results folder; runs go to out_dir/mlp and out_dir/rnn_<task>.
    overwrite: replace a finished study in out_dir (else refused before any work).
    dataset: preloaded images (default: `load_data(config)`).

  Returns:
    The study.json content; None where a run was interrupted (run again to continue).

  Raises:
    data.DataUnavailableError, train.SetupError: data missing or unusable, or out_dir holds a
      finished study (before training).
  """
  start = time.perf_counter()
  dataset = harness.start(out_dir, SUMMARY, overwrite, lambda: load_data(config), dataset)
  sweeps = harness.run_sweeps(run_configs(config), out_dir, dataset=dataset,
                              overwrite=overwrite, plots=True)
  if sweeps is None:
    return None
  seconds = {}
  for name, sweep in sweeps.items():
    seconds[name] = sweep.seconds
    seconds[f"{name}_epochs"] = float(np.sum(sweep.status["epoch_seconds"]))
  result = analyse(config, sweeps)
  result["seconds"] = {"runs": seconds, "total": time.perf_counter() - start}
  harness.save(out_dir, SUMMARY, result, figures(result))
  for group in ("depths", "tasks"):
    for arm, entry in result[group].items():
      for metric in METRICS:
        d = entry["difference"][metric]
        logging.info("%s %s, %s: with - without penalty = %+.4f +- %.4f (95%% CI, %d pairs, "
                     "p = %.3g)", group[:-1], arm, metric, d["mean"], d["ci95"], d["n_pairs"],
                     d["p_value"])
  logging.info("study E done in %.0fs: %s", result["seconds"]["total"], out_dir)
  return result
