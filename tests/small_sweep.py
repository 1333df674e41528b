"""The small sweep that test_train.py and test_distributed.py train: three members (one of
which diverges at its first step) on a learnable synthetic task of SIDE x SIDE images."""
from isometry import data
from isometry.engine import train

SIDE = 6  # Images are SIDE x SIDE: row sequences of T = 6 steps of D = 6 pixels.


def config(**overrides) -> train.TrainConfig:
  """Three members, hidden 8, two epochs of 8 batches; `overrides` replace TrainConfig fields."""
  members = (
      train.Member("ortho_reg", "orthogonal", 1.0, 0.1, True, 1e-2, seed=0),
      train.Member("glorot", "glorot_uniform", 1.2, 0.0, True, 3e-2, seed=1),
      # The unadjusted penalty of W = 1e20 * orthogonal overflows float32 (W^T W ~ 1e40):
      # the loss is inf at the first step, on whichever device or process holds the member.
      train.Member("overflow", "orthogonal", 1e20, 1.0, False, 1e-2, seed=0),
  )
  # The isometry monitor is off (its compile would double most tests); its own test turns it on.
  settings = dict(members=members, hidden=8, batch_size=16, epochs=2, unroll=1,
                  eval_batch_size=32, val_size=48, monitor_probes=0)
  return train.TrainConfig(**{**settings, **overrides})


def dataset() -> data.Dataset:
  """128 / 48 / 48 images; the label picks which row is bright (a long-memory cue for an RNN)."""
  return data.synthetic_dataset(128, 48, 48, side=SIDE, learnable=True)
