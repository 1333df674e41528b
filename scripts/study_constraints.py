#!/usr/bin/env python3
"""Study D: can a hard orthogonality constraint hurt? (Vorontsov et al. 2017)

Trains a vanilla tanh RNN on row-by-row images under each arm: no constraint ("none"), the soft
penalty ("soft"), the hard constraints ("projection", "cayley", "expm") and the spectral margin
m for each of --margins; seeds are vmapped members of one program per arm. Writes study.json
(accuracies with 95% CIs, paired differences to "none", wall times, singular-value trajectories)
and D_accuracy.png, D_singular_values.png, D_val_curves.png to --out_dir
(see isometry/constraint_study.py). Each arm resumes from its folder, so running the command
again continues an interrupted study.

  python scripts/study_constraints.py                          # the committed default
  python scripts/study_constraints.py --quick --out_dir=/tmp/d # smoke run, synthetic data
  python scripts/study_constraints.py --arms=none,expm --margins=0.1 --seeds=3

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when
that folder exists, otherwise through TFDS. Bad flags exit with status 2 and one line.
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
from isometry.studies import constraints as constraint_study  # noqa: E402
from isometry import data  # noqa: E402
from isometry import train  # noqa: E402

_D = constraint_study.StudyConfig()
FLAGS = flags.FLAGS

flags.DEFINE_boolean("quick", False, "Smoke mode (seconds): hidden 8, 2 seeds, 2 epochs, a "
                     "synthetic task. Flags given explicitly still override it.")
flags.DEFINE_list("arms", list(_D.arms), f"Arms among {', '.join(constraint_study.ARMS)}.")
flags.DEFINE_list("margins", [f"{m:g}" for m in _D.margins],
                  "Spectral margins m in [0, 1]; each adds an arm margin<m> (empty: none).")
flags.DEFINE_integer("seeds", _D.seeds, "Seeds per arm.")
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.")
flags.DEFINE_integer("hidden", _D.hidden, "RNN hidden units.")
flags.DEFINE_float("gain", _D.gain, "Init gain g, the centre of the constraints and penalty.")
flags.DEFINE_float("lr", _D.lr, "Adam learning rate (also the Cayley step size).")
flags.DEFINE_float("reg_strength", _D.reg_strength,
                   "Strength of the soft penalty ||W^T W / g^2 - I||_F^2 (arm soft).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Minibatch size.")
flags.DEFINE_integer("max_train_examples", _D.max_train_examples,
                     "Use the first n training examples.")
flags.DEFINE_integer("val_size", _D.val_size, "Training examples held out for validation.")
flags.DEFINE_enum("dataset", _D.dataset, ("mnist", "fashion_mnist"), "Images, read row by row.")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir "
                    "(default: the offline Fashion-MNIST copy for fashion_mnist, else TFDS).")
flags.DEFINE_string("out_dir", "results/D_constraints", "Results folder.")

_FIELDS = ("arms", "margins", "seeds", "epochs", "hidden", "gain", "lr", "reg_strength",
           "batch_size", "max_train_examples", "val_size", "dataset", "data_dir")


def _config() -> constraint_study.StudyConfig:
  overrides = cli.given_flags(_FIELDS, {"margins": float})
  if FLAGS.quick:
    return constraint_study.StudyConfig.quick(**overrides)
  return constraint_study.StudyConfig(**overrides)


def main(argv):
  del argv
  config = cli.call(_config)
  # Data problems are raised before any training or file.
  cli.call(constraint_study.run, config, FLAGS.out_dir,
           errors=(data.DataUnavailableError, train.SetupError))


if __name__ == "__main__":
  cli.run(main)
