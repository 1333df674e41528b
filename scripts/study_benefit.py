#!/usr/bin/env python3
"""Study E: does depth or sequence length change how much an orthogonality penalty helps?

Trains tanh MLPs of several depths and a tanh RNN on row-by-row (T = 28) and pixel-by-pixel
(T = 784) images, each with and without the soft-orthogonality penalty (same seeds), and reports
the paired difference in accuracy per depth and per task (see isometry/studies/benefit.py).
Writes study.json, benefit_vs_depth.png, benefit_row_vs_pixel.png, learning_curves.png and one
training folder per run (mlp/, rnn_row/, rnn_pixel/) to --out_dir; running the command again
continues an interrupted study, and a finished one is replaced only with --overwrite.

  python scripts/study_benefit.py                       # the committed default
  python scripts/study_benefit.py --quick --out_dir=/tmp/e   # smoke run, synthetic data, seconds
  python scripts/study_benefit.py --depths=2,8,32,64 --tasks=row --epochs=20

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when that
folder exists, and any other dataset through TFDS. Bad flags exit with status 2 and one line.
"""
from isometry import cli
from isometry.studies import benefit
from isometry.studies import cli as study_cli

cli.define_flags(benefit.StudyConfig)
main = study_cli.main(benefit.StudyConfig, benefit.run, "results/E_benefit")

if __name__ == "__main__":
  cli.run(main)
