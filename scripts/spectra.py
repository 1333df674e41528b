"""Predicted vs empirical singular-value spectra of deep-network Jacobians.

Free probability (Pennington, Schoenholz & Ganguli 2017) predicts the density of the squared
singular values of the input-output Jacobian of a deep random network; this samples width-N
networks and compares, orthogonal against Gaussian weights, across depths. Writes spectra.json
and spectra.png into --out_dir.

  python scripts/spectra.py                       # tanh on the critical line at q* = 1
  python scripts/spectra.py --q_star=0.015625 --depths=2,32,128
  python scripts/spectra.py --sigma_w=1.2 --sigma_b=0.1 --weights=orthogonal
"""
import os

# jax's CPU QR and SVD call OpenBLAS's LAPACK, whose threads fight XLA's for the cores: at
# N = 1000 a QR took 4.4 s with OpenBLAS's default threads and 0.6 s with one (2-core machine,
# loaded). Must be set before numpy/jax load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import flags, logging  # noqa: E402

from isometry import cli, spectra  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("activation", "tanh", "tanh, hard_tanh, relu, erf or linear.")
flags.DEFINE_enum("weights", "both", ["orthogonal", "gaussian", "both"], "Weight distribution.")
flags.DEFINE_float("q_star", 1.0, "Fixed point on the critical line chi = 1 (ignored when "
                   "--sigma_w and --sigma_b are given).")
flags.DEFINE_float("sigma_w", None, "Weight scale (with --sigma_b: a point off the critical line).")
flags.DEFINE_float("sigma_b", None, "Bias scale.")
flags.DEFINE_list("depths", ["2", "8", "32", "128"], "Depths L, comma-separated.")
flags.DEFINE_integer("width", 1000, "Width N of the sampled networks.")
flags.DEFINE_integer("samples", 3, "Independent networks per (weights, depth).")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("out_dir", "results/spectra", "Where spectra.json and spectra.png go.")


def main(argv):
  del argv
  try:
    config = spectra.SpectraConfig(
        activation=FLAGS.activation,
        weights=("orthogonal", "gaussian") if FLAGS.weights == "both" else (FLAGS.weights,),
        q_star=FLAGS.q_star, sigma_w=FLAGS.sigma_w, sigma_b=FLAGS.sigma_b,
        depths=tuple(int(d) for d in FLAGS.depths), width=FLAGS.width,
        num_networks=FLAGS.samples, seed=FLAGS.seed)
    config.scales()
  except ValueError as e:
    cli.fail(e)
  result = spectra.run(config, FLAGS.out_dir)
  worst = max(case["ks_distance"] for case in result["cases"])
  logging.info("wrote %s/spectra.json and spectra.png (largest KS distance %.4f)", FLAGS.out_dir, worst)


if __name__ == "__main__":
  cli.run(main)
