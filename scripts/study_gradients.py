#!/usr/bin/env python3
"""Study A: vanishing and exploding gradients in deep MLPs and RNNs, against mean field.

Part 1: per-layer norms ||dL/dh_l|| of random deep MLPs (tanh, linear, relu; orthogonal vs
Gaussian weights) over a sweep of sigma_w across chi = 1, with the fitted log-slope against log chi.
Part 2: ||dL/dh_t|| over time in a tanh RNN at init and after a short training, per gain, on
row-by-row images. Writes gradients.json, A1/A2/A3 figures and rnn/ into --out_dir
(see isometry/gradient_study.py).

  python scripts/study_gradients.py                     # the committed default (~2 min, 2 cores)
  python scripts/study_gradients.py --quick --out_dir=/tmp/a   # smoke run, seconds
  python scripts/study_gradients.py --dataset=mnist     # RNN part on MNIST (TFDS, downloads)

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when that
folder exists, and any other dataset through TFDS. Bad flags exit with status 2 and one line.
"""
import os
import sys

# jax's CPU QR (orthogonal draws) calls OpenBLAS, whose threads fight XLA's for the cores (see
# scripts/spectra.py). Must be set before numpy/jax load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli  # noqa: E402
from isometry import data  # noqa: E402
from isometry.studies import gradients as gradient_study  # noqa: E402

_D = gradient_study.GradientStudyConfig()
FLAGS = flags.FLAGS

flags.DEFINE_boolean("quick", False, "Smoke mode (seconds): tiny networks, a synthetic RNN task. "
                     "Flags given explicitly still override it.")
flags.DEFINE_list("activations", list(_D.activations), "MLP nonlinearities.")
flags.DEFINE_list("sigma_b", [str(b) for b in _D.sigma_b], "Bias scale per activation.")
flags.DEFINE_list("sigma_w_factors", [str(f) for f in _D.sigma_w_factors],
                  "sigma_w as multiples of the critical sigma_w (chi = 1) of each activation.")
flags.DEFINE_list("weights", list(_D.weights), "Weight distributions: orthogonal, gaussian.")
flags.DEFINE_integer("width", _D.width, "MLP width N.")
flags.DEFINE_integer("depth", _D.depth, "MLP depth L.")
flags.DEFINE_integer("batch", _D.batch, "Inputs per network.")
flags.DEFINE_integer("seeds", _D.seeds, "Networks per (activation, weights, sigma_w).")
flags.DEFINE_integer("seed", _D.seed, "PRNG seed of the MLP part.")
flags.DEFINE_list("rnn_gains", [str(g) for g in _D.rnn_gains], "Orthogonal RNN gains.")
flags.DEFINE_integer("rnn_seeds", _D.rnn_seeds, "Seeds per RNN gain.")
flags.DEFINE_enum("dataset", _D.dataset, data.NAMES, "Images for the RNN (row by row).")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir "
                    "(default: the offline Fashion-MNIST copy for fashion_mnist, else TFDS).")
flags.DEFINE_integer("rnn_hidden", _D.rnn_hidden, "RNN hidden units.")
flags.DEFINE_integer("rnn_epochs", _D.rnn_epochs, "RNN training epochs.")
flags.DEFINE_integer("rnn_batch_size", _D.rnn_batch_size, "RNN batch size.")
flags.DEFINE_float("rnn_lr", _D.rnn_lr, "RNN Adam learning rate.")
flags.DEFINE_integer("rnn_train_examples", _D.rnn_train_examples,
                     "Training examples used (the first n of the training split).")
flags.DEFINE_integer("rnn_val_size", _D.rnn_val_size, "Training examples held out for validation.")
flags.DEFINE_string("out_dir", "results/A_gradients", "Results folder.")

_FLOAT_LISTS = ("sigma_b", "sigma_w_factors", "rnn_gains")
_FIELDS = ("activations", "weights", "width", "depth", "batch", "seeds", "seed", "rnn_seeds",
           "dataset", "data_dir", "rnn_hidden", "rnn_epochs", "rnn_batch_size", "rnn_lr",
           "rnn_train_examples", "rnn_val_size") + _FLOAT_LISTS


def _config() -> gradient_study.GradientStudyConfig:
  overrides = cli.given_flags(_FIELDS, {name: float for name in _FLOAT_LISTS})
  if FLAGS.quick:
    return gradient_study.GradientStudyConfig.quick(**overrides)
  return gradient_study.GradientStudyConfig(**overrides)


def main(argv):
  del argv
  config = cli.call(_config)
  # Raised before any work or file.
  cli.call(gradient_study.run, config, FLAGS.out_dir, errors=(data.DataUnavailableError,))


if __name__ == "__main__":
  cli.run(main)
