#!/usr/bin/env python3
"""Study C: accuracy of deep MLPs with vs without dynamical isometry.

Trains deep MLPs at several depths with four initializations (tanh orthogonal at the critical
point chi = 1, tanh Gaussian at the same point, tanh orthogonal off-critical, relu with He init)
on flattened images and reports test accuracy vs depth and validation learning curves, mean +-
95% CI over seeds. Writes study.json, C1_accuracy_vs_depth.png, C2_learning_curves.png and one
resumable training folder per (activation, depth) into --out_dir (see isometry/accuracy_study.py).

  python scripts/study_accuracy.py                        # the committed default (results/C_accuracy)
  python scripts/study_accuracy.py --quick --out_dir=/tmp/c      # smoke run, seconds
  python scripts/study_accuracy.py --depths=2,16 --seeds=3 --epochs=2 --out_dir=/tmp/c2

Running the same command again resumes unfinished sweeps. Without --data_dir, fashion_mnist is
read offline from /usr/share/datasets/fashion-mnist when that folder exists, and any other
dataset through TFDS. Bad flags exit with status 2 and one line.
"""
import os
import sys

# jax's CPU QR (orthogonal draws) calls OpenBLAS, whose threads fight XLA's for the cores (see
# scripts/spectra.py). Must be set before numpy/jax load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# With jaxlib 0.10.2 on CPU a training sweep of this study hung for good after its last epoch
# (every XLA worker idle, the caller waiting on the result; seen once in two tries); with XLA's
# Eigen thread pool off it has not. On 2 shared cores the lost intra-op parallelism costs little.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                             " intra_op_parallelism_threads=1").strip()

from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry.studies import accuracy as accuracy_study  # noqa: E402
from isometry import cli  # noqa: E402
from isometry import data  # noqa: E402
from isometry import train  # noqa: E402

_D = accuracy_study.StudyConfig()
FLAGS = flags.FLAGS

flags.DEFINE_boolean("quick", False, "Smoke mode (seconds): depths 1,3, width 16, a synthetic "
                     "task. Flags given explicitly still override it.")
flags.DEFINE_list("depths", [str(d) for d in _D.depths], "Numbers of hidden layers.")
flags.DEFINE_integer("seeds", _D.seeds, "Seeds per (init, depth).")
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.")
flags.DEFINE_integer("width", _D.width, "Hidden units per layer.")
flags.DEFINE_float("sigma_b", _D.sigma_b, "tanh bias scale; the critical sigma_w solves chi = 1.")
flags.DEFINE_float("off_critical_sigma_w", _D.off_critical_sigma_w,
                   "sigma_w of the orthogonal off-critical tanh init.")
flags.DEFINE_enum("optimizer", _D.optimizer, tuple(train.OPTIMIZERS), "Optimizer (all inits).")
flags.DEFINE_float("lr", _D.lr, "Learning rate (all inits).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.")
flags.DEFINE_integer("max_train_examples", _D.max_train_examples,
                     "Training examples used (the first n of the training split).")
flags.DEFINE_integer("val_size", _D.val_size, "Training examples held out for validation.")
flags.DEFINE_enum("dataset", _D.dataset, data.NAMES, "Image dataset.")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir "
                    "(default: the offline Fashion-MNIST copy for fashion_mnist, else TFDS).")
flags.DEFINE_string("out_dir", "results/C_accuracy", "Results folder.")

_INT_LISTS = ("depths",)
_FIELDS = ("seeds", "epochs", "width", "sigma_b", "off_critical_sigma_w", "optimizer", "lr",
           "batch_size", "max_train_examples", "val_size", "dataset", "data_dir") + _INT_LISTS


def _config() -> accuracy_study.StudyConfig:
  overrides = cli.given_flags(_FIELDS, {name: int for name in _INT_LISTS})
  if FLAGS.quick:
    return accuracy_study.StudyConfig.quick(**overrides)
  return accuracy_study.StudyConfig(**overrides)


def main(argv):
  del argv
  config = cli.call(_config)
  # Raised before any training or file.
  cli.call(accuracy_study.run, config, FLAGS.out_dir,
           errors=(data.DataUnavailableError, train.SetupError))


if __name__ == "__main__":
  cli.run(main)
