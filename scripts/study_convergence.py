#!/usr/bin/env python3
"""Study B: speed of convergence, deep vs shallow, orthogonal vs Gaussian init.

Part 1: deep linear networks learning a random linear map by full-batch gradient descent at
lr = lr0 / depth (Saxe, McClelland & Ganguli 2014): steps to a relative error threshold vs depth.
Part 2: deep tanh networks at the critical point chi = 1 on a Fashion-MNIST subset: steps to a
training-loss threshold vs depth. Writes convergence.json, curves.npz, B1_steps_vs_depth.png and
B2_loss_curves.png into --out_dir (see isometry/convergence_study.py).

  python scripts/study_convergence.py                    # the committed default (~7-10 min, 2 cores)
  python scripts/study_convergence.py --quick --out_dir=/tmp/b    # smoke run, seconds
  python scripts/study_convergence.py --dataset=mnist    # part 2 on MNIST (TFDS, downloads)

Without --data_dir, fashion_mnist is read offline from /usr/share/datasets/fashion-mnist when that
folder exists, and any other dataset through TFDS. Bad flags exit with status 2 and one line.
"""
import os
import sys

# jax's CPU QR (orthogonal draws) calls OpenBLAS, whose threads fight XLA's for the cores (see
# scripts/spectra.py). Must be set before numpy/jax load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from isometry import cli  # noqa: E402
from isometry.studies import convergence as convergence_study  # noqa: E402
from isometry import data  # noqa: E402

_D = convergence_study.ConvergenceStudyConfig()
FLAGS = flags.FLAGS

flags.DEFINE_boolean("quick", False, "Smoke mode (seconds): small networks, few steps, a "
                     "synthetic task for part 2. Flags given explicitly still override it.")
flags.DEFINE_list("inits", list(_D.inits), "Initializations: orthogonal, gaussian.")
flags.DEFINE_integer("seeds", _D.seeds, "Seeds per (task, depth, init).")
flags.DEFINE_integer("seed", _D.seed, "Base PRNG seed.")
flags.DEFINE_list("linear_depths", [str(d) for d in _D.linear_depths],
                  "Part 1: numbers of weight matrices D.")
flags.DEFINE_integer("linear_width", _D.linear_width, "Part 1: width N (input and hidden).")
flags.DEFINE_integer("linear_out", _D.linear_out, "Part 1: output dimension N_out < N.")
flags.DEFINE_float("linear_lr", _D.linear_lr, "Part 1: lr0; depth D uses lr0 / D.")
flags.DEFINE_integer("linear_steps", _D.linear_steps, "Part 1: gradient steps (budget).")
flags.DEFINE_float("linear_threshold", _D.linear_threshold,
                   "Part 1: relative error ||W - M||^2 / ||M||^2 counted as converged.")
flags.DEFINE_list("tanh_depths", [str(d) for d in _D.tanh_depths], "Part 2: hidden layers.")
flags.DEFINE_float("q_star", _D.q_star, "Part 2: fixed point q* of the critical point (chi = 1).")
flags.DEFINE_integer("tanh_width", _D.tanh_width, "Part 2: hidden units.")
flags.DEFINE_integer("tanh_examples", _D.tanh_examples, "Part 2: training examples (one batch).")
flags.DEFINE_float("tanh_lr", _D.tanh_lr, "Part 2: lr0; D weight matrices use lr0 / D.")
flags.DEFINE_integer("tanh_steps", _D.tanh_steps, "Part 2: gradient steps (budget).")
flags.DEFINE_float("tanh_threshold", _D.tanh_threshold,
                   "Part 2: training cross-entropy counted as converged.")
flags.DEFINE_enum("dataset", _D.dataset, data.NAMES, "Part 2: image dataset.")
flags.DEFINE_string("data_dir", None, "Folder with the four IDX files, or a TFDS data dir "
                    "(default: the offline Fashion-MNIST copy for fashion_mnist, else TFDS).")
flags.DEFINE_string("out_dir", "results/B_convergence", "Results folder.")

_INT_LISTS = ("linear_depths", "tanh_depths")
_FIELDS = ("inits", "seeds", "seed", "linear_width", "linear_out", "linear_lr", "linear_steps",
           "linear_threshold", "q_star", "tanh_width", "tanh_examples", "tanh_lr", "tanh_steps",
           "tanh_threshold", "dataset", "data_dir") + _INT_LISTS


def _config() -> convergence_study.ConvergenceStudyConfig:
  overrides = cli.given_flags(_FIELDS, {name: int for name in _INT_LISTS})
  if FLAGS.quick:
    return convergence_study.ConvergenceStudyConfig.quick(**overrides)
  return convergence_study.ConvergenceStudyConfig(**overrides)


def main(argv):
  del argv
  config = cli.call(_config)
  # Raised before any work or file.
  cli.call(convergence_study.run, config, FLAGS.out_dir, errors=(data.DataUnavailableError,))


if __name__ == "__main__":
  cli.run(main)
