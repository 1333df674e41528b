"""Study E: does depth or sequence length change how much an orthogonality penalty helps?

The benefit of the soft-orthogonality penalty is a paired difference: accuracy of a network
trained with the penalty minus that of the same network (same seed: same init, same batch
order) trained without it. It is measured along two axes:

  1. MLP depth. tanh MLPs (`isometry.models`, `depth` hidden layers of `width` units) with
     orthogonal hidden and input kernels at gain `mlp_gain`, trained with Adam on flattened
     images; the penalty reg * sum_l ||W_l^T W_l / g^2 - I||_F^2 acts on the active hidden
     kernels (depth - 1 square matrices). All depths x {0, reg} x seeds are members of one
     `isometry.train` program (a depth-masked stack of max(depths) layers).
  2. Sequence length. A vanilla tanh RNN with an orthogonal recurrent kernel at gain
     `rnn_gain`, penalty reg * ||W^T W / g^2 - I||_F^2 on the recurrent kernel, on the same
     images read row by row (28 steps of 28 inputs) or pixel by pixel (784 steps of 1). One
     program per task ({0, reg} x seeds); both tasks use the same training subset, epochs,
     optimizer and evaluation, so the only difference is the sequence length T.

Per depth / task and metric (test accuracy after the last epoch, best validation accuracy over
epochs) the study reports the per-seed accuracies with and without the penalty, their paired
differences and the mean difference with its 95% Student-t interval (`isometry.stats.mean_ci`),
plus how far the penalized matrices ended from orthogonal (max |s_i / g - 1| over their singular
values), which shows whether the penalty did anything at all.

Penalty on W^T W / g^2 (gain-adjusted), so at an orthogonal init of gain g it starts at 0 and
only acts against the drift that training causes (Hlav 2019, eq. 11; Bansal et al. 2018's SO).

`run(config, out_dir)` trains out_dir/mlp/ and out_dir/rnn_<task>/ (each an `isometry.train`
run folder, resumed when already there), then writes study.json, benefit_vs_depth.png,
benefit_row_vs_pixel.png and learning_curves.png.

References:
  N. Bansal, X. Chen, Z. Wang, Can we gain more from orthogonality regularizations in training
  deep CNNs?, NeurIPS 2018 (the SO penalty).
  E. Vorontsov, C. Trabelsi, S. Kadoury, C. Pal, On orthogonality and learning recurrent
  networks with long term dependencies, ICML 2017 (soft vs hard orthogonality against T).
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019.
"""
import dataclasses
import os
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np

from isometry import data
from isometry import io
from isometry import regularizers
from isometry import stats
from isometry import train

TASKS = ("row", "pixel")
METRICS = ("test_accuracy", "best_val_accuracy")
CHANCE = 0.1  # Ten classes.


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What study E trains. Defaults: the committed run (see results/E_benefit/README.md).

  Attributes:
    depths: MLP depths (hidden layers, >= 2 so there is a hidden kernel to penalize); empty
      skips the MLP arm.
    tasks: RNN tasks among TASKS; empty skips the RNN arm.
    regularizer: penalty name (`isometry.regularizers`), "so" by default.
    reg_strength: penalty strength of the penalized arm (the other has 0).
    seeds: seeds 0..seeds-1 (>= 2 for an interval); seed s gives the same init and batch
      order with and without the penalty.
    epochs, batch_size: training length and batch size, shared by every arm.
    max_train_examples: the first n training examples (None: all), shared by every arm.
    val_size: training examples held out for validation.
    width, mlp_gain, mlp_sigma_b, mlp_lr: the MLPs (orthogonal kernels at gain mlp_gain,
      biases N(0, mlp_sigma_b^2), Adam at mlp_lr).
    hidden, rnn_gain, rnn_lr, unroll: the RNNs (orthogonal recurrent kernel at gain rnn_gain,
      Adam at rnn_lr, lax.scan unroll over time).
    dataset, data_dir: images (data_dir None: `data.resolve_data_dir`).
    synthetic_side: train on `data.synthetic_dataset(learnable=True)` images of this side
      instead of `dataset` (smoke runs); None: real data.
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
  dataset: str = "fashion_mnist"
  data_dir: Optional[str] = None
  synthetic_side: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, "depths", tuple(self.depths))
    object.__setattr__(self, "tasks", tuple(self.tasks))
    if not self.depths and not self.tasks:
      raise ValueError("nothing to run: depths and tasks are both empty")
    if any(int(d) != d or d < 2 for d in self.depths):
      raise ValueError(f"depths must be integers >= 2 (a depth-1 MLP has no hidden kernel to "
                       f"penalize), got {self.depths}")
    if len(set(self.depths)) != len(self.depths):
      raise ValueError(f"depths has repeats: {self.depths}")
    if any(t not in TASKS for t in self.tasks) or len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"tasks must be distinct, among {', '.join(TASKS)}; got {self.tasks}")
    if self.regularizer == "none" or self.regularizer not in regularizers.NAMES:
      raise ValueError(f"regularizer must be one of "
                       f"{', '.join(n for n in regularizers.NAMES if n != 'none')}, got "
                       f"{self.regularizer!r}")
    for name in ("reg_strength", "mlp_gain", "mlp_lr", "rnn_gain", "rnn_lr"):
      value = getattr(self, name)
      if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be > 0, got {value}")
    if not self.mlp_sigma_b >= 0:
      raise ValueError(f"mlp_sigma_b must be >= 0, got {self.mlp_sigma_b}")
    if self.seeds < 2:
      raise ValueError(f"seeds must be >= 2 for a confidence interval, got {self.seeds}")
    for name in ("epochs", "batch_size", "val_size", "width", "hidden", "unroll"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.max_train_examples is not None and self.max_train_examples < self.batch_size:
      raise ValueError(f"max_train_examples ({self.max_train_examples}) must be >= batch_size "
                       f"({self.batch_size})")
    if self.dataset not in data.NAMES:
      raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.NAMES)}")
    if self.synthetic_side is not None and self.synthetic_side < 2:
      raise ValueError(f"synthetic_side must be >= 2, got {self.synthetic_side}")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: tiny networks on 6 x 6 synthetic images (pixel T = 36)."""
    settings = dict(depths=(2, 4), seeds=2, epochs=2, batch_size=16, max_train_examples=None,
                    val_size=32, width=16, hidden=8, unroll=1, synthetic_side=6)
    settings.update(overrides)
    return cls(**settings)


def load_data(config: StudyConfig) -> data.Dataset:
  """The study's images: the synthetic task, or config.dataset (offline copy or TFDS).

  Raises:
    data.DataUnavailableError: the dataset cannot be read here (the message says what to do).
  """
  if config.synthetic_side is not None:
    return data.synthetic_dataset(256, config.val_size, 64, side=config.synthetic_side,
                                  learnable=True)
  return data.load_dataset(config.dataset, data.resolve_data_dir(config.dataset, config.data_dir),
                           val_size=config.val_size)


def _label(arm: str, reg: float) -> str:
  return f"{arm}_reg{reg:g}"


def _strengths(config: StudyConfig) -> Tuple[float, float]:
  return (0.0, float(config.reg_strength))


def _common(config: StudyConfig) -> dict:
  synthetic = config.synthetic_side is not None
  return dict(
      # With synthetic images the data is passed to train.run; the name is a placeholder then.
      dataset="mnist" if synthetic else config.dataset,
      data_dir=None if synthetic else data.resolve_data_dir(config.dataset, config.data_dir),
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


def paired_difference(with_penalty, without_penalty) -> dict:
  """with - without, paired by seed (`stats.paired_difference`; NaN drops the pair), under this
  study's names: {"mean", "ci95", "n_pairs", "p_value", "penalty_wins", "differences"}."""
  result = stats.paired_difference(with_penalty, without_penalty)
  result["mean"] = result.pop("mean_difference")
  result["penalty_wins"] = result.pop("wins")
  return result


def _per_seed(members: list, label: str, seeds: int) -> dict:
  """{metric: (seeds,) values} and the validation curves (seeds, epochs + 1) of `label`;
  NaN for a diverged or missing member."""
  values = {metric: np.full(seeds, np.nan) for metric in METRICS}
  curves = None
  for m in members:
    if m["config"]["label"] != label:
      continue
    seed = m["config"]["seed"]
    curve = [m["initial"]["val_accuracy"]] + [e["val_accuracy"] for e in m["epochs"]]
    curve = np.array([np.nan if v is None else v for v in curve], np.float64)
    if curves is None:
      curves = np.full((seeds, len(curve)), np.nan)
    curves[seed] = curve
    if m["status"] != "done":
      continue
    if m["test_accuracy"] is not None:
      values["test_accuracy"][seed] = m["test_accuracy"]
    if np.any(np.isfinite(curve[1:])):
      values["best_val_accuracy"][seed] = np.nanmax(curve[1:])
  return values, curves


def _orthogonality_gap(run_dir: str, train_config: train.TrainConfig, member: int) -> float:
  """max |s / g - 1| over the singular values of the member's penalized matrices, last epoch."""
  with np.load(os.path.join(run_dir, "spectra.npz")) as f:
    if train_config.model == "mlp":
      depth = train_config.members[member].depth
      s = f["spectra/hidden"][-1, member, :depth - 1]
    else:
      s = f["spectra/recurrent"][-1, member]
  gain = train_config.members[member].gain
  return float(np.max(np.abs(np.asarray(s, np.float64) / gain - 1.0)))


def summarize_arm(run_dir: str, train_config: train.TrainConfig, arm: str, seeds: int,
                  reg_strength: float) -> dict:
  """One depth or task of a finished run: accuracies, paired differences, curves, gaps."""
  members = io.read_json(os.path.join(run_dir, "metrics.json"))["members"]
  entry = {"with_penalty": {}, "without_penalty": {}, "difference": {}, "curves": {},
           "orthogonality_gap": {}}
  per_reg = {}
  for name, reg in (("without_penalty", 0.0), ("with_penalty", reg_strength)):
    label = _label(arm, reg)
    values, curves = _per_seed(members, label, seeds)
    per_reg[name] = values
    entry[name] = {metric: stats.interval(values[metric]) for metric in METRICS}
    mean, half = stats.mean_ci(curves, axis=0)
    entry["curves"][name] = {"val_accuracy_mean": mean, "val_accuracy_ci95": half}
    index = [i for i, m in enumerate(train_config.members) if m.label == label]
    entry["orthogonality_gap"][name] = stats.interval(
        [_orthogonality_gap(run_dir, train_config, i) for i in index])
    entry[name]["diverged"] = sum(1 for m in members
                                  if m["config"]["label"] == label and m["status"] == "diverged")
  for metric in METRICS:
    entry["difference"][metric] = paired_difference(per_reg["with_penalty"][metric],
                                                    per_reg["without_penalty"][metric])
  return entry


def analyse(config: StudyConfig, out_dir: str) -> dict:
  """Reads the finished runs under out_dir; returns the study.json content (minus timings)."""
  runs = run_configs(config)
  result = {"config": dataclasses.asdict(config), "chance_accuracy": CHANCE,
            "depths": {}, "tasks": {}}
  if "mlp" in runs:
    for d in config.depths:
      result["depths"][str(d)] = summarize_arm(os.path.join(out_dir, "mlp"), runs["mlp"],
                                               f"depth{d}", config.seeds, config.reg_strength)
  for task in config.tasks:
    name = f"rnn_{task}"
    result["tasks"][task] = summarize_arm(os.path.join(out_dir, name), runs[name], task,
                                          config.seeds, config.reg_strength)
    result["tasks"][task]["time_steps"] = _time_steps(config, task)
  return result


def _time_steps(config: StudyConfig, task: str) -> int:
  side = 28 if config.synthetic_side is None else config.synthetic_side
  if config.dataset == "cifar10" and config.synthetic_side is None:
    side = 32
  return side if task == "row" else side * side


# ----------------------------------------------------------------------------------------------
# Figures (from the study.json content).


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


_METRIC_NAMES = {"test_accuracy": "test accuracy", "best_val_accuracy": "best val accuracy"}
_COLORS = {"with_penalty": "tab:blue", "without_penalty": "tab:gray"}


def _plot_benefit(entries: dict, positions: np.ndarray, ticks: list, xlabel: str, title: str,
                  log_x: bool):
  """Left: paired difference with 95% CI per arm and metric; right: accuracies."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  ax = axes[0]
  span = float(np.ptp(np.log2(positions) if log_x else positions)) or 1.0
  for k, metric in enumerate(METRICS):
    offset = (k - 0.5) * 0.04 * span
    x = positions * 2.0 ** offset if log_x else positions + offset
    d = [e["difference"][metric] for e in entries.values()]
    ax.errorbar(x, [v["mean"] for v in d], yerr=[v["ci95"] for v in d], fmt="o-", capsize=4,
                color=f"C{k}", label=f"{_METRIC_NAMES[metric]} (mean, 95% CI)")
    for xi, v in zip(x, d):
      ax.plot(np.full(len(v["differences"]), xi), v["differences"], ".", color=f"C{k}",
              alpha=0.4, ms=5)
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
      depths, np.array([int(d) for d in depths], np.float64), list(depths), "MLP depth (hidden layers)",
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
  plt = _pyplot()
  from matplotlib.ticker import MaxNLocator
  arms = [(f"MLP depth {d}", e) for d, e in result["depths"].items()]
  arms += [(f"RNN {t} (T = {e['time_steps']})", e) for t, e in result["tasks"].items()]
  fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms), 3.4), squeeze=False)
  for ax, (title, entry) in zip(axes[0], arms):
    for name in ("without_penalty", "with_penalty"):
      curve = entry["curves"][name]
      mean = np.asarray(curve["val_accuracy_mean"], np.float64)
      half = np.asarray(curve["val_accuracy_ci95"], np.float64)
      epochs = np.arange(len(mean))
      ax.plot(epochs, mean, color=_COLORS[name], label=name.replace("_", " "))
      ax.fill_between(epochs, mean - half, mean + half, color=_COLORS[name], alpha=0.25)
    ax.axhline(CHANCE, color="r", lw=0.8, ls=":")
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: init)")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("validation accuracy (mean, 95% CI)")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------------------------


def run(config: StudyConfig, out_dir: str, dataset: Optional[data.Dataset] = None) -> dict:
  """Trains every arm (resuming finished work), then writes study.json and the figures.

  Args:
    config: the study.
    out_dir: results folder; runs go to out_dir/mlp and out_dir/rnn_<task>.
    dataset: preloaded images (default: `load_data(config)`).

  Returns:
    The study.json content, or, when a run was interrupted, {"interrupted": folder name}
    (run again to resume).

  Raises:
    data.DataUnavailableError, train.SetupError: data missing or unusable (before training).
  """
  start = time.perf_counter()
  if dataset is None:
    dataset = load_data(config)
  seconds = {}
  for name, train_config in run_configs(config).items():
    logging.info("benefit study: %s (%d members)", name, len(train_config.members))
    run_start = time.perf_counter()
    train.run(train_config, os.path.join(out_dir, name), resume=True, dataset=dataset)
    seconds[name] = time.perf_counter() - run_start
    status = io.read_json(os.path.join(out_dir, name, "status.json"))
    if status["status"] == "interrupted":
      logging.info("%s interrupted; run again to resume", name)
      return {"interrupted": name}
    seconds[f"{name}_epochs"] = float(np.sum(status["epoch_seconds"]))
  result = analyse(config, out_dir)
  result["seconds"] = {"runs": seconds, "total": time.perf_counter() - start}
  io.write_json(os.path.join(out_dir, "study.json"), result)
  if result["depths"]:
    io.save_figure(plot_benefit_vs_depth(result), os.path.join(out_dir, "benefit_vs_depth.png"))
  if result["tasks"]:
    io.save_figure(plot_benefit_vs_task(result),
                   os.path.join(out_dir, "benefit_row_vs_pixel.png"))
  io.save_figure(plot_learning_curves(result), os.path.join(out_dir, "learning_curves.png"))
  for group in ("depths", "tasks"):
    for arm, entry in result[group].items():
      for metric in METRICS:
        d = entry["difference"][metric]
        logging.info("%s %s, %s: with - without penalty = %+.4f +- %.4f (95%% CI, %d pairs, "
                     "p = %.3g)", group[:-1], arm, metric, d["mean"], d["ci95"], d["n_pairs"],
                     d["p_value"])
  logging.info("study E done in %.0fs: %s", result["seconds"]["total"], out_dir)
  return result
