#!/usr/bin/env python3
"""Finite-width moments of deep-network Jacobian spectra: many networks against 1/N theory.

Samples hundreds to thousands of networks per width (matrix-free: Gaussian probes carried through
the forward pass), records E[m_1] and E[var] of the squared singular values of J with 95%
intervals over networks, and sets them against the infinite-width free-probability values, the
exact product-of-independent-layers correction and the forward-pass correction derived in
`isometry.theory.finite_width`. Writes finite_width.json and finite_width.png into --out_dir.

  python scripts/finite_width.py                        # the default study (4-6 min on 2 shared cores)
  python scripts/finite_width.py --quick --out_dir=/tmp/fw
  python scripts/finite_width.py --widths=250,1000 --num_networks=256,64 --overwrite

Bad flags exit with status 2 and a one-line message, before any work.
"""
from isometry import cli  # first: the runtime settings, before numpy and jax load

from absl import flags, logging

from isometry.results import io
from isometry.studies import finite_width

FLAGS = flags.FLAGS
cli.define_flags(finite_width.FiniteWidthConfig)
flags.DEFINE_boolean("quick", False, "A smoke run of a few seconds (FiniteWidthConfig.quick); "
                     "flags given explicitly still override it.")
flags.DEFINE_string("out_dir", "results/finite_width", "Where finite_width.json and "
                    "finite_width.png go.")
flags.DEFINE_boolean("overwrite", False, "Replace the results of an earlier run in --out_dir.")

_OUTPUTS = ("finite_width.json", "finite_width.png")


def _setup():
  base = finite_width.FiniteWidthConfig.quick() if FLAGS.quick else None
  fixed = {} if base is None else {
      f: getattr(base, f) for f in finite_width.FiniteWidthConfig.__dataclass_fields__}
  config = cli.config_from_flags(finite_width.FiniteWidthConfig, **fixed)
  io.prepare_out_dir(FLAGS.out_dir, _OUTPUTS, overwrite=FLAGS.overwrite)
  return config


def main(argv):
  del argv
  config = cli.call(_setup)
  result = finite_width.run(config, FLAGS.out_dir)
  logging.info("wrote %s/finite_width.json and finite_width.png in %.0fs", FLAGS.out_dir,
               result["seconds"])


if __name__ == "__main__":
  cli.run(main)
