#!/usr/bin/env python3
"""Predicted vs empirical singular-value spectra of deep-network Jacobians.

Free probability (Pennington, Schoenholz & Ganguli 2017) predicts the density of the squared
singular values of the input-output Jacobian of a deep random network; this samples width-N
networks and compares, orthogonal against Gaussian weights, across depths. Writes spectra.json
and spectra.png into --out_dir (default: a new folder runs/spectra/<date-time>).

  python scripts/spectra.py                       # tanh on the critical line at q* = 1/64
  python scripts/spectra.py --q_star=1 --depths=2,32,128
  python scripts/spectra.py --sigma_w=1.2 --sigma_b=0.1 --weights=orthogonal

Bad flags exit with status 2 and a one-line message, before any work.
"""
from isometry import cli  # first: the runtime settings, before numpy and jax load

from absl import flags, logging

from isometry.results import io
from isometry.studies import spectra

FLAGS = flags.FLAGS
cli.define_flags(spectra.SpectraConfig, aliases={"samples": "num_networks"})
flags.DEFINE_string("out_dir", None, "Where spectra.json and spectra.png go (default: a new "
                    "folder runs/spectra/<date-time>).")
flags.DEFINE_boolean("overwrite", False, "Replace the results of an earlier run in --out_dir.")


def _setup():
  config = cli.config_from_flags(spectra.SpectraConfig)
  config.scales()
  out_dir = FLAGS.out_dir or cli.new_run_dir("spectra")
  io.prepare_out_dir(out_dir, ("spectra.json", "spectra.png"), overwrite=FLAGS.overwrite)
  return config, out_dir


def main(argv):
  del argv
  config, out_dir = cli.call(_setup)
  result = spectra.run(config, out_dir)
  worst = max(case["ks_distance"] for case in result["cases"])
  logging.info("wrote %s/spectra.json and spectra.png in %.0fs (largest KS distance %.4f)",
               out_dir, result["seconds"], worst)


if __name__ == "__main__":
  cli.run(main)
