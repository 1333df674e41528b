#!/usr/bin/env python3
"""Trains a sweep of vanilla tanh RNNs (or LSTMs) on sequential image classification.

The sweep is inits x gains x reg_strengths x lr x range(seeds), or a named preset of the seed
notebook (Hlav 2019) x lr x range(seeds); every member trains in one compiled program. Results
(config.json, status.json, metrics.json, spectra.npz, figures, checkpoint.npz) go to --out_dir.
A folder that holds a run is never replaced silently: the script stops, changing nothing,
unless given --resume (continue it, also after a kill) or --overwrite.

  python scripts/train_rnn.py --preset=configs2 --dataset=fashion_mnist \\
      --data_dir=/usr/share/datasets/fashion-mnist --seeds=3 --epochs=15 --out_dir=results/x
  python scripts/train_rnn.py --gains=0.9,1,1.1 --reg=so --reg_strengths=0,0.1 --seeds=2 \\
      --out_dir=/tmp/sweep
  python scripts/train_rnn.py --constraint=riemannian_adam --out_dir=/tmp/stiefel
  python scripts/train_rnn.py --dataset=imdb_reviews --cell=lstm --val_size=5000 --lr=1e-3 \\
      --seeds=3 --epochs=5 --out_dir=/tmp/imdb      # the seed's sentiment experiment

One sweep can span processes and hosts: every process runs the same command with
--coordinator_address, --num_processes and its own --process_id (README.md, "Sweeps across
processes and hosts"). List flags are comma-separated. Bad flags exit with status 2 and a
one-line message.
"""
from isometry import cli  # first: the runtime settings, before numpy and jax load

from absl import flags

from isometry.engine import presets
from isometry.engine import train

FLAGS = flags.FLAGS
cli.define_flags(train.SweepAxes, skip=("depths",), aliases={"init": "inits"})
cli.define_flags(train.TrainConfig, skip=("members", "preset", "activation", "sigma_b"),
                 aliases={"cell": "model", "reg": "regularizer"})
cli.define_run_flags("Continue the run in --out_dir (interrupted, killed, or finished with "
                     "fewer --epochs) from its checkpoint.")


def _config() -> train.TrainConfig:
  axes = cli.config_from_flags(train.SweepAxes, skip=("depths",))
  given = [f"--{name}" for name in axes.SET_BY_PRESET if FLAGS[name].present]
  if axes.preset and given:
    raise ValueError(f"--preset={axes.preset} sets {', '.join(given)}; drop them")
  if FLAGS.model == "mlp":
    raise ValueError("--cell must be rnn or lstm (MLPs: scripts/train_mlp.py)")
  # With a preset the penalty is the notebook's unless --reg says otherwise.
  fixed = {"regularizer": presets.SEED_REGULARIZER} if axes.preset else {}
  return cli.config_from_flags(train.TrainConfig, skip=("members", "preset"),
                               members=axes.members(), preset=axes.preset, **fixed)


main = cli.run_main(_config, train.run, errors=(train.SetupError,))

if __name__ == "__main__":
  cli.run(main)
