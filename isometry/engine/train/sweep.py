"""A sweep: the members of one vmapped program and the settings they share, validated once.

A `Member` holds the per-member scalars (gain, penalty strength, learning rate, seed, init,
gain-adjusted penalty, MLP depth); a `TrainConfig` the whole sweep. `product_members` and
`preset_members` build the usual sweeps (products of axes, the seed notebook's presets).
"""
import dataclasses
import itertools
import math
import os
from typing import Optional, Sequence, Tuple

import optax

from isometry.theory import activations
from isometry import data
from isometry.theory import initializers
from isometry.data import text
from isometry.engine import constraints
from isometry.engine import presets
from isometry.engine import regularizers


NUM_CLASSES = 10  # Image datasets; text datasets have text.NUM_CLASSES.


MODELS = ("rnn", "lstm", "mlp")


OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


class SetupError(ValueError):
  """`train.run` found bad data or settings before doing any work (nothing was written)."""


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a sweep: the numbers that one vmapped program takes per member.

  Attributes:
    label: the configuration's name; members that differ only in seed share it (plots and
      summaries average over them).
    init: initializer of the recurrent kernel (RNN/LSTM) or of the hidden kernels (MLP).
    gain: init gain g (sigma_w for the MLP).
    reg_strength: penalty strength lambda (0: none).
    gain_adjusted: penalise W^T W / g^2 (True) or W^T W (False).
    lr: learning rate.
    seed: PRNG seed of init and batch order (members with one seed share both).
    depth: number of hidden layers (MLP only).
  """
  label: str
  init: str = "orthogonal"
  gain: float = 1.0
  reg_strength: float = 0.0
  gain_adjusted: bool = True
  lr: float = 1e-4
  seed: int = 0
  depth: int = 1

  @property
  def penalty_gain(self) -> float:
    return self.gain if self.gain_adjusted else 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training sweep; frozen, validated on construction (ValueError on bad values).

  Attributes:
    members: the sweep (see `product_members`, `preset_members`).
    model: "rnn", "lstm" or "mlp".
    dataset: tfds name (mnist, fashion_mnist, cifar10).
    data_dir: folder with the IDX files (None: tfds).
    task: RNN input: "row" (T = 28 rows), "pixel" (T = 784), "permuted" (fixed-permuted pixels).
    hidden: RNN/LSTM units or MLP width.
    activation: MLP nonlinearity (RNNs are tanh).
    sigma_b: MLP bias scale, b ~ N(0, sigma_b^2).
    regularizer: penalty name (isometry.engine.regularizers) on the recurrent / hidden kernels.
    constraint: isometry.engine.constraints name on the recurrent kernel (RNN only).
    margin: singular-value band for constraint "margin".
    optimizer: adam, sgd or rmsprop.
    batch_size, epochs: as usual; an epoch is num_train // batch_size steps.
    unroll: lax.scan unroll over time.
    val_size: fraction of the training split held out for validation (0.2: the seed's 48k/12k
      split of MNIST), or a number of examples (an integer >= 1).
    max_train_examples: keep only the first n training examples (smoke tests).
    split_seed: seed of the random validation subset (None: the last val_size examples, as
      Keras's validation_split takes them).
    permutation_seed: pixel order of the permuted task.
    eval_batch_size: chunk size of validation/test evaluation.
    preset: name of the preset the members came from (informational).
    vocab_size, max_len, embed_dim: text datasets (`isometry.text`) only: token ids per word,
      sequence length T and the learned embedding's size E (the recurrent model's input).
    divergence_factor: a member whose mean training loss over an epoch exceeds this multiple of
      its initial validation loss has diverged (as has one whose loss or parameters turn
      non-finite). 10: a sensible init starts near ln(10) = 2.3 nats on ten classes, and a
      classifier at 10x that is confidently wrong on most examples; training that is merely
      unstable stays within a few times its start.
    monitor_probes: probes of the isometry monitor (0: off): after every epoch, the mean and
      variance of the squared singular values of each member's own Jacobian (dh_T/dh_0 for the
      RNN, the hidden stack's input-output map for the MLP; not the LSTM), estimated matrix-free
      at `train.MONITOR_INPUTS` probe inputs. Cost at hidden 128 (8 probes): 2 ms added to the
      end-of-epoch measurement (25.8 -> 27.8 ms, medians of 5, 2 shared cores), under 1% of a
      default row epoch (375 steps, ~2.6 s).
  """
  members: tuple
  model: str = "rnn"
  dataset: str = "mnist"
  data_dir: Optional[str] = None
  task: str = "row"
  hidden: int = presets.SEED_HIDDEN
  activation: str = "tanh"
  sigma_b: float = 0.0
  regularizer: str = "so"
  constraint: str = "none"
  margin: float = 0.1
  optimizer: str = "adam"
  batch_size: int = presets.SEED_BATCH_SIZE
  epochs: int = presets.SEED_EPOCHS
  unroll: int = 4
  val_size: float = 0.2
  max_train_examples: Optional[int] = None
  split_seed: Optional[int] = 0
  permutation_seed: int = 0
  eval_batch_size: int = 1000
  preset: Optional[str] = None
  vocab_size: int = 10000
  max_len: int = 256
  embed_dim: int = 64
  divergence_factor: float = 10.0
  monitor_probes: int = 8

  def __post_init__(self):
    object.__setattr__(self, "members", tuple(
        m if isinstance(m, Member) else Member(**m) for m in self.members))
    _validate(self)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TrainConfig":
    return cls(**d)


def require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _validate(c: TrainConfig) -> None:
  require(c.model in MODELS, f"unknown model {c.model!r}; choose one of {', '.join(MODELS)}")
  require(c.dataset in data.NAMES + text.NAMES,
         f"unknown dataset {c.dataset!r}; choose one of {', '.join(data.NAMES + text.NAMES)}")
  require(c.dataset not in text.NAMES or c.model != "mlp",
         f"dataset {c.dataset} is text: use model rnn or lstm")
  for name in ("vocab_size", "max_len", "embed_dim"):
    require(getattr(c, name) > 0, f"{name} must be > 0, got {getattr(c, name)}")
  require(c.model == "mlp" or c.task in data.TASKS,
         f"unknown task {c.task!r}; choose one of {', '.join(data.TASKS)}")
  for name in ("hidden", "batch_size", "epochs", "unroll", "val_size", "eval_batch_size"):
    require(getattr(c, name) > 0, f"{name} must be > 0, got {getattr(c, name)}")
  require(c.val_size < 1 or float(c.val_size).is_integer(),
         f"val_size must be a fraction in (0, 1) or a whole number of examples, got {c.val_size}")
  require(c.max_train_examples is None or c.max_train_examples > 0,
         f"max_train_examples must be > 0, got {c.max_train_examples}")
  require(c.sigma_b >= 0, f"sigma_b must be >= 0, got {c.sigma_b}")
  require(c.divergence_factor > 1, f"divergence_factor must be > 1, got {c.divergence_factor}")
  require(c.monitor_probes == 0 or c.monitor_probes >= 2,
         f"monitor_probes must be 0 (off) or >= 2, got {c.monitor_probes}")
  activations.get_activation(c.activation)
  regularizers.get_regularizer(c.regularizer)
  require(c.constraint in constraints.NAMES,
         f"unknown constraint {c.constraint!r}; choose one of {', '.join(constraints.NAMES)}")
  require(c.constraint == "none" or c.model == "rnn",
         f"constraint {c.constraint!r} is implemented for model rnn only, not {c.model}")
  require(0 <= c.margin <= 1, f"margin must be in [0, 1], got {c.margin}")
  require(c.optimizer in OPTIMIZERS,
         f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
  require(c.data_dir is None or os.path.isdir(c.data_dir),
         f"data_dir {c.data_dir!r} is not a directory")
  require(len(c.members) > 0, "the sweep has no members")
  seen = set()
  for m in c.members:
    initializers.get_initializer(m.init, 1.0)
    require(m.gain > 0 and math.isfinite(m.gain), f"gain must be > 0, got {m.gain}")
    require(m.reg_strength >= 0, f"reg_strength must be >= 0, got {m.reg_strength}")
    require(m.lr > 0, f"learning rate must be > 0, got {m.lr}")
    require(m.seed >= 0, f"seed must be >= 0, got {m.seed}")
    require(m.depth >= 1, f"depth must be >= 1, got {m.depth}")
    require(c.model == "mlp" or m.depth == 1, "depth is an MLP setting; leave it 1 for RNNs")
    require(c.constraint != "expm" or m.init == "orthogonal",
           "constraint expm starts from an orthogonal init; use init orthogonal")
    require((m.label, m.seed) not in seen, f"two members with label {m.label!r} and seed {m.seed}")
    seen.add((m.label, m.seed))


def product_members(*, inits: Sequence[str] = ("orthogonal",), gains: Sequence[float] = (1.0,),
                    reg_strengths: Sequence[float] = (0.0,), lrs: Sequence[float] = (1e-4,),
                    seeds: int = 1, depths: Sequence[int] = (1,),
                    gain_adjusted: bool = True) -> tuple:
  """The product inits x gains x reg_strengths x lrs x depths x range(seeds) as Members.

  Labels name the init and gain, and every other axis that has more than one value (or a
  nonzero penalty), e.g. "orthogonal_g1.025_reg0.5".
  """
  require(seeds > 0, f"seeds must be > 0, got {seeds}")
  members = []
  for init, gain, reg, lr, depth in itertools.product(inits, gains, reg_strengths, lrs, depths):
    parts = [init, f"g{gain:g}"]
    if len(reg_strengths) > 1 or reg > 0:
      parts.append(f"reg{reg:g}" + ("" if gain_adjusted or reg == 0 else "_unadj"))
    if len(lrs) > 1:
      parts.append(f"lr{lr:g}")
    if len(depths) > 1:
      parts.append(f"depth{depth}")
    for seed in range(seeds):
      members.append(Member("_".join(parts), init, float(gain), float(reg), gain_adjusted,
                            float(lr), seed, int(depth)))
  return tuple(members)


def preset_members(name: str, seeds: int,
                   lrs: Sequence[float] = (presets.SEED_LEARNING_RATE,)) -> tuple:
  """Members for `presets.get_preset(name)`: each config x lrs x seeds 0..seeds-1.

  With several learning rates the labels get an "_lr<value>" suffix.
  """
  require(seeds > 0, f"seeds must be > 0, got {seeds}")
  return tuple(
      Member(p.label + (f"_lr{lr:g}" if len(lrs) > 1 else ""), p.init, p.gain, p.reg_strength,
             p.gain_adjusted, float(lr), seed)
      for p in presets.get_preset(name) for lr in lrs for seed in range(seeds))


@dataclasses.dataclass(frozen=True)
class SweepAxes:
  """The axes of a sweep as the training scripts take them; `members()` is their product.

  Attributes:
    preset: a named sweep of the seed notebook (`isometry.engine.presets`: it sets the inits,
      gains, reg_strengths and gain_adjusted), or None for the product of the axes below.
    inits: initializers of the recurrent kernel (RNN, LSTM) or of the hidden kernels (MLP).
    gains: init gains g (sigma_w of the MLP's layers).
    reg_strengths: strengths of the orthogonality penalty.
    gain_adjusted: penalise W^T W / g^2 (true) or W^T W (false).
    lr: learning rates.
    seeds: seeds 0..seeds-1 of every configuration (init and batch order).
    depths: numbers of hidden layers (MLP only).
  """
  preset: Optional[str] = None
  inits: Tuple[str, ...] = ("orthogonal",)
  gains: Tuple[float, ...] = (1.0,)
  reg_strengths: Tuple[float, ...] = (0.0,)
  gain_adjusted: bool = True
  lr: Tuple[float, ...] = (presets.SEED_LEARNING_RATE,)
  seeds: int = 1
  depths: Tuple[int, ...] = (1,)

  def __post_init__(self):
    require(self.preset is None or self.preset in presets.NAMES,
            f"unknown preset {self.preset!r}; choose one of {', '.join(presets.NAMES)}")
    for name in ("inits", "gains", "reg_strengths", "lr", "depths"):
      require(len(getattr(self, name)) > 0, f"{name} needs at least one value")
    require(self.seeds > 0, f"seeds must be > 0, got {self.seeds}")
    # Item checks here (not only per Member) so that the error names the flag, e.g. --gains.
    require(all(g > 0 and math.isfinite(g) for g in self.gains),
            f"gains must be > 0, got {','.join(f'{g:g}' for g in self.gains)}")
    require(all(r >= 0 for r in self.reg_strengths),
            f"reg_strengths must be >= 0, got {','.join(f'{r:g}' for r in self.reg_strengths)}")
    require(all(lr > 0 for lr in self.lr),
            f"lr must be > 0, got {','.join(f'{lr:g}' for lr in self.lr)}")
    require(all(d >= 1 for d in self.depths),
            f"depths must be >= 1, got {','.join(str(d) for d in self.depths)}")

  def members(self) -> tuple:
    """The sweep's Members: the preset's configurations x lr x seeds, or the product."""
    if self.preset is not None:
      return preset_members(self.preset, self.seeds, self.lr)
    return product_members(inits=self.inits, gains=self.gains, reg_strengths=self.reg_strengths,
                           lrs=self.lr, seeds=self.seeds, depths=self.depths,
                           gain_adjusted=self.gain_adjusted)

  # The axes a preset sets: giving them beside a preset is a contradiction.
  SET_BY_PRESET = ("inits", "gains", "reg_strengths", "gain_adjusted")
