"""The critical gain of the seed's vanilla RNN, from the data, against the hand-picked gains.

Hlav 2019 initialises a Keras SimpleRNN (tanh, H = 128, zero bias, Glorot-uniform input kernel U,
recurrent kernel g times orthogonal) at g = 1.025 or 1.25, chosen by hand, and reads images row by
row (T = 28 steps of D = 28 pixels). The mean field of `isometry.theory.rnn_meanfield` gives the gain g*
at which the mean squared singular value of J = dh_T / dh_0 neither grows nor decays; it depends
on the data through the input drive variance q_in,t = E||x_t U||**2 / H. This study:

Stages 1-3 are in `rnn_gain_theory`; this module holds the study, its config and stage 4.

  1. theory: q_in,t from the pixel second moments and the Glorot variance, checked against the
     drive of the actual U of every training seed; g* in the three readings of the input
     (stationary at the time-averaged drive, time-dependent at the data-averaged drive,
     per-example), and the curves q*(g), chi(g) and the predicted log-growth rate per step;
  2. measurement: width-H RNNs at init (the model itself: Keras init, zero initial state) driven
     by real rows; their pre-activation variances q_t and log-growth rate of E||J^T u||**2 per
     step over a gain grid, against the three readings. The reading that matches sets g*;
  3. spectra: the free-probability density of J's squared singular values (`freeprob`, T equal
     factors D W with the D law at the stationary q*, i.e. W drawn afresh every step) against four
     sampled Jacobians, with the KS distance: untied W and Gaussian drive (what freeprob
     assumes), tied W and Gaussian drive (the RNN's weight sharing), tied W and real rows from the
     zero state at width N, and the H-unit model itself;
  4. training: one `isometry.engine.train` sweep, gains {g*, hand-picked ones} x {no penalty, the
     gain-adjusted SO penalty of the paper's eq. 11} x seeds; best validation and test accuracy
     per gain with 95% t intervals, and the paired (by seed: same U, read-out, batch order and
     orthogonal draw, only the gain differs) differences g* - each hand-picked gain.

Writes into out_dir: study.json (everything above), meanfield.png, spectra.png, accuracy.png and
training/ (the sweep's own folder, `harness.run_sweeps`). The sweep runs right after stage 1
(it needs g*), so an interruption loses only that stage; running again continues it.
"""
import dataclasses
import time
from typing import Optional, Tuple

from absl import logging
import jax
import numpy as np

from isometry import data
from isometry.results import plots
from isometry.engine import presets
from isometry.engine import regularizers
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness
from isometry.studies import rnn_gain_theory as theory

METRICS = ("best_val_accuracy", "test_accuracy")
SUMMARY = "study.json"
SWEEP = "training"   # the training sweep's folder in out_dir


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """Settings of the study (frozen; validated on construction).

  Attributes:
    dataset: mnist or fashion_mnist (row-by-row, T = D = 28).
    data_dir: IDX folder or TFDS dir; None: `data.resolve_data_dir` (the offline copy, else TFDS).
    synthetic: random 8 x 8 images instead of the dataset (smoke runs; nothing to learn).
    hidden: H, the model's units.
    seed: PRNG seed of the theory-side samples (networks, images, tangents).
    theory_examples: training examples whose per-example drives set the per-example g*.
    curve_gains: gain grid of the mean-field curves and of the measured growth rate.
    measure_networks, measure_examples, tangents: per gain of the grid, H-unit networks, images
      per network and random cotangents u per image for the measured growth rate.
    hand_gains: the seed's hand-picked gains (and 1).
    spectrum_width: N of the wide sampled Jacobians (untied, tied, data_wide).
    spectrum_networks: networks per gain at width N.
    model_networks: H-unit networks per gain (one image each) for the model's spectrum.
    grid_points: points of the predicted density's grid.
    regularizer, reg_strength: the penalty of the regularized half of the sweep ("so" is
      ||W^T W / g^2 - I||_F^2, the paper's eq. 11; strength 1 as configs2's "adj_Reg1").
    seeds: seeds per (gain, penalty) (>= 2 for intervals).
    epochs, lr, batch_size, val_size, max_train_examples, unroll: as `train.TrainConfig`.
  """
  hidden: int = presets.SEED_HIDDEN
  seed: int = 0
  theory_examples: int = 2048
  curve_gains: Tuple[float, ...] = tuple(np.round(np.arange(0.8, 1.6001, 0.05), 3).tolist())
  measure_networks: int = 32
  measure_examples: int = 8
  tangents: int = 8
  hand_gains: Tuple[float, ...] = (1.0, 1.025, 1.25)
  spectrum_width: int = 512
  spectrum_networks: int = 4
  model_networks: int = 16
  grid_points: int = 400
  regularizer: str = "so"
  reg_strength: float = 1.0
  seeds: int = 5
  epochs: int = 8
  lr: float = presets.SEED_LEARNING_RATE
  batch_size: int = presets.SEED_BATCH_SIZE
  val_size: int = 12000
  max_train_examples: Optional[int] = None
  unroll: int = 4

  def __post_init__(self):
    for name in ("curve_gains", "hand_gains"):
      object.__setattr__(self, name, tuple(float(g) for g in getattr(self, name)))
    harness.check_data(self, ("mnist", "fashion_mnist"), "28 x 28 images, read row by row")
    harness.check_at_least(self, ("hidden", "theory_examples", "measure_networks",
                                  "measure_examples", "tangents", "spectrum_width",
                                  "spectrum_networks", "model_networks", "epochs", "batch_size",
                                  "val_size", "unroll"))
    harness.check_seeds(self)
    harness.check_at_least(self, ("grid_points",), 10)
    harness.check(len(self.curve_gains) >= 2 and all(g > 0 for g in self.curve_gains),
                  f"curve_gains must be >= 2 positive gains, got {self.curve_gains}")
    harness.check(bool(self.hand_gains) and all(g > 0 for g in self.hand_gains),
                  f"hand_gains must be positive, got {self.hand_gains}")
    harness.check(self.regularizer in regularizers.NAMES, f"unknown regularizer "
                  f"{self.regularizer!r}; choose one of {', '.join(regularizers.NAMES)}")
    harness.check_positive(self, ("reg_strength", "lr"))
    harness.check_examples(self, "max_train_examples", "batch_size")

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A smoke run on tiny synthetic data: every stage, in seconds."""
    settings = dict(synthetic=True, hidden=16, theory_examples=32,
                    curve_gains=(0.8, 1.2, 1.6, 2.0), measure_networks=2, measure_examples=2,
                    tangents=2, spectrum_width=32, spectrum_networks=2, model_networks=2,
                    grid_points=60, seeds=2, epochs=1, batch_size=16, val_size=16, unroll=1,
                    monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


def load(config: StudyConfig) -> data.Dataset:
  """The study's images (train / val / test), random 8 x 8 ones for smoke runs.

  Raises:
    data.DataUnavailableError: the dataset cannot be read here.
  """
  return config.images(config.val_size, harness.Synthetic(side=8))


# ------------------------------------------------------------------------------ stage 4: training

def train_config(config: StudyConfig, g_star: float) -> train.TrainConfig:
  """The sweep: gains {round(g*, 3)} + hand_gains x {0, reg_strength} x seeds, orthogonal init."""
  gains = (round(g_star, 3),) + tuple(g for g in config.hand_gains if g != round(g_star, 3))
  members = train.product_members(gains=gains, reg_strengths=(0.0, config.reg_strength),
                                  lrs=(config.lr,), seeds=config.seeds, gain_adjusted=True)
  return train.TrainConfig(
      members=members, model="rnn",
      **config.train_data(),
      task="row", hidden=config.hidden, regularizer=config.regularizer, optimizer="adam",
      batch_size=config.batch_size, epochs=config.epochs, unroll=config.unroll,
      val_size=config.val_size, max_train_examples=config.max_train_examples,
      eval_batch_size=min(1000, config.val_size))


def seed_input_kernels(config: StudyConfig, dataset: data.Dataset) -> np.ndarray:
  """(seeds, D, H) float32: the input kernel U each seed of the training sweep starts from, from
  train's own init (U depends on the seed alone, not on the gain or the penalty)."""
  sweep = train_config(config, config.hand_gains[0])
  first = tuple(next(m for m in sweep.members if m.seed == s) for s in range(config.seeds))
  return train.initial_params(dataclasses.replace(sweep, members=first), dataset)["input"]


def summarize_training(result: harness.SweepResult) -> dict:
  """Per (gain, penalty): intervals of METRICS; paired g* - each other gain, per penalty.

  Members are selected by the sweep's own gains and strengths (its first gain is g*)."""
  gains = list(dict.fromkeys(m.gain for m in result.config.members))
  regs = list(dict.fromkeys(m.reg_strength for m in result.config.members))
  values = lambda gain, reg, metric: result.per_seed(metric, gain=gain, reg_strength=reg)
  results, comparisons = [], []
  for reg in regs:
    for gain in gains:
      results.append({"gain": gain, "reg_strength": reg, **{
          metric: stats.interval(values(gain, reg, metric)) for metric in METRICS}})
    for other in gains[1:]:
      comparisons.append({"g_star": gains[0], "gain": other, "reg_strength": reg, **{
          metric: harness.compare(values(gains[0], reg, metric), values(other, reg, metric))
          for metric in METRICS}})
  return {"results": results, "comparisons": comparisons}


def accuracy_figure(result: dict):
  """Best validation and test accuracy per gain, mean with 95% CI and the seeds."""
  plt = plots.pyplot()
  rows = result["training"]["summary"]["results"]
  fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4), squeeze=False)
  regs = sorted({r["reg_strength"] for r in rows})
  gains = sorted({r["gain"] for r in rows})
  g_star = result["theory"]["g_star"]
  # Categorical positions: g* and a hand-picked gain can be closer than their labels are wide.
  position = {g: i for i, g in enumerate(gains)}
  for ax, metric in zip(axes[0], METRICS):
    for j, reg in enumerate(regs):
      offset = (j - (len(regs) - 1) / 2) * 0.2
      sel = [r for r in rows if r["reg_strength"] == reg]
      label = "no penalty" if reg == 0 else f"SO (eq. 11) x {reg:g}, gain-adjusted"
      plots.errorbar_with_seeds(
          ax, np.asarray([position[r["gain"]] for r in sel]) + offset,
          [r[metric]["mean"] for r in sel], [r[metric]["ci95"] for r in sel],
          [np.asarray(r[metric]["values"], float) for r in sel], color=f"C{j}", dx=0.08,
          label=label)
    ax.set_xticks(range(len(gains)))
    ax.set_xticklabels([f"g*={g:g}" if abs(g - round(g_star, 3)) < 1e-9 else f"{g:g}"
                        for g in gains])
    ax.set_xlabel("recurrent init gain")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')}: mean, 95% CI (t), seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


FIGURES = {"meanfield.png": theory.meanfield_figure, "spectra.png": theory.spectra_figure,
           "accuracy.png": accuracy_figure}


# --------------------------------------------------------------------------------------- run

def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False,
        dataset: Optional[data.Dataset] = None) -> Optional[dict]:
  """All four stages; writes study.json, the figures and training/ into out_dir.

  Args:
    config: the study.
    out_dir: results folder.
    overwrite: replace a finished study in out_dir (else refused before any work).
    dataset: preloaded images (default: `load(config)`).

  Returns:
    The study.json content; None where the training sweep was interrupted (run again to
    continue it).

  Raises:
    data.DataUnavailableError, train.SetupError: the data cannot be loaded or does not fit the
      settings, or out_dir holds a finished study (nothing written).
  """
  dataset = harness.start(out_dir, SUMMARY, overwrite, lambda: load(config), dataset)
  x = theory.rows(dataset.train_x)
  rng = np.random.default_rng(config.seed)
  k_measure, k_spectra = jax.random.split(jax.random.key(config.seed))
  seconds = {}

  start = time.time()
  th = theory.theory(config, x, seed_input_kernels(config, dataset), rng)
  seconds["theory"] = time.time() - start
  logging.info("q_in (time average) %.4f; critical gains: %s; per seed kernel %s",
               th["q_in_mean"], th["critical_gain"],
               np.round(th["critical_gain_per_seed_kernel"], 4))

  start = time.time()
  sweeps = harness.run_sweeps({SWEEP: train_config(config, th["g_star"])}, out_dir,
                              dataset=dataset, overwrite=overwrite, plots=True)
  if sweeps is None:
    return None
  sweep = sweeps[SWEEP]
  training = {"status": sweep.status["status"], "epochs_done": sweep.status["epochs_done"],
              "gains": list(dict.fromkeys(m.gain for m in sweep.config.members)),
              "summary": summarize_training(sweep)}
  seconds["training"] = time.time() - start
  for c in training["summary"]["comparisons"]:
    for metric in METRICS:
      d = c[metric]
      logging.info("reg %g, %s: g*=%g - g=%g: %+.4f +- %.4f (95%% CI, %d pairs, p=%.3g)",
                   c["reg_strength"], metric, c["g_star"], c["gain"], d["mean_difference"],
                   d["ci95"], d["n_pairs"], d["p_value"])

  start = time.time()
  measurement = theory.measure(config, x, th, k_measure, rng)
  seconds["measurement"] = time.time() - start
  logging.info("measured growth rate: g* %s, rms error per reading %s",
               measurement["g_star_measured"], measurement["rms_rate_error"])

  start = time.time()
  gains = (th["g_star"],) + tuple(config.hand_gains)
  spectra = theory.spectra(config, x, th, gains, k_spectra, rng)
  seconds["spectra"] = time.time() - start

  result = {"config": dataclasses.asdict(config),
            "dataset": "synthetic" if config.synthetic else config.dataset,
            "timings_seconds": {name: seconds[name]
                                for name in ("theory", "measurement", "spectra", "training")},
            "theory": th, "measurement": measurement, "spectra": spectra, "training": training}
  harness.save(out_dir, SUMMARY, result, FIGURES)
  return result
