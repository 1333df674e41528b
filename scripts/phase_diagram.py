#!/usr/bin/env python3
"""Draws the order-to-chaos phase diagram (chi and xi_c over sigma_w^2 x sigma_b^2).

  python scripts/phase_diagram.py                       # tanh, into results/phase_diagram
  python scripts/phase_diagram.py --activation=hard_tanh --grid=81 --out_dir=/tmp/pd

Writes phase_diagram.json and phase_diagram.png (see isometry/studies/phase_diagram.py). Bad
flags exit with status 2 and a one-line message.
"""
from isometry import cli  # first: the runtime settings, before numpy and jax load

from absl import flags

from isometry.studies import phase_diagram

FLAGS = flags.FLAGS
cli.define_flags(phase_diagram.PhaseDiagramConfig)
flags.DEFINE_string("out_dir", "results/phase_diagram", "Results folder.")


def _config():
  config = cli.config_from_flags(phase_diagram.PhaseDiagramConfig)
  config.validate()
  return config


def main(argv):
  del argv
  config = cli.call(_config)
  phase_diagram.run(config, FLAGS.out_dir)


if __name__ == "__main__":
  cli.run(main)
