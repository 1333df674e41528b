#!/usr/bin/env python3
"""The critical recurrent gain of the seed's tanh RNN, from the data's input statistics.

Mean-field g* of a SimpleRNN (orthogonal W at gain g, Glorot U, zero bias) read row by row, its
check against sampled RNNs, the free-probability spectrum of dh_T/dh_0 against measured ones,
and a training sweep of g* against the seed's hand-picked gains 1, 1.025, 1.25, with and without
the gain-adjusted SO penalty (see isometry/rnn_gain_study.py). Writes study.json, meanfield.png,
spectra.png, accuracy.png and training/ into --out_dir; running again resumes the training sweep.

  python scripts/study_rnn_gain.py                    # Fashion-MNIST (Debian's IDX files)
  python scripts/study_rnn_gain.py --dataset=mnist --out_dir=/tmp/gain_mnist   # TFDS download
  python scripts/study_rnn_gain.py --quick --out_dir=/tmp/gain   # smoke run, random data

Bad flags exit with status 2 and a one-line message.
"""
import os
import sys

# jax's CPU QR/SVD call OpenBLAS, whose threads fight XLA's for the cores (see scripts/spectra.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli  # noqa: E402
from isometry import data  # noqa: E402
from isometry import regularizers  # noqa: E402
from isometry.studies import rnn_gain as rnn_gain_study  # noqa: E402
from isometry import train  # noqa: E402

FLAGS = flags.FLAGS
_DEFAULT = rnn_gain_study.StudyConfig()

flags.DEFINE_enum("dataset", _DEFAULT.dataset, ("mnist", "fashion_mnist"),
                  "Image dataset, read row by row.")
flags.DEFINE_string("data_dir", None,
                    "Folder with the four IDX files, or a TFDS data dir. Default: "
                    f"{data.OFFLINE_DIRS['fashion_mnist']} for fashion_mnist when present, "
                    "else TFDS (downloads).")
flags.DEFINE_list("hand_gains", [f"{g:g}" for g in _DEFAULT.hand_gains],
                  "Hand-picked gains trained beside g*.")
flags.DEFINE_integer("seeds", _DEFAULT.seeds, "Seeds per (gain, penalty).", lower_bound=2)
flags.DEFINE_integer("epochs", _DEFAULT.epochs, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", None, "Train on the first n examples only.",
                     lower_bound=1)
flags.DEFINE_enum("reg", _DEFAULT.regularizer, regularizers.NAMES,
                  "Penalty of the regularized half of the sweep (so: ||W^T W/g^2 - I||_F^2, "
                  "eq. 11).")
flags.DEFINE_float("reg_strength", _DEFAULT.reg_strength, "Penalty strength.")
flags.DEFINE_float("lr", _DEFAULT.lr, "Adam learning rate.")
flags.DEFINE_integer("spectrum_width", _DEFAULT.spectrum_width,
                     "Width N of the wide sampled Jacobians.", lower_bound=2)
flags.DEFINE_integer("spectrum_networks", _DEFAULT.spectrum_networks,
                     "Wide networks per gain.", lower_bound=1)
flags.DEFINE_integer("model_networks", _DEFAULT.model_networks,
                     "Model-width networks per gain for the spectrum.", lower_bound=1)
flags.DEFINE_integer("measure_networks", _DEFAULT.measure_networks,
                     "Model-width networks per gain for the measured growth rate.", lower_bound=1)
flags.DEFINE_integer("seed", _DEFAULT.seed, "Seed of the theory-side samples.", lower_bound=0)
flags.DEFINE_boolean("quick", False, "Smoke run on 8 x 8 random images: every stage in "
                     "seconds, nothing learnable.")
flags.DEFINE_string("out_dir", "results/rnn_critical_gain", "Results folder.")


def _config() -> rnn_gain_study.StudyConfig:
  if FLAGS.quick:
    return rnn_gain_study.quick_config()
  try:
    hand_gains = tuple(float(g) for g in FLAGS.hand_gains)
  except ValueError:
    raise ValueError(f"--hand_gains must be comma-separated numbers, got "
                     f"{','.join(FLAGS.hand_gains)!r}") from None
  return rnn_gain_study.StudyConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, hand_gains=hand_gains, seeds=FLAGS.seeds,
      epochs=FLAGS.epochs, max_train_examples=FLAGS.max_train_examples, regularizer=FLAGS.reg,
      reg_strength=FLAGS.reg_strength, lr=FLAGS.lr, spectrum_width=FLAGS.spectrum_width,
      spectrum_networks=FLAGS.spectrum_networks, model_networks=FLAGS.model_networks,
      measure_networks=FLAGS.measure_networks, seed=FLAGS.seed)


def main(argv):
  del argv
  config = cli.call(_config)
  cli.call(rnn_gain_study.run, config, FLAGS.out_dir, errors=(train.SetupError,))


if __name__ == "__main__":
  cli.run(main)
