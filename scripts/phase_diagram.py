#!/usr/bin/env python3
"""Draws the order-to-chaos phase diagram (chi and xi_c over sigma_w^2 x sigma_b^2).

  python scripts/phase_diagram.py                       # tanh, into results/phase_diagram
  python scripts/phase_diagram.py --activation=hard_tanh --grid=81 --out_dir=/tmp/pd

Writes phase_diagram.json and phase_diagram.png (see isometry/phase_diagram.py). Bad flags exit
with status 2 and a one-line message.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli
from isometry import phase_diagram
from isometry.activations import ACTIVATIONS

_DEFAULTS = phase_diagram.PhaseDiagramConfig()
FLAGS = flags.FLAGS

flags.DEFINE_enum("activation", _DEFAULTS.activation, sorted(ACTIVATIONS), "Nonlinearity.")
flags.DEFINE_float("sigma_w2_max", _DEFAULTS.sigma_w2_max,
                   f"Largest weight variance sigma_w^2 (the axis starts at "
                   f"{_DEFAULTS.sigma_w2_min}).")
flags.DEFINE_float("sigma_b2_max", _DEFAULTS.sigma_b2_max,
                   "Largest bias variance sigma_b^2 (the axis starts at 0).")
flags.DEFINE_integer("grid", _DEFAULTS.grid, "Grid points per axis.")
flags.DEFINE_string("out_dir", "results/phase_diagram", "Results folder.")



def main(argv):
  del argv
  config = phase_diagram.PhaseDiagramConfig(
      activation=FLAGS.activation, sigma_w2_max=FLAGS.sigma_w2_max,
      sigma_b2_max=FLAGS.sigma_b2_max, grid=FLAGS.grid)
  try:
    config.validate()
  except ValueError as e:
    cli.fail(e)
  phase_diagram.run(config, FLAGS.out_dir)


if __name__ == "__main__":
  cli.run(main)
