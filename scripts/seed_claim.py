#!/usr/bin/env python3
"""Tests the seed's claim that a gain-adjusted orthogonality penalty beats an unadjusted one.

Runs the seed notebook's configs2 (g = 1.025) and configs3 (g = 1.25) presets on row-by-row
sequential images with every seed, under the notebook's penalty formula and the paper's eq. 11
(see isometry/studies/seed_claim.py), then writes summary.json (accuracies with 95% CIs, paired
comparisons adjusted vs unadjusted) and seed_claim.png to --out_dir. Each sweep trains in its
own folder, so running the command again continues an interrupted study; a finished one is
replaced only with --overwrite.

  python scripts/seed_claim.py                       # Fashion-MNIST from Debian's package
  python scripts/seed_claim.py --dataset=mnist --data_dir= --out_dir=/tmp/claim_mnist
  python scripts/seed_claim.py --quick --out_dir=/tmp/claim   # smoke run, random data, seconds

Without --data_dir (or with it empty), fashion_mnist is read offline from
/usr/share/datasets/fashion-mnist when that folder exists, and any other dataset through TFDS.
Bad flags exit with status 2 and a one-line message.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import seed_claim

cli.define_flags(seed_claim.StudyConfig)
main = study_cli.main(seed_claim.StudyConfig, seed_claim.run, "results/seed_claim")

if __name__ == "__main__":
  cli.run(main)
