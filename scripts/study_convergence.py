#!/usr/bin/env python3
"""Study B: speed of convergence, deep vs shallow, orthogonal vs Gaussian init.

Part 1: deep linear networks learning a random linear map by full-batch gradient descent at
lr = lr0 / depth (Saxe, McClelland & Ganguli 2014): steps to a relative error threshold vs depth.
Part 2: deep tanh networks at the critical point chi = 1 on a Fashion-MNIST subset: steps to a
training-loss threshold vs depth. Writes convergence.json, curves.npz, B1_steps_vs_depth.png and
B2_loss_curves.png into --out_dir (see isometry/studies/convergence.py); a finished study there
is replaced only with --overwrite.

  python scripts/study_convergence.py                    # the committed default (~7-10 min, 2 cores)
  python scripts/study_convergence.py --quick --out_dir=/tmp/b    # smoke run, seconds
  python scripts/study_convergence.py --dataset=mnist    # part 2 on MNIST (TFDS, downloads)

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when that
folder exists, and any other dataset through TFDS. Bad flags exit with status 2 and one line.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import convergence

cli.define_flags(convergence.StudyConfig)
main = study_cli.main(convergence.StudyConfig, convergence.run, "results/B_convergence")

if __name__ == "__main__":
  cli.run(main)
