"""The seed's claim where the penalty binds: gain-adjusted against unadjusted eq. 11.

`isometry.studies.seed_claim` ran the notebook's penalty (a mean over the H^2 entries of the Gram
matrix) and eq. 11 at strength reg / H^2; neither moves the recurrent kernel W much (its mean
singular value ends near 1.28 with or without them), so they cannot tell a penalty towards
g O(n) from one towards O(n). Here the paper's eq. 11 itself, lambda ||W^T W / g_p^2 - I||_F^2
(regularizer `so`, a sum), is run at strengths where it holds W near g O(n): g_p = g
("adjusted") against g_p = 1 ("unadjusted"), at the seed's gains (configs2: g = 1.025,
configs3: g = 1.25), with the seed's training (tanh RNN of 128 units, row-by-row Fashion-MNIST,
48k/12k/10k, Adam at 1e-4, batch 128).

A pilot (adjusted penalty only, one seed, 10 epochs, strengths 1e-3 to 1) records the largest
|s / g - 1| of W's singular values s per epoch, which is what chose the default strengths
(every strength whose adjusted run stays within 10% of g). Then one compiled sweep per preset
trains, for each strength, both penalties and every seed; the report is per (preset, strength)
the paired difference adjusted - unadjusted of the test accuracy (same seed: same init and batch
order), with its 95% interval, the paired t-test's p (and Holm's adjustment over the family of
comparisons), the seeds where adjusted won, and the final largest |s / g - 1| of each penalty.

`run(config, out_dir)` writes out_dir/pilot_<preset>/ and out_dir/<preset>/ (`isometry.engine.train`
run folders, by `harness.run_sweeps`: running again continues an interrupted study), summary.json
and seed_claim_binding.png.

References:
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019 (the seed).
  Bansal, Chen & Wang 2018, Can we gain more from orthogonality regularizations in training deep
  CNNs? (the soft-orthogonality penalty, eq. 11 in the seed's text).
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np
from absl import logging

from isometry import data
from isometry.engine import presets as seed_presets
from isometry.engine import train
from isometry.results import plots
from isometry.results import stats
from isometry.studies import harness

GAINS = {"configs2": 1.025, "configs3": 1.25}
BOUND = 0.1   # "binds": every singular value of the adjusted run's W within 10% of g
SUMMARY = "summary.json"
FIGURE = "seed_claim_binding.png"
# The smoke run's rows: learnable synthetic 6 x 6 images, enough of them for a few batches.
SMOKE = harness.Synthetic(num_train=128, num_val=32, num_test=32, side=6, learnable=True)


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """The study's settings (the seed's training unless noted).

  Attributes:
    dataset: mnist or fashion_mnist, read row by row.
    data_dir: IDX folder or TFDS dir (None: the offline copy if there, else TFDS).
    synthetic: small learnable synthetic rows instead of images (smoke runs, --quick).
    presets: seed presets whose gain g is used: configs2 (g = 1.025), configs3 (g = 1.25).
    strengths: penalty strengths lambda of eq. 11 (chosen by the pilot: they bind).
    seeds: seeds 0..seeds-1 per (strength, penalty).
    epochs: training epochs.
    pilot_strengths: strengths of the pilot (adjusted penalty, one seed); empty: no pilot.
    pilot_epochs: the pilot's epochs.
    hidden: RNN units.
    lr: Adam learning rate.
    batch_size: minibatch size.
    val_size: fraction (or number) of the training split held out for validation.
    max_train_examples: keep the first n training examples (None: all; smoke runs).
  """
  presets: Tuple[str, ...] = ("configs2", "configs3")
  strengths: Tuple[float, ...] = (1.0, 10.0)
  seeds: int = 5
  epochs: int = 30
  pilot_strengths: Tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
  pilot_epochs: int = 10
  hidden: int = seed_presets.SEED_HIDDEN
  lr: float = seed_presets.SEED_LEARNING_RATE
  batch_size: int = seed_presets.SEED_BATCH_SIZE
  val_size: float = 0.2
  max_train_examples: Optional[int] = None

  def __post_init__(self):
    for name in ("presets", "strengths", "pilot_strengths"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    harness.check_choices(self, "presets", tuple(GAINS), allow_empty=False)
    harness.check(bool(self.strengths), "strengths is empty")
    harness.check(all(s > 0 for s in self.strengths + self.pilot_strengths),
                  f"strengths must be > 0, got {self.strengths + self.pilot_strengths}")
    harness.check_seeds(self)
    harness.check_at_least(self, ("epochs", "pilot_epochs", "hidden", "batch_size"))
    harness.check_positive(self, ("lr", "val_size"))
    harness.check_examples(self, "max_train_examples", "batch_size")
    harness.check_data(self, ("mnist", "fashion_mnist"), "28 x 28 images, read row by row")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A smoke version (seconds of training): 8 units, 2 seeds, 2 epochs, synthetic rows."""
    settings = dict(seeds=2, epochs=2, pilot_strengths=(0.1, 1.0), pilot_epochs=1, hidden=8,
                    batch_size=16, val_size=32, synthetic=True, lr=1e-2, monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def label(adjusted: bool, strength: float) -> str:
  return f"{'adjusted' if adjusted else 'unadjusted'}_reg{strength:g}"


def _train_config(config: StudyConfig, members: tuple, epochs: int) -> train.TrainConfig:
  return train.TrainConfig(
      members=members, model="rnn", **config.train_data(),
      task="row", hidden=config.hidden, regularizer="so", optimizer="adam",
      batch_size=config.batch_size, epochs=epochs, val_size=config.val_size,
      max_train_examples=config.max_train_examples)


def pilot_config(config: StudyConfig, preset: str) -> train.TrainConfig:
  """The pilot of one preset: the adjusted penalty at every pilot strength, seed 0."""
  members = tuple(train.Member(label(True, s), "orthogonal", GAINS[preset], s, True, config.lr,
                               seed=0) for s in config.pilot_strengths)
  return _train_config(config, members, config.pilot_epochs)


def sweep_config(config: StudyConfig, preset: str) -> train.TrainConfig:
  """One preset's sweep: strengths x (adjusted, unadjusted) x seeds, in one program."""
  members = tuple(
      train.Member(label(adjusted, s), "orthogonal", GAINS[preset], s, adjusted, config.lr,
                   seed=seed)
      for s in config.strengths for adjusted in (True, False) for seed in range(config.seeds))
  return _train_config(config, members, config.epochs)


def sweeps(config: StudyConfig) -> dict:
  """{folder name: sweep} in run order: the pilots (pilot_<preset>), then the presets."""
  pilots = {f"pilot_{p}": pilot_config(config, p) for p in config.presets
            if config.pilot_strengths}
  return {**pilots, **{p: sweep_config(config, p) for p in config.presets}}


def deviations(result: harness.SweepResult, gain: float, **fields) -> np.ndarray:
  """(S, E) max |s / g - 1| over W's singular values s after each epoch 1..E, per seed."""
  largest = result.history("singular_values.max", **fields)[:, 1:]
  smallest = result.history("singular_values.min", **fields)[:, 1:]
  return np.maximum(np.abs(largest / gain - 1.0), np.abs(smallest / gain - 1.0))


def summarize_pilot(config: StudyConfig, preset: str, result: harness.SweepResult) -> dict:
  """Per pilot strength: the largest |s / g - 1| per epoch and whether it stayed within BOUND."""
  gain = GAINS[preset]
  rows = []
  for strength in config.pilot_strengths:
    chosen = dict(label=label(True, strength), seed=0)
    trajectory = deviations(result, gain, **chosen)[0]
    rows.append({"strength": strength,
                 "max_abs_s_over_g_minus_1": [float(v) for v in trajectory],
                 "binds": bool(np.max(trajectory) <= BOUND),
                 "test_accuracy": result.metrics["members"][
                     result.select(**chosen)[0]]["test_accuracy"]})
  return {"preset": preset, "gain": gain, "epochs": config.pilot_epochs, "strengths": rows}


def summarize(config: StudyConfig, results: harness.Sweeps) -> dict:
  """summary.json without the pilot: one comparison per (preset, strength) of the test
  accuracy, adjusted - unadjusted paired by seed, Holm-adjusted across all of them (the family:
  presets x strengths)."""
  cells, pairs = [], {}
  for preset in config.presets:
    gain, result = GAINS[preset], results[preset]
    for strength in config.strengths:
      accuracy, final = {}, {}
      for adjusted in (True, False):
        chosen = dict(label=label(adjusted, strength))
        accuracy[adjusted] = result.per_seed("test_accuracy", **chosen)
        final[adjusted] = float(np.nanmean(deviations(result, gain, **chosen)[:, -1]))
      pairs[len(cells)] = (accuracy[True], accuracy[False])
      cells.append({
          "preset": preset, "gain": gain, "strength": strength, "epochs": config.epochs,
          "seeds": config.seeds,
          "test_accuracy": {"adjusted": stats.interval(accuracy[True]),
                            "unadjusted": stats.interval(accuracy[False])},
          "max_abs_s_over_g_minus_1": {"adjusted": final[True], "unadjusted": final[False]}})
  family = harness.compare_family(pairs)
  comparisons = []
  for i, cell in enumerate(cells):
    paired = family[i]
    difference = {"mean": paired["mean_difference"], "ci95": paired["ci95"],
                  "p": paired["p_value"], "wins": paired["wins"], "n": paired["n_pairs"],
                  "values": paired["differences"], "p_holm": paired["p_holm"]}
    comparisons.append({**{k: cell[k] for k in ("preset", "gain", "strength", "epochs",
                                                 "seeds")},
                        "difference": difference, "test_accuracy": cell["test_accuracy"],
                        "max_abs_s_over_g_minus_1": cell["max_abs_s_over_g_minus_1"]})
  return {"config": dataclasses.asdict(config), "comparisons": comparisons}


def figure(summary: dict):
  """Left: the pilot's largest |s/g - 1| per epoch; right: the paired differences."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  ax = axes[0]
  for i, pilot in enumerate(summary["pilot"]):
    for j, row in enumerate(pilot["strengths"]):
      trajectory = row["max_abs_s_over_g_minus_1"]
      ax.plot(range(1, len(trajectory) + 1), trajectory, ["-", "--"][i % 2], color=f"C{j}",
              label=f"g={pilot['gain']:g}, lambda={row['strength']:g}")
  ax.axhline(BOUND, color="k", lw=0.8)
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("largest |s/g - 1| of W (adjusted)")
  ax.set_title("Pilot: which strengths bind (black: 10%)", fontsize=10)
  if summary["pilot"]:
    ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  ax = axes[1]
  rows = summary["comparisons"]
  for i, c in enumerate(rows):
    d = c["difference"]
    ax.errorbar(d["mean"], i, xerr=d["ci95"], fmt="o", color="C0", capsize=3)
    ax.plot(d["values"], np.full(len(d["values"]), i + 0.15), ".", color="C0", alpha=0.4)
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([f"g={c['gain']:g}, lambda={c['strength']:g}" for c in rows])
  ax.set_xlabel("test accuracy: adjusted - unadjusted (paired by seed, 95% CI)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset: Optional[data.Dataset] = None) -> Optional[dict]:
  """Runs the pilots and the sweeps (`harness.run_sweeps`: a finished sweep is read back, an
  interrupted one resumes), then writes the summary and the figure.

  Args:
    config: the study.
    out_dir: results folder: out_dir/pilot_<preset>/ and out_dir/<preset>/ (run folders),
      summary.json and seed_claim_binding.png.
    overwrite: replace a finished study in out_dir (else refused before any work).
    dataset: preloaded images (default: the config's).

  Returns:
    summary.json's content ({"config", "comparisons", "pilot"}), or None if a sweep was
    interrupted (run again to resume).

  Raises:
    data.DataUnavailableError, train.SetupError: data missing or bad, or out_dir holds a
      finished study (before anything is trained).
  """
  dataset = harness.start(out_dir, SUMMARY, overwrite,
                          lambda: config.images(config.val_size, SMOKE), dataset)
  results = harness.run_sweeps(sweeps(config), out_dir, dataset=dataset, overwrite=overwrite)
  if results is None:
    return None
  summary = summarize(config, results)
  summary["pilot"] = [summarize_pilot(config, p, results[f"pilot_{p}"]) for p in config.presets
                      if config.pilot_strengths]
  harness.save(out_dir, SUMMARY, summary, {FIGURE: figure})
  for c in summary["comparisons"]:
    d = c["difference"]
    logging.info("g=%g lambda=%g: adjusted - unadjusted test accuracy %+.4f +- %.4f (p %.3g, "
                 "Holm %.3g, adjusted wins %d/%d); final |s/g-1| %.3f vs %.3f", c["gain"],
                 c["strength"], d["mean"], d["ci95"], d["p"], d["p_holm"], d["wins"], d["n"],
                 c["max_abs_s_over_g_minus_1"]["adjusted"],
                 c["max_abs_s_over_g_minus_1"]["unadjusted"])
  return summary
