#!/usr/bin/env python3
"""Trains a sweep of vanilla tanh RNNs (or LSTMs) on sequential image classification.

The sweep is gains x reg_strengths x lr x range(seeds), or a named preset of the seed notebook
(Hlav 2019) x range(seeds); every member trains in one compiled program. Results (config.json,
status.json, metrics.json, spectra.npz, figures, checkpoint.npz) go to --out_dir.

  python scripts/train_rnn.py --preset=configs2 --dataset=fashion_mnist \\
      --data_dir=/usr/share/datasets/fashion-mnist --seeds=3 --epochs=15 --out_dir=results/x
  python scripts/train_rnn.py --gains=0.9,1,1.1 --reg=so --reg_strengths=0,0.1 --seeds=2 \\
      --out_dir=/tmp/sweep
  python scripts/train_rnn.py --dataset=imdb_reviews --cell=lstm --val_size=5000 --lr=1e-3 \\
      --seeds=3 --epochs=5 --out_dir=/tmp/imdb      # the seed's sentiment experiment

List flags are comma-separated. Bad flags exit with status 2 and a one-line message.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli
from isometry.engine import constraints
from isometry import data
from isometry import initializers
from isometry.engine import presets
from isometry.engine import regularizers
from isometry.data import text
from isometry.engine import train

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "mnist", data.NAMES + text.NAMES,
                  "Image dataset, or imdb_reviews: sentiment of movie reviews as token sequences "
                  "(a learned embedding feeds the cell; --task does not apply).")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir.")
flags.DEFINE_enum("task", "row", data.TASKS,
                  "row: one image row per step; pixel: one pixel per step; permuted: pixels in "
                  "a fixed random order.")
flags.DEFINE_enum("cell", "rnn", ("rnn", "lstm"), "Recurrent cell.")
flags.DEFINE_integer("hidden", presets.SEED_HIDDEN, "Hidden units.", lower_bound=1)
flags.DEFINE_enum("init", "orthogonal", initializers.NAMES, "Recurrent kernel initializer.")
flags.DEFINE_list("gains", ["1.0"], "Init gains g of the recurrent kernel.")
flags.DEFINE_enum("reg", "so", regularizers.NAMES,
                  "Orthogonality penalty on the recurrent kernel (so: ||W^T W/g^2 - I||_F^2, "
                  "paper eq. 11; notebook_so: the notebook's mean((W^T W/g^2 - 1)^2)). With "
                  "--preset the default is the notebook's notebook_so.")
flags.DEFINE_list("reg_strengths", ["0"], "Penalty strengths.")
flags.DEFINE_boolean("gain_adjusted", True,
                     "Penalise W^T W / g^2 (true) or W^T W (false).")
flags.DEFINE_enum("constraint", "none", constraints.NAMES,
                  "Hard orthogonality constraint on the recurrent kernel (cell rnn only).")
flags.DEFINE_float("margin", 0.1, "Singular-value band for --constraint=margin.")
flags.DEFINE_enum("optimizer", "adam", tuple(train.OPTIMIZERS), "Optimizer.")
flags.DEFINE_list("lr", [str(presets.SEED_LEARNING_RATE)], "Learning rates.")
flags.DEFINE_integer("batch_size", presets.SEED_BATCH_SIZE, "Batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", presets.SEED_EPOCHS, "Epochs.", lower_bound=1)
flags.DEFINE_integer("seeds", 1, "Number of seeds (0..seeds-1) per configuration.",
                     lower_bound=1)
flags.DEFINE_enum("preset", None, presets.NAMES,
                  "A named sweep of the seed notebook (sets init, gains, reg_strengths and "
                  "gain_adjusted).")
flags.DEFINE_string("out_dir", None, "Results folder.")
flags.DEFINE_integer("unroll", 4, "lax.scan unroll over time steps.", lower_bound=1)
flags.DEFINE_float("val_size", 0.2, "Held out of the training split for validation: a "
                   "fraction (0.2: the seed's 48k/12k of MNIST) or a number of examples.",
                   lower_bound=0.0)
flags.DEFINE_integer("max_train_examples", None, "Use only the first n training examples.",
                     lower_bound=1)
flags.DEFINE_integer("vocab_size", 10000, "Text: vocabulary size (padding and unknown included).",
                     lower_bound=3)
flags.DEFINE_integer("max_len", 256, "Text: tokens per sequence (the end of longer texts is kept).",
                     lower_bound=1)
flags.DEFINE_integer("embed_dim", 64, "Text: size of the learned token embedding.", lower_bound=1)
flags.DEFINE_boolean("resume", False, "Continue the run in --out_dir (interrupted, killed, or "
                     "finished with fewer --epochs) from its checkpoint.")
flags.DEFINE_boolean("overwrite", False, "Replace the run in --out_dir. A folder that holds a "
                     "run is never replaced silently: without --resume or --overwrite the "
                     "script stops, changing nothing.")
flags.mark_flag_as_required("out_dir")

_PRESET_SETS = ("init", "gains", "reg_strengths", "gain_adjusted")



def _floats(name: str) -> tuple:
  try:
    return tuple(float(v) for v in FLAGS[name].value)
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated numbers, got "
                     f"{','.join(FLAGS[name].value)!r}") from None


def _config() -> train.TrainConfig:
  lrs = _floats("lr")
  if FLAGS.preset:
    given = [f"--{name}" for name in _PRESET_SETS if FLAGS[name].present]
    if given:
      raise ValueError(f"--preset={FLAGS.preset} sets {', '.join(given)}; drop them")
    members = train.preset_members(FLAGS.preset, FLAGS.seeds, lrs)
    reg = FLAGS.reg if FLAGS["reg"].present else presets.SEED_REGULARIZER
  else:
    members = train.product_members(
        inits=(FLAGS.init,), gains=_floats("gains"), reg_strengths=_floats("reg_strengths"),
        lrs=lrs, seeds=FLAGS.seeds, gain_adjusted=FLAGS.gain_adjusted)
    reg = FLAGS.reg
  return train.TrainConfig(
      members=members, model=FLAGS.cell, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      task=FLAGS.task, hidden=FLAGS.hidden, regularizer=reg, constraint=FLAGS.constraint,
      margin=FLAGS.margin, optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size,
      epochs=FLAGS.epochs, unroll=FLAGS.unroll, val_size=FLAGS.val_size,
      max_train_examples=FLAGS.max_train_examples, preset=FLAGS.preset,
      vocab_size=FLAGS.vocab_size, max_len=FLAGS.max_len, embed_dim=FLAGS.embed_dim)


def main(argv):
  del argv
  config = cli.call(_config)
  cli.call(train.run, config, FLAGS.out_dir, resume=FLAGS.resume,
           overwrite=FLAGS.overwrite, errors=(train.SetupError,))


if __name__ == "__main__":
  cli.run(main)
