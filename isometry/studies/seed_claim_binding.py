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
run folders, resumed if there), summary.json and seed_claim_binding.png.

References:
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019 (the seed).
  Bansal, Chen & Wang 2018, Can we gain more from orthogonality regularizations in training deep
  CNNs? (the soft-orthogonality penalty, eq. 11 in the seed's text).
"""
import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
from absl import logging

from isometry import data
from isometry.results import io
from isometry.engine import presets as seed_presets
from isometry.results import stats
from isometry.engine import train

GAINS = {"configs2": 1.025, "configs3": 1.25}
BOUND = 0.1   # "binds": every singular value of the adjusted run's W within 10% of g


@dataclasses.dataclass(frozen=True)
class BindingConfig:
  """The study's settings (the seed's training unless noted).

  Attributes:
    presets: seed presets whose gain g is used: configs2 (g = 1.025), configs3 (g = 1.25).
    strengths: penalty strengths lambda of eq. 11 (chosen by the pilot: they bind).
    seeds: seeds 0..seeds-1 per (strength, penalty).
    epochs: training epochs.
    pilot_strengths: strengths of the pilot (adjusted penalty, one seed); empty: no pilot.
    pilot_epochs: the pilot's epochs.
    dataset: mnist or fashion_mnist, read row by row.
    data_dir: IDX folder or TFDS dir (None: the offline copy if there, else TFDS).
    hidden: RNN units.
    lr: Adam learning rate.
    batch_size: minibatch size.
    val_size: fraction (or number) of the training split held out for validation.
    max_train_examples: keep the first n training examples (None: all; smoke runs).
    synthetic_data: a small learnable synthetic task instead of images (smoke runs).
  """
  presets: Tuple[str, ...] = ("configs2", "configs3")
  strengths: Tuple[float, ...] = (1.0, 10.0)
  seeds: int = 5
  epochs: int = 30
  pilot_strengths: Tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
  pilot_epochs: int = 10
  dataset: str = "fashion_mnist"
  data_dir: Optional[str] = None
  hidden: int = seed_presets.SEED_HIDDEN
  lr: float = seed_presets.SEED_LEARNING_RATE
  batch_size: int = seed_presets.SEED_BATCH_SIZE
  val_size: float = 0.2
  max_train_examples: Optional[int] = None
  synthetic_data: bool = False

  def __post_init__(self):
    for name in self.presets:
      if name not in GAINS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(GAINS)}")
    if not self.presets or not self.strengths:
      raise ValueError("choose at least one preset and one strength")
    if any(not s > 0 for s in self.strengths + self.pilot_strengths):
      raise ValueError("strengths must be > 0")
    if self.seeds < 2:
      raise ValueError(f"seeds must be >= 2 for a paired interval, got {self.seeds}")
    for name in ("epochs", "pilot_epochs", "hidden", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

  @classmethod
  def quick(cls, **overrides) -> "BindingConfig":
    """A smoke version (seconds of training): 8 units, 2 seeds, 2 epochs, synthetic rows."""
    settings = dict(seeds=2, epochs=2, pilot_strengths=(0.1, 1.0), pilot_epochs=1, hidden=8,
                    batch_size=16, val_size=32, synthetic_data=True, lr=1e-2)
    settings.update(overrides)
    return cls(**settings)


def label(adjusted: bool, strength: float) -> str:
  return f"{'adjusted' if adjusted else 'unadjusted'}_reg{strength:g}"


def _train_config(config: BindingConfig, members: tuple, epochs: int) -> train.TrainConfig:
  return train.TrainConfig(
      members=members, model="rnn", dataset=config.dataset,
      data_dir=None if config.synthetic_data else data.resolve_data_dir(config.dataset,
                                                                        config.data_dir),
      task="row", hidden=config.hidden, regularizer="so", optimizer="adam",
      batch_size=config.batch_size, epochs=epochs, val_size=config.val_size,
      max_train_examples=config.max_train_examples)


def pilot_config(config: BindingConfig, preset: str) -> train.TrainConfig:
  """The pilot of one preset: the adjusted penalty at every pilot strength, seed 0."""
  members = tuple(train.Member(label(True, s), "orthogonal", GAINS[preset], s, True, config.lr,
                               seed=0) for s in config.pilot_strengths)
  return _train_config(config, members, config.pilot_epochs)


def sweep_config(config: BindingConfig, preset: str) -> train.TrainConfig:
  """One preset's sweep: strengths x (adjusted, unadjusted) x seeds, in one program."""
  members = tuple(
      train.Member(label(adjusted, s), "orthogonal", GAINS[preset], s, adjusted, config.lr,
                   seed=seed)
      for s in config.strengths for adjusted in (True, False) for seed in range(config.seeds))
  return _train_config(config, members, config.epochs)


def deviation(entry: dict, gain: float) -> float:
  """max |s / g - 1| over W's singular values, from a metrics.json record's summary."""
  sv = entry["singular_values"]
  return max(abs(sv["max"] / gain - 1.0), abs(sv["min"] / gain - 1.0))


def _member(metrics: dict, wanted: train.Member) -> dict:
  """The metrics.json entry of the member `wanted` (matched on its whole config)."""
  fields = dataclasses.asdict(wanted)
  for m in metrics["members"]:
    if {k: m["config"][k] for k in fields} == fields:
      return m
  raise KeyError(f"no member {wanted} in this run")


def summarize_pilot(config: BindingConfig, preset: str, metrics: dict) -> dict:
  """Per pilot strength: the largest |s / g - 1| per epoch and whether it stayed within BOUND."""
  gain = GAINS[preset]
  rows = []
  for member in pilot_config(config, preset).members:
    m = _member(metrics, member)
    trajectory = [deviation(e, gain) for e in m["epochs"]]
    rows.append({"strength": member.reg_strength, "max_abs_s_over_g_minus_1": trajectory,
                 "binds": bool(max(trajectory) <= BOUND), "test_accuracy": m["test_accuracy"]})
  return {"preset": preset, "gain": gain, "epochs": config.pilot_epochs, "strengths": rows}


def summarize(config: BindingConfig, metrics_by_preset: dict) -> dict:
  """summary.json: one comparison per (preset, strength), Holm-adjusted across all of them."""
  comparisons = []
  sweep_members = {p: sweep_config(config, p).members for p in metrics_by_preset}
  for preset, metrics in metrics_by_preset.items():
    gain = GAINS[preset]
    for strength in config.strengths:
      accuracy, final = {}, {}
      for adjusted in (True, False):
        chosen = [m for m in sweep_members[preset]
                  if m.reg_strength == strength and m.gain_adjusted == adjusted]
        entries = [_member(metrics, m) for m in chosen]
        accuracy[adjusted] = np.array([np.nan if e["test_accuracy"] is None
                                       else e["test_accuracy"] for e in entries])
        final[adjusted] = float(np.mean([deviation(e["epochs"][-1], gain) for e in entries]))
      paired = stats.paired_difference(accuracy[True], accuracy[False])
      comparisons.append({
          "preset": preset, "gain": gain, "strength": strength, "epochs": config.epochs,
          "seeds": config.seeds,
          "difference": {"mean": paired["mean_difference"], "ci95": paired["ci95"],
                         "p": paired["p_value"], "wins": paired["wins"],
                         "n": paired["n_pairs"], "values": paired["differences"]},
          "test_accuracy": {"adjusted": stats.interval(accuracy[True]),
                            "unadjusted": stats.interval(accuracy[False])},
          "max_abs_s_over_g_minus_1": {"adjusted": final[True], "unadjusted": final[False]}})
  for comparison, p_holm in zip(comparisons,
                                stats.holm([c["difference"]["p"] for c in comparisons])):
    comparison["difference"]["p_holm"] = float(p_holm)
  return {"config": dataclasses.asdict(config), "comparisons": comparisons}


def figure(summary: dict, pilots: list):
  """Left: the pilot's largest |s/g - 1| per epoch; right: the paired differences."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  ax = axes[0]
  for i, pilot in enumerate(pilots):
    for j, row in enumerate(pilot["strengths"]):
      trajectory = row["max_abs_s_over_g_minus_1"]
      ax.plot(range(1, len(trajectory) + 1), trajectory, ["-", "--"][i % 2], color=f"C{j}",
              label=f"g={pilot['gain']:g}, lambda={row['strength']:g}")
  ax.axhline(BOUND, color="k", lw=0.8)
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel("largest |s/g - 1| of W (adjusted)")
  ax.set_title("Pilot: which strengths bind (black: 10%)", fontsize=10)
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


def load_data(config: BindingConfig) -> data.Dataset:
  if config.synthetic_data:
    return data.synthetic_dataset(128, 32, 32, side=6, learnable=True)
  return data.load_dataset(config.dataset, data.resolve_data_dir(config.dataset, config.data_dir),
                           val_size=config.val_size)


def run(config: BindingConfig,
        out_dir: str,
        dataset: Optional[data.Dataset] = None) -> Optional[dict]:
  """Runs the pilots and the sweeps (resuming finished work), then writes the summary.

  Returns:
    summary.json's content, or None if a sweep was interrupted (run again to resume).
  """
  if dataset is None:
    try:
      dataset = load_data(config)
    except ValueError as e:
      raise train.SetupError(str(e)) from e
  runs = [(f"pilot_{p}", pilot_config(config, p)) for p in config.presets
          if config.pilot_strengths] + [(p, sweep_config(config, p)) for p in config.presets]
  metrics = {}
  for name, train_config in runs:
    logging.info("seed claim (binding): sweep %s", name)
    folder = os.path.join(out_dir, name)
    metrics[name] = train.run(train_config, folder, resume=True, dataset=dataset).metrics
    if train.read_status(folder)["status"] == "interrupted":
      logging.info("interrupted; run the same command again to continue")
      return None
  pilots = [summarize_pilot(config, p, metrics[f"pilot_{p}"]) for p in config.presets
            if config.pilot_strengths]
  summary = summarize(config, {p: metrics[p] for p in config.presets})
  summary["pilot"] = pilots
  io.write_json(os.path.join(out_dir, "summary.json"), summary)
  io.save_figure(figure(summary, pilots), os.path.join(out_dir, "seed_claim_binding.png"))
  for c in summary["comparisons"]:
    d = c["difference"]
    logging.info("g=%g lambda=%g: adjusted - unadjusted test accuracy %+.4f +- %.4f (p %.3g, "
                 "Holm %.3g, adjusted wins %d/%d); final |s/g-1| %.3f vs %.3f", c["gain"],
                 c["strength"], d["mean"], d["ci95"], d["p"], d["p_holm"], d["wins"], d["n"],
                 c["max_abs_s_over_g_minus_1"]["adjusted"],
                 c["max_abs_s_over_g_minus_1"]["unadjusted"])
  return summary
