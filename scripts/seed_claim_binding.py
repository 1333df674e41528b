#!/usr/bin/env python3
"""The seed's claim where the penalty binds: eq. 11 towards g O(n) against towards O(n).

Pilot (which strengths keep W within 10% of g), then one sweep per preset (configs2: g = 1.025,
configs3: g = 1.25): strengths x {adjusted, unadjusted} x seeds on row-by-row Fashion-MNIST
(48k/12k/10k), the seed's Adam at 1e-4 and batch 128. Writes summary.json and
seed_claim_binding.png to --out_dir (see isometry/studies/seed_claim_binding.py). Each sweep
trains in its own folder, so running the same command again continues an interrupted study; a
finished one is replaced only with --overwrite.

  python scripts/seed_claim_binding.py                          # the committed run
  python scripts/seed_claim_binding.py --quick --out_dir=/tmp/b # smoke run, synthetic rows

Bad flags exit with status 2 and one line, before any work.
"""
from isometry import cli
from isometry.studies import cli as study_cli
from isometry.studies import seed_claim_binding

cli.define_flags(seed_claim_binding.StudyConfig)
main = study_cli.main(seed_claim_binding.StudyConfig, seed_claim_binding.run,
                      "results/seed_claim_binding")

if __name__ == "__main__":
  cli.run(main)
