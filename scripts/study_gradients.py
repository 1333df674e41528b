#!/usr/bin/env python3
"""Study A: vanishing and exploding gradients in deep MLPs and RNNs, against mean field.

Part 1: per-layer norms ||dL/dh_l|| of random deep MLPs (tanh, linear, relu; orthogonal vs
Gaussian weights) over a sweep of sigma_w across chi = 1, with the fitted log-slope against log chi.
Part 2: ||dL/dh_t|| over time in a tanh RNN at init and after a short training, per gain, on
row-by-row images. Writes gradients.json, A1/A2/A3 figures and rnn/ into --out_dir
(see isometry/studies/gradients.py); a finished study there is replaced only with --overwrite.

  python scripts/study_gradients.py                     # the committed default (~2 min, 2 cores)
  python scripts/study_gradients.py --quick --out_dir=/tmp/a   # smoke run, seconds
  python scripts/study_gradients.py --dataset=mnist     # RNN part on MNIST (TFDS, downloads)

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when that
folder exists, and any other dataset through TFDS. Bad flags exit with status 2 and one line.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import gradients

cli.define_flags(gradients.StudyConfig)
main = study_cli.main(gradients.StudyConfig, gradients.run, "results/A_gradients")

if __name__ == "__main__":
  cli.run(main)
