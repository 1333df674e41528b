#!/usr/bin/env python3
"""Study E: does depth or sequence length change how much an orthogonality penalty helps?

Trains tanh MLPs of several depths and a tanh RNN on row-by-row (T = 28) and pixel-by-pixel
(T = 784) images, each with and without the soft-orthogonality penalty (same seeds), and reports
the paired difference in accuracy per depth and per task (see isometry/benefit_study.py).
Writes study.json, benefit_vs_depth.png, benefit_row_vs_pixel.png, learning_curves.png and one
training folder per run (mlp/, rnn_row/, rnn_pixel/) to --out_dir; running the command again
resumes an interrupted study.

  python scripts/study_benefit.py                       # the committed default
  python scripts/study_benefit.py --quick --out_dir=/tmp/e   # smoke run, synthetic data, seconds
  python scripts/study_benefit.py --depths=2,8,32,64 --tasks=row --epochs=20

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
from isometry.studies import benefit as benefit_study  # noqa: E402
from isometry import cli  # noqa: E402
from isometry import data  # noqa: E402
from isometry import train  # noqa: E402

_D = benefit_study.StudyConfig()
FLAGS = flags.FLAGS

flags.DEFINE_boolean("quick", False, "Smoke mode (seconds): tiny networks on synthetic 6 x 6 "
                     "images. Flags given explicitly still override it.")
flags.DEFINE_list("depths", [str(d) for d in _D.depths],
                  "MLP depths (hidden layers, >= 2); empty skips the MLP arm.")
flags.DEFINE_list("tasks", list(_D.tasks), "RNN tasks: row and/or pixel; empty skips the RNNs.")
flags.DEFINE_float("reg_strength", _D.reg_strength, "Penalty strength of the penalized arm.")
flags.DEFINE_integer("seeds", _D.seeds, "Seeds per arm (paired with and without penalty).")
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs (every arm).")
flags.DEFINE_integer("hidden", _D.hidden, "RNN hidden units.")
flags.DEFINE_integer("width", _D.width, "MLP width.")
flags.DEFINE_integer("max_train_examples", _D.max_train_examples,
                     "Use the first n training examples (every arm); 0: all of them.")
flags.DEFINE_float("mlp_lr", _D.mlp_lr, "MLP Adam learning rate.")
flags.DEFINE_float("rnn_lr", _D.rnn_lr, "RNN Adam learning rate.")
flags.DEFINE_enum("dataset", _D.dataset, data.NAMES, "Image dataset.")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir "
                    "(default: the offline Fashion-MNIST copy for fashion_mnist, else TFDS).")
flags.DEFINE_string("out_dir", "results/E_benefit", "Results folder.")

_FIELDS = ("depths", "tasks", "reg_strength", "seeds", "epochs", "hidden", "width",
           "max_train_examples", "mlp_lr", "rnn_lr", "dataset", "data_dir")


def _config() -> benefit_study.StudyConfig:
  overrides = cli.given_flags(_FIELDS, {"depths": int})
  if overrides.get("max_train_examples") == 0:
    overrides["max_train_examples"] = None
  if FLAGS.quick:
    return benefit_study.StudyConfig.quick(**overrides)
  return benefit_study.StudyConfig(**overrides)


def main(argv):
  del argv
  config = cli.call(_config)
  cli.call(benefit_study.run, config, FLAGS.out_dir,
           errors=(data.DataUnavailableError, train.SetupError))


if __name__ == "__main__":
  cli.run(main)
