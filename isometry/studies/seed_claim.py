"""The seed's claim, tested: "a gain-adjusted regularizer outperforms a single-soft regularizer".

Hlav 2019 (notebook OrthogonalRegRNNSV.ipynb) trains a tanh RNN (128 units) on row-by-row
sequential MNIST with an orthogonal recurrent kernel at gain g = 1.025 (`configs2`) or 1.25
(`configs3`) and penalises the recurrent kernel W either towards g O(n) ("gain-adjusted":
W^T W / g^2 compared with the identity) or towards O(n) ("unadjusted": W^T W compared with the
identity), at strengths 1 and 0.5. The claim is that the adjusted penalty gives better accuracy.

The study runs both presets with every seed, under two penalty formulas:
  - "notebook": the notebook's Keras regularizer, reg * mean((W^T W / g_p^2 - 1)^2), which
    subtracts 1 from every entry of the Gram matrix (regularizer `notebook_so`);
  - "paper": the paper's eq. 11, ||W^T W / g_p^2 - I||_F^2 (regularizer `so`), at strength
    reg / H^2 so that it too is a mean over the H^2 entries and `reg` means the same size of
    penalty in both formulas.
The notebook runs include the presets' unregularized baselines; the paper runs only the four
regularized configurations of each preset (the baselines do not depend on the formula).

Per configuration it reports the best validation accuracy over epochs and the final test
accuracy, mean +- 95% CI (Student t over seeds), and per (formula, preset, strength) the paired
difference adjusted - unadjusted (same seed: same init and batch order), with its CI, a paired
t-test, Holm's adjustment over the family of every cell and metric (HOLM_FAMILIES) and the count
of seeds where adjusted wins. The claim is confirmed for a comparison when
the CI of the mean paired difference lies above 0, refuted when it lies below, and not supported
when it covers 0; "pooled" averages, per seed, the differences over presets and strengths (the
seed is the independent unit: cells with one seed share its init and batch order).

Each (preset, formula) is one `isometry.engine.train` sweep (every configuration and seed in one
compiled program) in its own folder under out_dir, run by `harness.run_sweeps`, so an
interrupted study loses no finished epoch.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np
from absl import logging

from isometry import data
from isometry.results import plots
from isometry.engine import presets as seed_presets
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness

PRESETS = ("configs2", "configs3")
FORMULAS = {"notebook": "notebook_so", "paper": "so"}
METRICS = ("best_val_accuracy", "test_accuracy")
SUMMARY = "summary.json"
# What the claim's paired comparison calls an interval above 0, below 0, covering 0.
VERDICTS = ("confirmed", "refuted", "not supported")


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """The study's settings (the seed's training settings unless noted).

  Attributes:
    dataset: mnist or fashion_mnist (row task: 28 x 28 images).
    data_dir: folder with the IDX files, or a TFDS data dir; None (or empty): the offline copy
      of the dataset where this machine has one, else TFDS (downloads).
    presets: which of configs2, configs3 to run.
    formulas: which penalty formulas to run: notebook (mean((W^T W/g^2 - 1)^2)) and/or paper
      (eq. 11, ||W^T W/g^2 - I||_F^2 / H^2).
    seeds: seeds 0..seeds-1 per configuration (>= 2 for confidence intervals).
    epochs: training epochs (the seed: 50).
    hidden, lr, batch_size, val_size: as in `isometry.engine.train.TrainConfig`.
    max_train_examples: keep only the first n training examples (smoke runs).
    unroll: scan unroll over time.
    synthetic: train on 64 random 28 x 28 images instead (smoke runs; nothing to learn).
  """
  presets: Tuple[str, ...] = PRESETS
  formulas: Tuple[str, ...] = tuple(FORMULAS)
  seeds: int = 5
  epochs: int = 10
  hidden: int = seed_presets.SEED_HIDDEN
  lr: float = seed_presets.SEED_LEARNING_RATE
  batch_size: int = seed_presets.SEED_BATCH_SIZE
  val_size: int = 12000
  max_train_examples: Optional[int] = None
  unroll: int = 4

  def __post_init__(self):
    object.__setattr__(self, "presets", tuple(self.presets))
    object.__setattr__(self, "formulas", tuple(self.formulas))
    harness.check_choices(self, "presets", PRESETS, allow_empty=False)
    harness.check_choices(self, "formulas", tuple(FORMULAS), allow_empty=False)
    harness.check_seeds(self)
    harness.check_at_least(self, ("epochs", "hidden", "batch_size", "val_size", "unroll"))
    harness.check_positive(self, ("lr",))
    harness.check_examples(self, "max_train_examples", "batch_size")
    harness.check_data(self, ("mnist", "fashion_mnist"), "28 x 28 images, read row by row")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A smoke run in seconds: 64 random images, hidden 8, 2 seeds, 1 epoch."""
    settings = dict(synthetic=True, seeds=2, epochs=1, hidden=8, batch_size=16, val_size=16,
                    unroll=1, monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def is_regularized(label: str) -> bool:
  return any(p.label == label and p.reg_strength > 0
             for name in PRESETS for p in seed_presets.get_preset(name))


def sweep_members(preset: str, formula: str, seeds: int, hidden: int, lr: float) -> tuple:
  """The members of one (preset, formula) sweep; see the module docstring."""
  members = train.preset_members(preset, seeds, (lr,))
  if formula == "notebook":
    return members
  return tuple(dataclasses.replace(m, reg_strength=m.reg_strength / hidden**2)
               for m in members if m.reg_strength > 0)


def train_config(config: StudyConfig, preset: str, formula: str) -> train.TrainConfig:
  return train.TrainConfig(
      members=sweep_members(preset, formula, config.seeds, config.hidden, config.lr),
      model="rnn", **config.train_data(),
      task="row", hidden=config.hidden, regularizer=FORMULAS[formula], optimizer="adam",
      batch_size=config.batch_size, epochs=config.epochs, unroll=config.unroll,
      val_size=config.val_size, max_train_examples=config.max_train_examples, preset=preset)


def run_name(preset: str, formula: str) -> str:
  return f"{preset}_{formula}"


def paired_comparison(record: dict) -> dict:
  """A `harness.compare` record (adjusted - unadjusted, the claim's verdict) under this study's
  names: "adjusted_wins" counts the seeds where the adjusted penalty won."""
  result = dict(record)
  result["adjusted_wins"] = result.pop("wins")
  result["verdict"] = result.pop("verdict")
  return result


def compare_family(pairs: dict) -> dict:
  """`harness.compare_family` of {key: (adjusted, unadjusted)} with the claim's verdicts."""
  return {key: paired_comparison(record)
          for key, record in harness.compare_family(pairs, VERDICTS).items()}


HOLM_FAMILIES = {
    "comparisons": "every (formula, preset, strength) cell in both metrics: formulas x presets "
                   "x 2 strengths x 2 metrics paired comparisons, Holm-adjusted together",
    "pooled": "the pooled difference of every formula in both metrics: formulas x 2, "
              "Holm-adjusted together (a second family: the pooled tests reuse the cells' data)"}


def with_comparisons(summary: dict) -> dict:
  """The summary with its "comparisons" and "pooled" recomputed from the per-seed accuracies
  it stores under "runs" (see the module docstring), each a Holm family (HOLM_FAMILIES)."""
  runs = summary["runs"]
  cells, pairs = [], {}
  for formula in summary["config"]["formulas"]:
    for preset in summary["config"]["presets"]:
      configs = runs[run_name(preset, formula)]
      for p in seed_presets.get_preset(preset):
        if not (p.reg_strength > 0 and p.gain_adjusted):
          continue
        partner = next(q.label for q in seed_presets.get_preset(preset)
                       if q.reg_strength == p.reg_strength and not q.gain_adjusted)
        cells.append({"formula": formula, "preset": preset, "gain": p.gain,
                      "reg_strength": p.reg_strength, "adjusted": p.label,
                      "unadjusted": partner})
        for metric in METRICS:
          pairs[(len(cells) - 1, metric)] = (
              np.asarray(configs[p.label][metric]["values"], np.float64),
              np.asarray(configs[partner][metric]["values"], np.float64))
  by_cell = compare_family(pairs)
  comparisons = [{**cell, **{metric: by_cell[(i, metric)] for metric in METRICS}}
                 for i, cell in enumerate(cells)]
  # Pooled: per seed, the mean difference over the cells. Cells with one seed share its init
  # and batch order, so the seed (not the cell) is the independent unit: n = seeds.
  pooled_pairs = {}
  for formula in summary["config"]["formulas"]:
    for metric in METRICS:
      differences = [a - u for (i, m), (a, u) in pairs.items()
                     if m == metric and cells[i]["formula"] == formula]
      per_seed = np.nanmean(np.stack(differences), axis=0)
      pooled_pairs[(formula, metric)] = (per_seed, np.zeros_like(per_seed))
  pooled = {}
  for (formula, metric), record in compare_family(pooled_pairs).items():
    pooled.setdefault(formula, {})[metric] = record
  return {**summary, "comparisons": comparisons, "pooled": pooled,
          "holm_families": HOLM_FAMILIES}


def analyse(config: StudyConfig, sweeps: harness.Sweeps) -> dict:
  """The summary of the finished sweeps (see module docstring)."""
  runs = {}
  for formula in config.formulas:
    for preset in config.presets:
      name = run_name(preset, formula)
      result = sweeps[name]
      labels = list(dict.fromkeys(m.label for m in result.config.members))
      runs[name] = {label: {metric: stats.interval(result.per_seed(metric, label=label))
                            for metric in METRICS} for label in labels}
  return with_comparisons({"config": dataclasses.asdict(config), "dataset": config.dataset,
                           "runs": runs, "comparisons": [], "pooled": {}})


def resummarize(out_dir: str) -> dict:
  """`with_comparisons` of a finished study's summary.json, written back without training."""
  return harness.resummarize(out_dir, SUMMARY, with_comparisons)


def plot(summary: dict):
  """Accuracy per configuration with 95% CIs (left) and paired differences (right)."""
  plt = plots.pyplot()
  runs = summary["runs"]
  fig, axes = plt.subplots(len(METRICS), 2, figsize=(13, 4.2 * len(METRICS)),
                           gridspec_kw={"width_ratios": [2.2, 1]}, squeeze=False)
  for row, metric in enumerate(METRICS):
    ax = axes[row, 0]
    ticks, names = [], []
    position = 0
    for run, configs in runs.items():
      for label, values in configs.items():
        v = values[metric]
        color = "C0" if "_adj_" in label else ("C1" if is_regularized(label) else "0.5")
        marker = "o" if run.endswith("notebook") else "s"
        plots.errorbar_with_seeds(ax, position, v["mean"], v["ci95"], [v["values"]],
                                  color=color, fmt=marker, dx=0.25)
        ticks.append(position)
        names.append(f"{run}: {label}")
        position += 1
      position += 1
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')}: mean, 95% CI, seeds (blue adjusted, orange "
                 "unadjusted, grey unregularized)", fontsize=9)
    ax.grid(alpha=0.3)

    ax = axes[row, 1]
    rows = summary["comparisons"]
    for i, c in enumerate(rows):
      d = c[metric]
      color = {"confirmed": "C2", "refuted": "C3"}.get(d["verdict"], "0.3")
      ax.errorbar(d["mean_difference"], i, xerr=d["ci95"], fmt="o", color=color, capsize=3)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{c['formula']} g={c['gain']:g} reg={c['reg_strength']:g}"
                        for c in rows], fontsize=8)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel(f"adjusted - unadjusted, {metric.replace('_', ' ')} (paired by seed)")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset: Optional[data.Dataset] = None) -> Optional[dict]:
  """Trains every (preset, formula) sweep (continuing an interrupted study), then writes the
  summary.

  Writes out_dir/<preset>_<formula>/ (an `isometry.engine.train` run folder each), summary.json and
  seed_claim.png.

  Returns:
    The summary; None where a sweep was interrupted (run again to continue).

  Raises:
    data.DataUnavailableError, train.SetupError: data missing or bad for these settings, or
      out_dir holds a finished study (before anything is trained).
  """
  dataset = harness.start(out_dir, SUMMARY, overwrite, lambda: config.images(config.val_size),
                          dataset)
  sweeps = harness.run_sweeps(
      {run_name(preset, formula): train_config(config, preset, formula)
       for formula in config.formulas for preset in config.presets},
      out_dir, dataset=dataset, overwrite=overwrite, plots=True)
  if sweeps is None:
    return None
  summary = analyse(config, sweeps)
  harness.save(out_dir, SUMMARY, summary, {"seed_claim.png": plot})
  for formula, by_metric in summary["pooled"].items():
    for metric, d in by_metric.items():
      logging.info("%s formula, %s: adjusted - unadjusted = %+.4f +- %.4f (95%% CI, %d pairs, "
                   "p = %.3g): %s", formula, metric, d["mean_difference"], d["ci95"],
                   d["n_pairs"], d["p_value"], d["verdict"])
  return summary
