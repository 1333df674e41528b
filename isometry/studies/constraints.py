"""Study D: can a hard orthogonality constraint hurt?

Vorontsov et al. 2017 train RNNs whose recurrent kernel W is held in a band of singular values
[g (1 - m), g (1 + m)] and find that the hard constraint (m = 0, W = g times an orthogonal
matrix) learns slower and ends worse than a loose band or a soft penalty on several tasks: some
departure from orthogonality helps. We test that on a vanilla tanh RNN (`isometry.engine.models`) on
row-by-row images (T = 28, Fashion-MNIST by default), orthogonal init at gain g, Adam, with the
recurrent kernel trained under one of these arms:

  none          unconstrained, no penalty.
  soft          the soft penalty reg * ||W^T W / g^2 - I||_F^2 (regularizer "so"), no constraint.
  projection    Adam step, then the polar projection onto g O(n)   (hard, m = 0).
  cayley        Riemannian SGD on g O(n) by the Cayley retraction at the same learning rate
                (hard; it replaces Adam for W only, so W takes plain gradient steps).
  expm          W = g base expm(A - A^T), Adam on A (hard; Lezcano-Casado & Martinez-Rubio 2019).
  riemannian_adam  Cayley ADAM on g O(n) at the same learning rate (hard; Li, Li & Todorovic
                2020): Adam's moments kept in the tangent space, each step a Cayley retraction,
                so W keeps an adaptive step without leaving the manifold.
  margin<m>     Adam step, then the singular values clipped into [g (1 - m), g (1 + m)]
                (`constraints.spectral_margin`; margin0 is projection computed by an SVD).

Each arm is one `isometry.engine.train` sweep (its seeds are vmapped members of one compiled program)
in out_dir/<arm>/, run by `harness.run_sweeps` (running again continues an interrupted study).
Per arm the study reports, over seeds, the best validation accuracy over epochs and the test
accuracy after the last epoch, mean +- 95% CI (Student t), the paired difference to "none" (same
seed: same init and batch order; Holm-adjusted over every arm and metric, HOLM_FAMILY), the
wall time per epoch and per step (first epoch, which compiles, reported apart), and the
trajectory of the recurrent kernel's singular values over epochs (epoch 0 = init).

`run(config, out_dir)` writes study.json, D_accuracy.png, D_singular_values.png and
D_val_curves.png. The committed run (results/D_constraints) took 10.5 minutes of wall time for
the first 9 arms (5 seeds, 12 epochs of 62 steps) on 2 lightly shared CPU cores; riemannian_adam
was added later (74 s with a fresh none arm; see its README for how the two were merged).

References:
  E. Vorontsov, C. Trabelsi, S. Kadoury, C. Pal, On orthogonality and learning recurrent
  networks with long term dependencies, ICML 2017.
  M. Lezcano-Casado, D. Martinez-Rubio, Cheap orthogonal constraints in neural networks, ICML
  2019 (expm).
  Z. Wen, W. Yin, A feasible method for optimization with orthogonality constraints, 2013
  (Cayley).
  J. Li, F. Li, S. Todorovic, Efficient Riemannian optimization on the Stiefel manifold via the
  Cayley transform, ICLR 2020 (riemannian_adam).
"""
import dataclasses
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np

from isometry.results import plots
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness

ARMS = ("none", "soft", "projection", "cayley", "expm", "riemannian_adam")
HARD = ("projection", "cayley", "expm", "riemannian_adam")
BASELINE = "none"
METRICS = ("best_val_accuracy", "test_accuracy")
SUMMARY = "study.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """Study D's settings. Defaults: the committed run.

  Attributes:
    arms: arms among none, soft, projection, cayley, expm, riemannian_adam (see above).
    margins: spectral margins m in [0, 1]; each adds an arm "margin<m>".
    seeds: seeds 0..seeds-1 per arm (>= 2 for a confidence interval).
    epochs: training epochs.
    hidden: RNN units.
    gain: g, the init gain and the centre of every constraint and penalty.
    lr: Adam learning rate (also the Cayley step size of arm "cayley" and the Cayley ADAM
      rate of arm "riemannian_adam").
    reg_strength: lambda of arm "soft".
    batch_size: minibatch size.
    max_train_examples: keep the first n training examples (None: all).
    val_size: training examples held out for validation.
    dataset: mnist or fashion_mnist (28 x 28, read row by row).
    data_dir: IDX folder or TFDS dir (None: data.resolve_data_dir's offline copy, else TFDS).
    synthetic: train on 6 x 6 learnable synthetic images instead (smoke runs).
    unroll: lax.scan unroll over time.
  """
  arms: Tuple[str, ...] = ARMS
  margins: Tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
  seeds: int = 5
  epochs: int = 12
  hidden: int = 128
  gain: float = 1.0
  lr: float = 1e-3
  reg_strength: float = 0.01
  batch_size: int = 128
  max_train_examples: Optional[int] = 8000
  val_size: int = 5000
  unroll: int = 4

  def __post_init__(self):
    object.__setattr__(self, "arms", tuple(self.arms))
    object.__setattr__(self, "margins", tuple(float(m) for m in self.margins))
    harness.check_choices(self, "arms", ARMS)
    for m in self.margins:
      harness.check(0 <= m <= 1, f"margins must be in [0, 1], got {m:g}")
    harness.check(len(set(self.margins)) == len(self.margins), f"margins repeat: {self.margins}")
    harness.check(bool(self.arms or self.margins), "choose at least one arm or margin")
    harness.check_seeds(self)
    harness.check_at_least(self, ("epochs", "hidden", "batch_size", "val_size", "unroll"))
    harness.check_positive(self, ("gain", "lr"))
    harness.check(self.reg_strength >= 0, f"reg_strength must be >= 0, got {self.reg_strength}")
    harness.check("soft" not in self.arms or self.reg_strength > 0,
                  "arm soft needs reg_strength > 0 (with 0 it is arm none)")
    harness.check_examples(self, "max_train_examples", "batch_size")
    harness.check_data(self, ("mnist", "fashion_mnist"), "28 x 28 images, read row by row")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A smoke version (well under a minute): hidden 8, 2 seeds, 2 epochs, a synthetic task."""
    settings = dict(seeds=2, epochs=2, hidden=8, batch_size=16, max_train_examples=None,
                    val_size=32, synthetic=True, unroll=1, lr=1e-2, reg_strength=0.1,
                    monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def margin_arm(margin: float) -> str:
  return f"margin{margin:g}"


def arm_names(config: StudyConfig) -> Tuple[str, ...]:
  """The arms in run order: config.arms, then one "margin<m>" per margin."""
  return tuple(config.arms) + tuple(margin_arm(m) for m in config.margins)


def arm_margin(arm: str) -> Optional[float]:
  """m of a "margin<m>" arm, None for the others."""
  return float(arm[len("margin"):]) if arm.startswith("margin") else None


def band(config: StudyConfig, arm: str) -> Tuple[float, float]:
  """The singular-value interval the arm's recurrent kernel is held in ((0, inf) if none)."""
  m = 0.0 if arm in HARD else arm_margin(arm)
  if m is None:
    return 0.0, float("inf")
  return config.gain * (1 - m), config.gain * (1 + m)


def arm_train_config(config: StudyConfig, arm: str) -> train.TrainConfig:
  """The `isometry.engine.train` sweep of one arm: every seed a member labelled `arm`."""
  margin = arm_margin(arm)
  if margin is not None:
    constraint, margin_value = "margin", margin
  else:
    constraint, margin_value = (arm if arm in HARD else "none"), 0.1
  soft = arm == "soft"
  members = tuple(
      train.Member(label=arm, init="orthogonal", gain=config.gain,
                   reg_strength=config.reg_strength if soft else 0.0, gain_adjusted=True,
                   lr=config.lr, seed=seed) for seed in range(config.seeds))
  return train.TrainConfig(
      members=members, model="rnn",
      **config.train_data(),
      task="row", hidden=config.hidden, regularizer="so" if soft else "none",
      constraint=constraint, margin=margin_value, optimizer="adam",
      batch_size=config.batch_size, epochs=config.epochs, unroll=config.unroll,
      val_size=config.val_size, max_train_examples=config.max_train_examples)


# ----------------------------------------------------------------------------------------------
# Summaries of finished arms.


def singular_value_trajectory(result: harness.SweepResult) -> dict:
  """Per epoch (0 = init) the recurrent kernel's singular values over seeds.

  Returns:
    {"epoch": [0..E], "mean"/"min"/"max": mean over seeds of each member's mean / smallest /
    largest singular value, "min_over_seeds"/"max_over_seeds": the extremes over all seeds}.
    Diverged members are left out (their weights are frozen), unless every member diverged.
  """
  kept = ~result.diverged()
  if not kept.any():
    kept[:] = True
  get = lambda stat: result.history(f"singular_values.{stat}")[kept]   # (seeds, E + 1)
  mins, maxs, means = get("min"), get("max"), get("mean")
  return {"epoch": list(range(mins.shape[1])), "mean": means.mean(0).tolist(),
          "min": mins.mean(0).tolist(), "max": maxs.mean(0).tolist(),
          "min_over_seeds": mins.min(0).tolist(), "max_over_seeds": maxs.max(0).tolist()}


def val_curve(result: harness.SweepResult) -> dict:
  """Validation accuracy per epoch (1..E): mean +- 95% CI over seeds (NaN for diverged)."""
  table = result.history("val_accuracy")[:, 1:]
  mean, half = stats.mean_ci(table, axis=0)
  return {"epoch": list(range(1, table.shape[1] + 1)), "mean": mean.tolist(),
          "ci95": half.tolist()}


def timing(status: dict) -> dict:
  """Wall time of an arm: the first epoch (compiles) apart, the median of the others."""
  seconds = np.asarray(status["epoch_seconds"], np.float64)
  steps = int(status["steps_per_epoch"])
  later = seconds[1:] if seconds.size > 1 else seconds
  median = float(np.median(later)) if later.size else float("nan")
  return {"first_epoch_seconds": float(seconds[0]) if seconds.size else float("nan"),
          "epoch_seconds_median": median, "ms_per_step": 1e3 * median / steps,
          "steps_per_epoch": steps, "total_seconds": float(np.sum(seconds)),
          "epoch_seconds": seconds.tolist()}


def summarize_arm(config: StudyConfig, arm: str, result: harness.SweepResult) -> dict:
  """One arm's entry of study.json."""
  lo, hi = band(config, arm)
  entry = {"arm": arm, "band": [lo, hi if np.isfinite(hi) else None],
           "status": result.status["status"],
           "diverged_members": result.status["diverged_members"],
           "singular_values": singular_value_trajectory(result),
           "val_curve": val_curve(result), "timing": timing(result.status)}
  for metric in METRICS:
    entry[metric] = stats.interval(result.per_seed(metric))
  return entry


def compare_to_baseline(arms: dict) -> dict:
  """{arm: {metric: harness.compare(arm, none)}} for every arm but the baseline, with "p_holm":
  Holm's adjustment over the family of every arm's comparison in every metric (HOLM_FAMILY)."""
  if BASELINE not in arms:
    return {}
  family = harness.compare_family({
      (name, metric): (entry[metric]["values"], arms[BASELINE][metric]["values"])
      for name, entry in arms.items() if name != BASELINE for metric in METRICS})
  nested = {}
  for (name, metric), record in family.items():
    nested.setdefault(name, {})[metric] = record
  return nested


HOLM_FAMILY = ("every arm against none, in best validation and test accuracy (arms - 1) x 2 "
               "paired comparisons, Holm-adjusted together")


def summarize(config: StudyConfig, sweeps: harness.Sweeps) -> dict:
  """study.json content from the finished arms."""
  arms = {arm: summarize_arm(config, arm, result) for arm, result in sweeps.items()}
  return {"config": dataclasses.asdict(config),
          "dataset": "synthetic" if config.synthetic else config.dataset,
          "arms": arms, "paired_vs_none": compare_to_baseline(arms), "holm_family": HOLM_FAMILY}


def resummarize(out_dir: str) -> dict:
  """Recomputes study.json's paired comparisons (with Holm) from its stored per-seed
  accuracies, without training (`harness.resummarize`); every other number stays."""
  return harness.resummarize(out_dir, SUMMARY, lambda summary: {
      **summary, "paired_vs_none": compare_to_baseline(summary["arms"]),
      "holm_family": HOLM_FAMILY})


# ----------------------------------------------------------------------------------------------
# Figures (from study.json content).


def _color(i: int) -> str:
  return f"C{i % 10}"


def plot_accuracy(summary: dict):
  """Best val and test accuracy per arm: mean, 95% CI bars, and the seeds as dots."""
  plt = plots.pyplot()
  arms = summary["arms"]
  fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4.2), squeeze=False)
  for ax, metric in zip(axes[0], METRICS):
    for i, entry in enumerate(arms.values()):
      v = entry[metric]
      plots.errorbar_with_seeds(ax, i, v["mean"], v["ci95"], [v["values"]], color=_color(i),
                                capsize=4, dx=0.2, alpha=0.5, ms=None)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(list(arms), rotation=45, ha="right")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
  fig.suptitle(f"{summary['dataset']} rows, tanh RNN H={summary['config']['hidden']}: mean, "
               f"95% CI and seeds ({summary['config']['seeds']} per arm)", fontsize=10)
  fig.tight_layout()
  return fig


def plot_singular_values(summary: dict):
  """Min / mean / max singular value of the recurrent kernel per epoch, one panel per arm."""
  plt = plots.pyplot()
  arms = summary["arms"]
  cols = min(3, len(arms))
  rows = -(-len(arms) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False,
                           sharex=True)
  for ax in axes.flat[len(arms):]:
    ax.set_visible(False)
  for i, (ax, (name, entry)) in enumerate(zip(axes.flat, arms.items())):
    sv = entry["singular_values"]
    ax.fill_between(sv["epoch"], sv["min_over_seeds"], sv["max_over_seeds"], color=_color(i),
                    alpha=0.15, label="range over seeds")
    for key, style in (("max", "-"), ("mean", ":"), ("min", "--")):
      ax.plot(sv["epoch"], sv[key], style, color=_color(i), label=key)
    lo, hi = entry["band"]
    if hi is not None:
      ax.axhline(lo, color="k", lw=0.6)
      ax.axhline(hi, color="k", lw=0.6)
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
  for column in range(cols):
    # The lowest panel in use of each column carries the epoch axis (the row below may be
    # partly empty, and sharex hides the tick labels of all but the last row).
    lowest = axes[(len(arms) - 1 - column) // cols, column] if column < len(arms) else None
    if lowest is not None:
      lowest.xaxis.set_tick_params(labelbottom=True)
      lowest.set_xlabel("epoch (0 = init)")
  for ax in axes[:, 0]:
    ax.set_ylabel("singular value of W")
  axes.flat[0].legend(fontsize=7)
  fig.suptitle("Recurrent kernel singular values (mean over seeds; black lines: the band)",
               fontsize=10)
  fig.tight_layout()
  return fig


def plot_val_curves(summary: dict):
  """Validation accuracy per epoch per arm, mean over seeds with a 95% CI band."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, (name, entry) in enumerate(summary["arms"].items()):
    c = entry["val_curve"]
    plots.band(ax, c["epoch"], c["mean"], np.nan_to_num(np.asarray(c["ci95"], np.float64)),
               color=_color(i), style="--" if name in HARD else "-", alpha=0.15, label=name)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  ax.set_title("Validation accuracy (dashed: hard constraints; band 95% CI)", fontsize=10)
  fig.tight_layout()
  return fig


FIGURES = {"D_accuracy.png": plot_accuracy, "D_singular_values.png": plot_singular_values,
           "D_val_curves.png": plot_val_curves}


# ----------------------------------------------------------------------------------------------
# The study.


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset=None) -> Optional[dict]:
  """Trains every arm (continuing an interrupted study), then writes study.json and the figures.

  Args:
    config: the study.
    out_dir: results folder; arm runs go to out_dir/<arm>/.
    overwrite: replace a finished study in out_dir (else refused before any work).
    dataset: preloaded images (default: config.dataset, or the synthetic images).

  Returns:
    The study.json content; None where an arm was interrupted (run again to continue).

  Raises:
    data.DataUnavailableError, train.SetupError: before any training, where the data is
      missing or bad or out_dir holds a finished study (`harness.start`).
  """
  start = time.perf_counter()
  smoke = harness.Synthetic(64, config.val_size, 32, side=6, learnable=True)
  dataset = harness.start(out_dir, SUMMARY, overwrite,
                          lambda: config.images(config.val_size, smoke), dataset)
  sweeps = harness.run_sweeps({arm: arm_train_config(config, arm) for arm in arm_names(config)},
                              out_dir, dataset=dataset, overwrite=overwrite)
  if sweeps is None:
    return None
  summary = summarize(config, sweeps)
  summary["seconds_this_call"] = time.perf_counter() - start
  harness.save(out_dir, SUMMARY, summary, FIGURES)
  for name, entry in summary["arms"].items():
    t, sv = entry["test_accuracy"], entry["singular_values"]
    line = (f"{name}: test {t['mean']:.4f} +- {t['ci95']:.4f}, "
            f"{entry['timing']['epoch_seconds_median']:.1f} s/epoch, "
            f"final sv [{sv['min'][-1]:.3f}, {sv['max'][-1]:.3f}]")
    paired = summary["paired_vs_none"].get(name)
    if paired:
      d = paired["test_accuracy"]
      line += f", vs none {d['mean_difference']:+.4f} +- {d['ci95']:.4f} ({d['verdict']})"
    logging.info(line)
  return summary
