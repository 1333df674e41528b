#!/usr/bin/env python3
"""The seed's claim where the penalty binds: eq. 11 towards g O(n) against towards O(n).

Pilot (which strengths keep W within 10% of g), then one sweep per preset (configs2: g = 1.025,
configs3: g = 1.25): strengths x {adjusted, unadjusted} x seeds on row-by-row Fashion-MNIST
(48k/12k/10k), the seed's Adam at 1e-4 and batch 128. Writes summary.json and
seed_claim_binding.png to --out_dir (see isometry/studies/seed_claim_binding.py); running the same
command again continues an interrupted study.

  python scripts/seed_claim_binding.py                          # the committed run
  python scripts/seed_claim_binding.py --quick --out_dir=/tmp/b # smoke run, synthetic rows

Bad flags exit with status 2 and one line, before any work.
"""
from absl import flags

from isometry import cli
from isometry.studies import seed_claim_binding as study
from isometry.engine import train

FLAGS = flags.FLAGS
cli.define_flags(study.BindingConfig)
flags.DEFINE_boolean("quick", False, "Smoke mode: 8 units, 2 seeds, 2 epochs, synthetic rows "
                     "(flags given explicitly still override it).")
flags.DEFINE_string("out_dir", "results/seed_claim_binding", "Results folder.")


def _config():
  overrides = cli.flag_overrides(study.BindingConfig)
  if FLAGS.quick:
    return study.BindingConfig.quick(**overrides)
  return cli.config_from_flags(study.BindingConfig)


def main(argv):
  del argv
  config = cli.call(_config)
  cli.call(study.run, config, FLAGS.out_dir, errors=(train.SetupError,))


if __name__ == "__main__":
  cli.run(main)
