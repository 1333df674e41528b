#!/usr/bin/env python3
"""The critical recurrent gain of the seed's tanh RNN, from the data's input statistics.

Mean-field g* of a SimpleRNN (orthogonal W at gain g, Glorot U, zero bias) read row by row, its
check against sampled RNNs, the free-probability spectrum of dh_T/dh_0 against measured ones,
and a training sweep of g* against the seed's hand-picked gains 1, 1.025, 1.25, with and without
the gain-adjusted SO penalty (see isometry/studies/rnn_gain.py). Writes study.json,
meanfield.png, spectra.png, accuracy.png and training/ into --out_dir; running again continues
an interrupted training sweep, and a finished study is replaced only with --overwrite.

  python scripts/study_rnn_gain.py                    # Fashion-MNIST (Debian's IDX files)
  python scripts/study_rnn_gain.py --dataset=mnist --out_dir=/tmp/gain_mnist   # TFDS download
  python scripts/study_rnn_gain.py --quick --out_dir=/tmp/gain   # smoke run, random data

--reg is another name for --regularizer. Bad flags exit with status 2 and a one-line message.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import rnn_gain

cli.define_flags(rnn_gain.StudyConfig, aliases={"reg": "regularizer"})
main = study_cli.main(rnn_gain.StudyConfig, rnn_gain.run, "results/rnn_critical_gain")

if __name__ == "__main__":
  cli.run(main)
