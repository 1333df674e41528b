#!/usr/bin/env python3
"""Study D: can a hard orthogonality constraint hurt? (Vorontsov et al. 2017)

Trains a vanilla tanh RNN on row-by-row images under each arm: no constraint ("none"), the soft
penalty ("soft"), the hard constraints ("projection", "cayley", "expm", "riemannian_adam") and
the spectral margin m for each of --margins; seeds are vmapped members of one program per arm.
Writes study.json (accuracies with 95% CIs, paired differences to "none", wall times,
singular-value trajectories) and D_accuracy.png, D_singular_values.png, D_val_curves.png to
--out_dir (see isometry/studies/constraints.py). Each arm trains in its own folder, so running the
command again continues an interrupted study; a finished one is replaced only with --overwrite.

  python scripts/study_constraints.py                          # the committed default
  python scripts/study_constraints.py --quick --out_dir=/tmp/d # smoke run, synthetic data
  python scripts/study_constraints.py --arms=none,expm --margins=0.1 --seeds=3

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when
that folder exists, otherwise through TFDS. Bad flags exit with status 2 and one line.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import constraints

cli.define_flags(constraints.StudyConfig)
main = study_cli.main(constraints.StudyConfig, constraints.run, "results/D_constraints")

if __name__ == "__main__":
  cli.run(main)
