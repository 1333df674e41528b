#!/usr/bin/env python3
"""Study C: accuracy of deep MLPs with vs without dynamical isometry.

Trains deep MLPs at several depths with four initializations (tanh orthogonal at the critical
point chi = 1, tanh Gaussian at the same point, tanh orthogonal off-critical, relu with He init)
on flattened images and reports test accuracy vs depth and validation learning curves, mean +-
95% CI over seeds. Writes study.json, C1_accuracy_vs_depth.png, C2_learning_curves.png and one
training folder per (activation, depth) into --out_dir (see isometry/studies/accuracy.py).

  python scripts/study_accuracy.py                        # the committed default (results/C_accuracy)
  python scripts/study_accuracy.py --quick --out_dir=/tmp/c      # smoke run, seconds
  python scripts/study_accuracy.py --depths=2,16 --seeds=3 --epochs=2 --out_dir=/tmp/c2

Running the same command again continues an interrupted study; a finished one is replaced only
with --overwrite. Without --data_dir, fashion_mnist is read offline from
/usr/share/datasets/fashion-mnist when that folder exists, and any other dataset through TFDS.
Bad flags exit with status 2 and one line.
"""
from isometry import cli
from isometry.studies import accuracy
from isometry.studies import cli as study_cli

cli.define_flags(accuracy.StudyConfig)
main = study_cli.main(accuracy.StudyConfig, accuracy.run, "results/C_accuracy")

if __name__ == "__main__":
  cli.run(main)
