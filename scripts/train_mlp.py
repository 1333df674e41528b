#!/usr/bin/env python3
"""Trains a sweep of deep fully connected networks on flattened images.

The sweep is depths x inits x gains x reg_strengths x lr x range(seeds); all depths share one
compiled program (a scanned stack of max(depths) layers, masked per member). Results
(config.json, status.json, metrics.json, spectra.npz, figures, checkpoint.npz) go to --out_dir.

  python scripts/train_mlp.py --depths=2,8,32 --inits=orthogonal,gaussian --gains=1.05 \\
      --sigma_b=0.05 --dataset=fashion_mnist --data_dir=/usr/share/datasets/fashion-mnist \\
      --epochs=5 --out_dir=/tmp/mlp

List flags are comma-separated. Bad flags exit with status 2 and a one-line message.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import activations
from isometry import cli
from isometry import data
from isometry.engine import regularizers
from isometry.engine import train

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "mnist", data.NAMES, "Image dataset.")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir.")
flags.DEFINE_list("depths", ["2", "8", "32"], "Numbers of hidden layers.")
flags.DEFINE_integer("width", 256, "Hidden units per layer.", lower_bound=1)
flags.DEFINE_enum("activation", "tanh", tuple(activations.ACTIVATIONS), "Nonlinearity.")
flags.DEFINE_list("inits", ["orthogonal", "gaussian"], "Hidden kernel initializers.")
flags.DEFINE_list("gains", ["1.0"], "Init gains sigma_w.")
flags.DEFINE_float("sigma_b", 0.0, "Bias scale: b ~ N(0, sigma_b^2).", lower_bound=0.0)
flags.DEFINE_enum("reg", "so", regularizers.NAMES,
                  "Orthogonality penalty on the active hidden kernels.")
flags.DEFINE_list("reg_strengths", ["0"], "Penalty strengths.")
flags.DEFINE_boolean("gain_adjusted", True, "Penalise W^T W / g^2 (true) or W^T W (false).")
flags.DEFINE_enum("optimizer", "sgd", tuple(train.OPTIMIZERS), "Optimizer.")
flags.DEFINE_list("lr", ["1e-3"], "Learning rates.")
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_integer("epochs", 10, "Epochs.", lower_bound=1)
flags.DEFINE_integer("seeds", 1, "Number of seeds (0..seeds-1) per configuration.",
                     lower_bound=1)
flags.DEFINE_string("out_dir", None, "Results folder.")
flags.DEFINE_float("val_size", 0.2, "Held out of the training split for validation: a "
                   "fraction (0.2: the seed's 48k/12k of MNIST) or a number of examples.",
                   lower_bound=0.0)
flags.DEFINE_integer("max_train_examples", None, "Use only the first n training examples.",
                     lower_bound=1)
flags.DEFINE_boolean("resume", False, "Continue the run in --out_dir (interrupted, killed, or "
                     "finished with fewer --epochs) from its checkpoint.")
flags.DEFINE_boolean("overwrite", False, "Replace the run in --out_dir. A folder that holds a "
                     "run is never replaced silently: without --resume or --overwrite the "
                     "script stops, changing nothing.")
flags.mark_flag_as_required("out_dir")



def _numbers(name: str, kind=float) -> tuple:
  try:
    return tuple(kind(v) for v in FLAGS[name].value)
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated {kind.__name__}s, got "
                     f"{','.join(FLAGS[name].value)!r}") from None


def _config() -> train.TrainConfig:
  members = train.product_members(
      inits=tuple(FLAGS.inits), gains=_numbers("gains"), reg_strengths=_numbers("reg_strengths"),
      lrs=_numbers("lr"), seeds=FLAGS.seeds, depths=_numbers("depths", int),
      gain_adjusted=FLAGS.gain_adjusted)
  return train.TrainConfig(
      members=members, model="mlp", dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      hidden=FLAGS.width, activation=FLAGS.activation, sigma_b=FLAGS.sigma_b,
      regularizer=FLAGS.reg, optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size,
      epochs=FLAGS.epochs, val_size=FLAGS.val_size, max_train_examples=FLAGS.max_train_examples)


def main(argv):
  del argv
  config = cli.call(_config)
  cli.call(train.run, config, FLAGS.out_dir, resume=FLAGS.resume,
           overwrite=FLAGS.overwrite, errors=(train.SetupError,))


if __name__ == "__main__":
  cli.run(main)
