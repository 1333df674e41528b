#!/usr/bin/env python3
"""Trains a sweep of deep fully connected networks on flattened images.

The sweep is depths x inits x gains x reg_strengths x lr x range(seeds); all depths share one
compiled program (a scanned stack of max(depths) layers, masked per member). Results
(config.json, status.json, metrics.json, spectra.npz, figures, checkpoint.npz) go to --out_dir,
which is never replaced silently (--resume continues a run there, --overwrite replaces it).

  python scripts/train_mlp.py --depths=2,8,32 --inits=orthogonal,gaussian --gains=1.05 \\
      --sigma_b=0.05 --dataset=fashion_mnist --data_dir=/usr/share/datasets/fashion-mnist \\
      --epochs=5 --out_dir=/tmp/mlp

One sweep can span processes and hosts: every process runs the same command with
--coordinator_address, --num_processes and its own --process_id (README.md, "Sweeps across
processes and hosts"). List flags are comma-separated. Bad flags exit with status 2 and a
one-line message.
"""
from isometry import cli  # first: the runtime settings, before numpy and jax load

from absl import flags

from isometry.engine import train

# This script's own defaults, where they differ from the seed's RNN settings.
_AXES = dict(inits=("orthogonal", "gaussian"), lr=(1e-3,), depths=(2, 8, 32))
_SETTINGS = dict(hidden=256, optimizer="sgd", epochs=10)

FLAGS = flags.FLAGS
cli.define_flags(train.SweepAxes, skip=("preset",), defaults=_AXES)
cli.define_flags(train.TrainConfig, defaults=_SETTINGS, aliases={"width": "hidden"},
                 skip=("members", "preset", "model", "task", "unroll", "constraint", "margin",
                       "vocab_size", "max_len", "embed_dim", "permutation_seed"))
cli.define_run_flags()


def _config() -> train.TrainConfig:
  axes = cli.config_from_flags(train.SweepAxes, skip=("preset",))
  return cli.config_from_flags(train.TrainConfig, skip=("members", "preset", "model"),
                               members=axes.members(), model="mlp")


main = cli.run_main(_config, train.run, errors=(train.SetupError,))

if __name__ == "__main__":
  cli.run(main)
