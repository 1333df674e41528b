"""Study A, part 2: gradient norms through time in a vanilla tanh RNN, at init and trained.

The training half of study A (`gradients` holds the study, its config and part 1, the MLPs at
initialization against mean field). The RNN of `isometry.engine.models` reads images row by row; for
each gain of its orthogonal recurrent kernel and each seed, one `isometry.engine.train` sweep trains it
for a few epochs with Adam and records ||dL/dh_t|| on a probe batch for every t, at init and
after every epoch. The summary per gain is the mean over seeds of log10 ||dL/dh_t|| (with its
95% t-interval) at init and after the last epoch, the log10 ratio ||dL/dh_0|| / ||dL/dh_{T-1}||,
and the test accuracy.
"""
from typing import Optional

from absl import logging
import numpy as np

from isometry import data
from isometry.results import plots
from isometry.results import stats
from isometry.engine import train
from isometry.studies import harness

SWEEP = "rnn"   # the sweep's folder in the study's out_dir


def rnn_train_config(config) -> train.TrainConfig:
  """The sweep: orthogonal recurrent kernels at each of config.rnn_gains x seed, no penalty,
  Adam (config: a `gradients.StudyConfig`)."""
  members = train.product_members(inits=("orthogonal",), gains=config.rnn_gains,
                                  lrs=(config.rnn_lr,), seeds=config.rnn_seeds)
  synthetic = config.synthetic
  return train.TrainConfig(
      members=members, model="rnn",
      **config.train_data(),
      task="row", hidden=config.rnn_hidden, regularizer="none", optimizer="adam",
      batch_size=config.rnn_batch_size, epochs=config.rnn_epochs,
      unroll=1 if synthetic else 4, val_size=config.rnn_val_size,
      max_train_examples=config.rnn_train_examples,
      eval_batch_size=32 if synthetic else 1000)


def load_rnn_dataset(config) -> data.Dataset:
  """The RNN's images: 6 x 6 random ones (smoke runs), or config.dataset.

  Raises:
    data.DataUnavailableError: the dataset cannot be read here (the message says what to do).
  """
  smoke = harness.Synthetic(64, 32, 32, side=6)
  return config.images(config.rnn_val_size, smoke)


def summarize_rnn(result: harness.SweepResult, gains) -> dict:
  """Per gain: ||dL/dh_t|| at init and after the last epoch (mean of log10 over seeds, 95% CI),
  the log10 ratio ||dL/dh_0|| / ||dL/dh_{T-1}||, and test accuracy."""
  out = []
  for gain in gains:
    history = np.log10(result.history("grad_norm_through_time", gain=gain))   # (S, E + 1, T)
    entry = {"gain": gain, "seeds": len(result.select(gain=gain))}
    for which, log_norm in (("initial", history[:, 0]), ("trained", history[:, -1])):
      mean, ci = stats.mean_ci(log_norm, axis=0)
      ratio_mean, ratio_ci = stats.mean_ci(log_norm[:, 0] - log_norm[:, -1])
      entry[which] = {"log10_norm_mean": mean, "log10_norm_ci95": ci,
                      "log10_first_over_last_mean": ratio_mean,
                      "log10_first_over_last_ci95": ratio_ci}
    acc_mean, acc_ci = stats.mean_ci(result.per_seed("test_accuracy", gain=gain))
    entry["test_accuracy_mean"], entry["test_accuracy_ci95"] = acc_mean, acc_ci
    out.append(entry)
  return {"time_steps": result.metrics.get("grad_norm_time_steps"), "gains": out}


def rnn_study(config, out_dir: str, dataset: data.Dataset, *,
              overwrite: bool = False) -> Optional[dict]:
  """Part 2: trains the gain sweep into out_dir/rnn/ (`harness.run_sweeps`, without keeping
  its checkpoint once finished) and summarizes it; None where it was interrupted."""
  train_config = rnn_train_config(config)
  sweeps = harness.run_sweeps({SWEEP: train_config}, out_dir, dataset=dataset,
                              overwrite=overwrite, keep_checkpoints=False)
  if sweeps is None:
    return None
  summary = summarize_rnn(sweeps[SWEEP], config.rnn_gains)
  summary.update({"seconds": sweeps[SWEEP].seconds,
                  "dataset": "synthetic" if config.synthetic else train_config.dataset,
                  "data_dir": train_config.data_dir, "train_examples": config.rnn_train_examples,
                  "epochs": config.rnn_epochs, "lr": config.rnn_lr, "hidden": config.rnn_hidden})
  for entry in summary["gains"]:
    logging.info("RNN gain %g: log10 ||dL/dh_0|| / ||dL/dh_T-1|| init %.2f +- %.2f, trained "
                 "%.2f +- %.2f", entry["gain"], entry["initial"]["log10_first_over_last_mean"],
                 entry["initial"]["log10_first_over_last_ci95"],
                 entry["trained"]["log10_first_over_last_mean"],
                 entry["trained"]["log10_first_over_last_ci95"])
  return summary


def plot_rnn(result: dict):
  """A3: ||dL/dh_t|| against t at init (dashed) and after training (solid), one panel per gain."""
  plt = plots.pyplot()
  rnn = result["rnn"]
  gains = rnn["gains"]
  fig, axes = plt.subplots(1, len(gains), figsize=(3.8 * len(gains), 3.6), squeeze=False,
                           sharey=True)
  for ax, entry in zip(axes[0], gains):
    steps = np.arange(len(entry["initial"]["log10_norm_mean"]))
    if rnn.get("time_steps"):
      steps = np.asarray(rnn["time_steps"])
    for which, style, color in (("initial", "--", "tab:gray"), ("trained", "-", "tab:green")):
      label = "init" if which == "initial" else f"after {rnn['epochs']} epoch(s)"
      plots.band(ax, steps, entry[which]["log10_norm_mean"], entry[which]["log10_norm_ci95"],
                 color=color, style=style, alpha=0.25, label=label)
    ax.set_title(f"gain {entry['gain']:g}", fontsize=10)
    ax.set_xlabel("time step t")
  axes[0, 0].set_ylabel(r"$\log_{10}\|\partial L/\partial h_t\|$")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"Vanilla tanh RNN, orthogonal recurrent kernel, {rnn['dataset']} rows "
               f"(mean over {gains[0]['seeds']} seeds, band 95% CI)", fontsize=10)
  fig.tight_layout()
  return fig
