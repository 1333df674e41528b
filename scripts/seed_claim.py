#!/usr/bin/env python3
"""Tests the seed's claim that a gain-adjusted orthogonality penalty beats an unadjusted one.

Runs the seed notebook's configs2 (g = 1.025) and configs3 (g = 1.25) presets on row-by-row
sequential images with every seed, under the notebook's penalty formula and the paper's eq. 11
(see isometry/seed_claim.py), then writes summary.json (accuracies with 95% CIs, paired
comparisons adjusted vs unadjusted) and seed_claim.png to --out_dir. Each sweep is resumed if
its folder already holds a checkpoint, so running the command again continues an interrupted
study.

  python scripts/seed_claim.py                       # Fashion-MNIST from Debian's package
  python scripts/seed_claim.py --dataset=mnist --data_dir= --out_dir=/tmp/claim_mnist
  python scripts/seed_claim.py --quick --out_dir=/tmp/claim   # smoke run, random data, seconds

Bad flags exit with status 2 and a one-line message.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli
from isometry import data
from isometry.studies import seed_claim
from isometry import train

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "fashion_mnist", ("mnist", "fashion_mnist"), "Image dataset.")
flags.DEFINE_string("data_dir", seed_claim.DEFAULT_DATA_DIR,
                    "Folder with the four IDX files, or a TFDS data dir; empty: download with "
                    "TFDS.")
flags.DEFINE_list("presets", list(seed_claim.PRESETS), "Presets to run.")
flags.DEFINE_list("formulas", list(seed_claim.FORMULAS),
                  "Penalty formulas: notebook (mean((W^T W/g^2 - 1)^2)) and/or paper (eq. 11, "
                  "||W^T W/g^2 - I||_F^2 / H^2).")
flags.DEFINE_integer("seeds", 5, "Seeds per configuration.", lower_bound=2)
flags.DEFINE_integer("epochs", 10, "Training epochs (the seed used 50).", lower_bound=1)
flags.DEFINE_integer("max_train_examples", None, "Use only the first n training examples.",
                     lower_bound=1)
flags.DEFINE_boolean("quick", False,
                     "Smoke run: 64 random images, hidden 8, 2 seeds, 1 epoch (seconds).")
flags.DEFINE_string("out_dir", "results/seed_claim", "Results folder.")


def _config() -> seed_claim.SeedClaimConfig:
  if FLAGS.quick:
    return seed_claim.SeedClaimConfig(
        data_dir=None, presets=FLAGS.presets, formulas=FLAGS.formulas, seeds=2, epochs=1,
        hidden=8, batch_size=16, val_size=16, unroll=1)
  return seed_claim.SeedClaimConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir or None, presets=FLAGS.presets,
      formulas=FLAGS.formulas, seeds=FLAGS.seeds, epochs=FLAGS.epochs,
      max_train_examples=FLAGS.max_train_examples)


def main(argv):
  del argv
  config = cli.call(_config)
  dataset = data.synthetic_dataset() if FLAGS.quick else None
  cli.call(seed_claim.run, config, FLAGS.out_dir, dataset=dataset, errors=(train.SetupError,))


if __name__ == "__main__":
  cli.run(main)
