"""Sweeps of RNN / LSTM / deep-MLP classifiers trained in ONE compiled program.

A sweep is a tuple of `Member`s: per-member scalars (gain, penalty strength, learning rate, seed,
init choice, gain-adjusted penalty, MLP depth) that differ only in value, so that

    run_epoch = jit(vmap(one member's epoch))

trains all of them at once. One epoch is a `lax.scan` over the steps, batches are gathered by
index from the dataset kept on device, and each epoch ends with the validation metrics, the
singular values of the tracked weights (one SVD per epoch, not per step) and gradient norms on a
fixed probe batch (RNN: ||dL/dh_t|| for every t, read as the gradient w.r.t. a zero perturbation
added to h_t; MLP: ||dL/dW_l|| and ||dL/dh_l|| for every layer). With several local devices the
member axis is sharded over a 1-d mesh (members padded to a multiple of the device count).

A Python loop over epochs calls `run_epoch` (compiled once for the whole sweep), logs one line,
and writes atomically, after every epoch, to `out_dir`:
  config.json   the TrainConfig.
  status.json   {"status": "running" | "done" | "diverged" | "interrupted", ...}; "diverged" when
                every member diverged (a sweep with some diverged members is "done" and lists them).
  metrics.json  {"members": [{"config", "status", "diverged_epoch", "initial", "epochs": [...],
                "test_loss", "test_accuracy"}], "configs": per-label test summary over seeds}.
  spectra.npz   full singular-value spectra and gradient norms per epoch (index 0 = init).
  checkpoint.npz the full training state and history; `run(..., resume=True)` continues from it to
                the same final metrics as an uninterrupted run (epoch e's batches come from
                fold_in(key(seed), e), nothing depends on the Python loop's history).
SIGINT/SIGTERM stop the run after the current epoch with status "interrupted" (a second signal
stops at once); finished epochs stay on disk. A run with no finished epoch for max(10x the last
epoch's time, 300 s) logs a warning (see `run`). A member whose loss or parameters turn non-finite
is marked diverged at that epoch and its parameters are frozen (`jnp.where` keeps the last finite
values), so it cannot poison the others.

References:
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019 (the seed notebook
  OrthogonalRegRNNSV.ipynb; `isometry.presets`).
"""
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from isometry import activations
from isometry import constraints
from isometry import data
from isometry import diagnostics
from isometry import initializers
from isometry import io
from isometry import models
from isometry import presets
from isometry import regularizers
from isometry import selection
from isometry import stats
from isometry import text

NUM_CLASSES = 10  # Image datasets; text datasets have text.NUM_CLASSES.
MODELS = ("rnn", "lstm", "mlp")
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}
# JSON keeps the gradient norm through time at most at this many time steps (all of them in
# spectra.npz), so pixel-by-pixel runs (T = 784) keep metrics.json small.
MAX_JSON_TIME_STEPS = 64
CHECKPOINT = "checkpoint.npz"
# The leaves of each model's params (by path, `isometry.selection`) that the penalty, the
# constraint and the tracked singular values are about: the recurrent kernel, or the MLP's stack
# of hidden kernels.
KERNELS = {"rnn": "recurrent", "lstm": "recurrent", "mlp": "hidden/w"}
# The isometry monitor probes the model's Jacobian at this many of the probe batch's inputs.
MONITOR_INPUTS = 4
# Every file a run writes into its out_dir (figures from `isometry.training_plots`).
RUN_FILES = ("config.json", "status.json", "metrics.json", "spectra.npz", CHECKPOINT,
             "singular_values.png", "curves.png", "gradients.png")
# A live run holds an exclusive flock on this file; a run whose status.json says "running" but
# whose lock nobody holds was killed.
LOCK = ".lock"


class SetupError(ValueError):
  """`run` found bad data or settings before doing any work (nothing was written)."""


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
    regularizer: penalty name (isometry.regularizers) on the recurrent / hidden kernels.
    constraint: isometry.constraints name on the recurrent kernel (RNN only).
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
      at MONITOR_INPUTS probe inputs. Cost at hidden 128 (8 probes): 2 ms added to the
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


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _validate(c: TrainConfig) -> None:
  _check(c.model in MODELS, f"unknown model {c.model!r}; choose one of {', '.join(MODELS)}")
  _check(c.dataset in data.NAMES + text.NAMES,
         f"unknown dataset {c.dataset!r}; choose one of {', '.join(data.NAMES + text.NAMES)}")
  _check(c.dataset not in text.NAMES or c.model != "mlp",
         f"dataset {c.dataset} is text: use model rnn or lstm")
  for name in ("vocab_size", "max_len", "embed_dim"):
    _check(getattr(c, name) > 0, f"{name} must be > 0, got {getattr(c, name)}")
  _check(c.model == "mlp" or c.task in data.TASKS,
         f"unknown task {c.task!r}; choose one of {', '.join(data.TASKS)}")
  for name in ("hidden", "batch_size", "epochs", "unroll", "val_size", "eval_batch_size"):
    _check(getattr(c, name) > 0, f"{name} must be > 0, got {getattr(c, name)}")
  _check(c.val_size < 1 or float(c.val_size).is_integer(),
         f"val_size must be a fraction in (0, 1) or a whole number of examples, got {c.val_size}")
  _check(c.max_train_examples is None or c.max_train_examples > 0,
         f"max_train_examples must be > 0, got {c.max_train_examples}")
  _check(c.sigma_b >= 0, f"sigma_b must be >= 0, got {c.sigma_b}")
  _check(c.divergence_factor > 1, f"divergence_factor must be > 1, got {c.divergence_factor}")
  _check(c.monitor_probes == 0 or c.monitor_probes >= 2,
         f"monitor_probes must be 0 (off) or >= 2, got {c.monitor_probes}")
  activations.get_activation(c.activation)
  regularizers.get_regularizer(c.regularizer)
  _check(c.constraint in constraints.NAMES,
         f"unknown constraint {c.constraint!r}; choose one of {', '.join(constraints.NAMES)}")
  _check(c.constraint == "none" or c.model == "rnn",
         f"constraint {c.constraint!r} is implemented for model rnn only, not {c.model}")
  _check(0 <= c.margin <= 1, f"margin must be in [0, 1], got {c.margin}")
  _check(c.optimizer in OPTIMIZERS,
         f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
  _check(c.data_dir is None or os.path.isdir(c.data_dir),
         f"data_dir {c.data_dir!r} is not a directory")
  _check(len(c.members) > 0, "the sweep has no members")
  seen = set()
  for m in c.members:
    initializers.get_initializer(m.init, 1.0)
    _check(m.gain > 0 and math.isfinite(m.gain), f"gain must be > 0, got {m.gain}")
    _check(m.reg_strength >= 0, f"reg_strength must be >= 0, got {m.reg_strength}")
    _check(m.lr > 0, f"learning rate must be > 0, got {m.lr}")
    _check(m.seed >= 0, f"seed must be >= 0, got {m.seed}")
    _check(m.depth >= 1, f"depth must be >= 1, got {m.depth}")
    _check(c.model == "mlp" or m.depth == 1, "depth is an MLP setting; leave it 1 for RNNs")
    _check(c.constraint != "expm" or m.init == "orthogonal",
           "constraint expm starts from an orthogonal init; use init orthogonal")
    _check((m.label, m.seed) not in seen, f"two members with label {m.label!r} and seed {m.seed}")
    seen.add((m.label, m.seed))


# ----------------------------------------------------------------------------------------------
# Building sweeps.


def product_members(*, inits: Sequence[str] = ("orthogonal",), gains: Sequence[float] = (1.0,),
                    reg_strengths: Sequence[float] = (0.0,), lrs: Sequence[float] = (1e-4,),
                    seeds: int = 1, depths: Sequence[int] = (1,),
                    gain_adjusted: bool = True) -> tuple:
  """The product inits x gains x reg_strengths x lrs x depths x range(seeds) as Members.

  Labels name the init and gain, and every other axis that has more than one value (or a
  nonzero penalty), e.g. "orthogonal_g1.025_reg0.5".
  """
  _check(seeds > 0, f"seeds must be > 0, got {seeds}")
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
  _check(seeds > 0, f"seeds must be > 0, got {seeds}")
  return tuple(
      Member(p.label + (f"_lr{lr:g}" if len(lrs) > 1 else ""), p.init, p.gain, p.reg_strength,
             p.gain_adjusted, float(lr), seed)
      for p in presets.get_preset(name) for lr in lrs for seed in range(seeds))


# ----------------------------------------------------------------------------------------------
# Data on device.


class EvalSet(NamedTuple):
  """An evaluation split in chunks: x (K, E, ...), y (K, E), mask (K, E) (0 on padding)."""
  x: Any
  y: Any
  mask: Any


class Arrays(NamedTuple):
  """Everything a sweep reads, kept on device; train_x is (N, T, D) or (N, D) for the MLP."""
  train_x: Any
  train_y: Any
  val: EvalSet
  test: EvalSet
  probe_x: Any  # (B, ...) the fixed batch on which gradient norms are measured.
  probe_y: Any


def _chunks(x: np.ndarray, y: np.ndarray, size: int) -> EvalSet:
  n = len(x)
  size = min(size, n)
  k = -(-n // size)
  pad = k * size - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  y = np.concatenate([y, np.zeros(pad, y.dtype)])
  return EvalSet(x.reshape((k, size) + x.shape[1:]), y.reshape(k, size), mask.reshape(k, size))


def num_classes(config: TrainConfig) -> int:
  return text.NUM_CLASSES.get(config.dataset, NUM_CLASSES)


def prepare_arrays(config: TrainConfig, dataset=None) -> Arrays:
  """Loads (unless `dataset` is given) and shapes the data for `config`, as numpy arrays.

  Args:
    config: the sweep.
    dataset: optional `isometry.data.Dataset`-like object (train_x, train_y, val_x, val_y,
      test_x, test_y) of images in [0, 1] (or, for a text dataset, (N, T) token ids) with
      integer labels.

  Raises:
    ValueError (data.DataUnavailableError included): data missing or too small for the batch.
  """
  is_text = config.dataset in text.NAMES
  if dataset is None and is_text:
    dataset = text.load_text_dataset(config.dataset, config.data_dir, config.vocab_size,
                                     config.max_len, config.val_size, config.split_seed)
  elif dataset is None:
    dataset = data.load_dataset(config.dataset, config.data_dir, val_size=config.val_size,
                                split_seed=config.split_seed)
  train_x, train_y = dataset.train_x, dataset.train_y
  if config.max_train_examples is not None:
    train_x = train_x[:config.max_train_examples]
    train_y = train_y[:config.max_train_examples]
  _check(len(train_x) >= config.batch_size,
         f"batch_size {config.batch_size} > {len(train_x)} training examples")
  _check(len(dataset.val_x) > 0 and len(dataset.test_x) > 0, "empty validation or test split")
  classes = num_classes(config)
  for y in (train_y, dataset.val_y, dataset.test_y):
    _check(0 <= int(np.min(y)) and int(np.max(y)) < classes, f"labels must be in [0, {classes})")

  if is_text:
    def view(ids):
      ids = np.asarray(ids, np.int32)
      _check(ids.ndim == 2 and 0 <= ids.min() and ids.max() < config.vocab_size,
             f"text inputs must be (N, T) token ids in [0, {config.vocab_size})")
      return ids
  elif config.model == "mlp":
    def view(images):
      return np.asarray(images, np.float32).reshape(len(images), -1)
  else:
    def view(images):
      return np.asarray(data.sequence_view(images, config.task, config.permutation_seed),
                        np.float32)

  def labels(y):
    return np.asarray(y, np.int32)

  train_x = view(train_x)
  return Arrays(
      train_x=train_x, train_y=labels(train_y),
      val=_chunks(view(dataset.val_x), labels(dataset.val_y), config.eval_batch_size),
      test=_chunks(view(dataset.test_x), labels(dataset.test_y), config.eval_batch_size),
      probe_x=train_x[:config.batch_size], probe_y=labels(train_y[:config.batch_size]))


# ----------------------------------------------------------------------------------------------
# The compiled program.


class Program(NamedTuple):
  """The jitted functions of a sweep; every one maps over the (padded, sharded) member axis.

  init(hparams) -> states.
  run_epoch(states, initial_loss, arrays, epoch) -> (states, epoch metrics): one epoch of
    every member; initial_loss (members,) is each member's validation loss at init, the
    reference of the divergence rule.
  measure(states, eval_set, probe_x, probe_y) -> metrics on eval_set and diagnostics.
  """
  init: Callable
  run_epoch: Callable
  measure: Callable
  member_sharding: NamedSharding
  replicated: NamedSharding
  num_padded: int


def hparams_of(members: Sequence[Member], init_names: Sequence[str]) -> dict:
  """The per-member numbers, as numpy arrays with a leading member axis."""
  return {
      "gain": np.array([m.gain for m in members], np.float32),
      "reg": np.array([m.reg_strength for m in members], np.float32),
      "penalty_gain": np.array([m.penalty_gain for m in members], np.float32),
      "lr": np.array([m.lr for m in members], np.float32),
      "seed": np.array([m.seed for m in members], np.int32),
      "init_index": np.array([init_names.index(m.init) for m in members], np.int32),
      "depth": np.array([m.depth for m in members], np.int32),
  }


def _tree_where(condition, new, old):
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves))


def _cross_entropy(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _one_matrix_per_call(fn: Callable) -> Callable:
  """fn(*arrays), batched by a loop: under vmap every LAPACK call inside fn gets one matrix.

  Works around a deadlock in jaxlib's CPU LAPACK kernels (jax 0.9.1 to at least 0.11.0: the SVD
  alone in 0.9.x, every kernel through `ParallelBatchMap` in jaxlib/cpu/lapack_kernels.cc from
  0.10, whose numbers follow). A batched call (SVD, QR, LU, triangular solve, ...) whose batch
  is estimated at >= 2e5 flops is cut into chunks that are scheduled on XLA:CPU's intra-op
  thread pool, one thread per core, and the calling thread then blocks on an
  absl::BlockingCounter until they are done. XLA's thunk executor runs kernels on threads of
  that same pool, and once every pool thread is such a waiter -- two devices each in its own
  batched SVD on a 2-core machine (and in principle two independent batched calls of one
  program) -- nobody is left to run the chunks and the program never returns. A call on one
  matrix never takes that path. Upstream stopped parallelizing LAPACK over the batch in
  open-source builds after jax-v0.11.0 (jax-ml/jax commit 859992407d), so there the loop costs
  nothing that the kernel would not; benchmarks/xla_cpu_hang_repro.py reproduces the deadlock
  with jax and numpy only.

  The loop is jax.custom_batching.sequential_vmap, which has no reverse-mode rule of its own;
  the custom_vjp below gives it one that loops as well, so a looped fn can sit in a loss.
  """
  looped = jax.custom_batching.sequential_vmap(fn)
  looped_vjp = jax.custom_batching.sequential_vmap(
      lambda *args_and_ct: jax.vjp(fn, *args_and_ct[:-1])[1](args_and_ct[-1]))

  @jax.custom_vjp
  def call(*args):
    return looped(*args)

  def call_fwd(*args):
    return looped(*args), args

  def call_bwd(args, ct):
    return looped_vjp(*args, ct)

  call.defvjp(call_fwd, call_bwd)
  return call


def _loops_linalg(devices: Sequence) -> bool:
  """Whether programs on `devices` need `_one_matrix_per_call`: on CPU only (GPUs batch
  linear algebra in cuSOLVER, where a loop would only cost time)."""
  return all(d.platform == "cpu" for d in devices)


def make_optimizer(config: TrainConfig, lr, gain, *,
                   one_matrix_per_call: bool = False) -> optax.GradientTransformation:
  """The member's optimizer: config.optimizer at rate `lr`, with config.constraint on the
  recurrent kernel (`lr` and `gain` may be traced per-member scalars).

  Post-processing constraints (projection, margin) are chained after the optimizer and masked
  to the kernel that KERNELS selects by path; cayley and the Riemannian optimizers replace the
  optimizer there (optax.multi_transform); expm
  lives in the parametrization (see `materialize`), so the optimizer is left alone. With
  `one_matrix_per_call` the constraint's update runs through `_one_matrix_per_call` (its SVDs
  and solves would otherwise be batched over the members).
  """
  base = OPTIMIZERS[config.optimizer](lr)
  if config.constraint in ("none",) + constraints.PARAMETRIZATIONS:
    return base

  def is_kernel(params):
    return selection.mask(params, KERNELS[config.model])

  def constraint_at(lr, gain):
    return constraints.get_constraint(config.constraint, gain, margin=config.margin,
                                      learning_rate=lr)

  constraint = constraint_at(lr, gain)
  if one_matrix_per_call:
    # lr and gain go in as arguments: a looped function may not close over batched values.
    looped_update = _one_matrix_per_call(
        lambda updates, state, params, lr, gain: constraint_at(lr, gain).update(
            updates, state, params))
    constraint = optax.GradientTransformation(
        constraint.init, lambda updates, state, params=None: looped_update(
            updates, state, params, jnp.asarray(lr), jnp.asarray(gain)))
  if config.constraint in constraints.REPLACES_OPTIMIZER:
    def labels(params):
      return jax.tree.map(lambda r: "constrained" if r else "free", is_kernel(params))
    return optax.multi_transform({"constrained": constraint, "free": base}, labels)
  return optax.chain(base, optax.masked(constraint, is_kernel))


def materialize(config: TrainConfig, params: dict, gain, *,
                one_matrix_per_call: bool = False) -> dict:
  """The model's weights from its trainable params.

  With constraint "expm", params["recurrent"] is {"base", "a"} and the kernel is
  W = gain * base @ expm(a - a^T) (Lezcano-Casado & Martinez-Rubio 2019), `base` frozen by a
  stop_gradient; otherwise params are the weights. `one_matrix_per_call`: the expm (LU solves,
  forward and backward) through `_one_matrix_per_call`.
  """
  if config.constraint != "expm":
    return params
  r = params["recurrent"]
  parametrization = constraints.expm_parametrization
  if one_matrix_per_call:
    parametrization = _one_matrix_per_call(parametrization)
  w = parametrization(jax.lax.stop_gradient(r["base"]), r["a"], jnp.asarray(gain))
  return {**params, "recurrent": w}


def make_train(config: TrainConfig, arrays: Arrays, devices=None) -> Program:
  """Builds the sweep's jitted functions for data shaped like `arrays`.

  Programs are cached per (config up to its epoch count, training-set shape, devices), so
  running or resuming the same sweep again in one process reuses the compiled code.

  Args:
    config: the sweep.
    arrays: the data (only shapes are used here).
    devices: devices of the 1-d member mesh (default: all local devices).

  Returns:
    A Program.
  """
  devices = tuple(jax.local_devices() if devices is None else devices)
  return _build_program(dataclasses.replace(config, epochs=1), tuple(arrays.train_x.shape),
                        devices)


def initial_params(config: TrainConfig, dataset=None) -> list:
  """Each member's parameters at init, as `run` draws them (numpy pytrees, in member order).

  Args:
    config: the sweep.
    dataset: as in `run` (default: config.dataset).
  """
  host = prepare_arrays(config, dataset)
  program = make_train(config, host)
  states = program.init(_padded_hparams(config, program))
  params = _strip(states["params"], len(config.members))
  return [jax.tree.map(lambda a: a[i], params) for i in range(len(config.members))]


def _padded_hparams(config: TrainConfig, program: "Program"):
  """hparams_of the members, padded to the program's member count and placed on its mesh."""
  init_names = tuple(sorted({m.init for m in config.members}))
  members = list(config.members)
  padded = members + [members[-1]] * (program.num_padded - len(members))
  return jax.device_put(hparams_of(padded, init_names), program.member_sharding)


def _map_members(fn: Callable) -> Callable:
  """fn(state, *shared) mapped over the leading member axis of its first argument.

  A sweep of one member runs fn unbatched and adds the axis back: vmapping a size-1 axis turns
  every product into a batched dot, and on XLA's CPU backend that made a row-MNIST train step
  (H = B = 128) about 20% slower (6.5 ms against 5.3 ms, measured side by side).
  """
  def mapped(states, *shared):
    if jax.tree.leaves(states)[0].shape[0] != 1:
      return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(states, *shared)
    result = fn(jax.tree.map(lambda a: a[0], states), *shared)
    return jax.tree.map(lambda a: a[None], result)
  return mapped


@functools.lru_cache(maxsize=8)
def _build_program(config: TrainConfig, train_shape: tuple, devices: tuple) -> Program:
  members = config.members
  init_names = tuple(sorted({m.init for m in members}))
  is_text = config.dataset in text.NAMES
  input_dim = config.embed_dim if is_text else train_shape[-1]
  classes = num_classes(config)
  num_train = train_shape[0]
  hidden = config.hidden
  max_depth = max(m.depth for m in members)
  regularizer = regularizers.get_regularizer(config.regularizer)
  # With no penalty anywhere the step skips computing it (and its gradient) altogether.
  use_penalty = config.regularizer != "none" and any(m.reg_strength > 0 for m in members)
  recurrent = config.model != "mlp"
  if recurrent:
    init_cell, apply_cell = models.get_recurrent_cell(config.model)
  # Every SVD, QR and solve of these programs goes through `_one_matrix_per_call` on CPU.
  one_matrix = _loops_linalg(devices)

  def kernel_initializer(hp):
    # The models vmap the initializer over the MLP's hidden layers and the LSTM's gate blocks;
    # looped, each orthogonal draw is a QR of one matrix.
    def init(key, shape, dtype=jnp.float32):
      def draw(key, index, gain):
        return models.mixed_initializer(init_names, index, gain)(key, shape, dtype)
      return (_one_matrix_per_call(draw) if one_matrix else draw)(
          key, hp["init_index"], hp["gain"])
    return init

  def init_params(hp):
    key = jax.random.fold_in(jax.random.key(hp["seed"]), 0)
    kernel_init = kernel_initializer(hp)
    if not recurrent:
      return models.init_mlp(key, input_dim, classes, max_depth, hidden, kernel_init,
                             config.sigma_b)
    params = init_cell(key, input_dim, hidden, classes, kernel_init)
    if is_text:
      embedding_key = jax.random.fold_in(jax.random.key(hp["seed"]), 2)
      params["embedding"] = models.init_embedding(embedding_key, config.vocab_size,
                                                  config.embed_dim)
    if config.constraint == "expm":
      expm = constraints.init_expm(params["recurrent"], hp["gain"])
      params["recurrent"] = {"base": expm.base, "a": expm.a}
    return params

  def weights(params, hp):
    return materialize(config, params, hp["gain"], one_matrix_per_call=one_matrix)

  def logits_fn(params, hp, x, perturbation=None):
    w = weights(params, hp)
    if recurrent:
      return apply_cell(w, x, config.unroll, perturbation)
    return models.mlp_apply(w, x, hp["depth"], config.activation, perturbation)

  def penalty(params, hp):
    """reg * the orthogonality penalty of the recurrent kernel / the active hidden kernels."""
    if not use_penalty:
      return jnp.zeros((), jnp.float32)
    g = hp["penalty_gain"]
    per_matrix = jax.vmap(regularizer, in_axes=(0, None))
    if config.model == "rnn":
      of_leaf = lambda w: regularizer(w, g)
    elif config.model == "lstm":
      of_leaf = lambda w: jnp.sum(per_matrix(models.lstm_recurrent_blocks(w), g))
    else:
      if max_depth == 1:
        return jnp.zeros((), jnp.float32)
      active = jnp.arange(1, max_depth) < hp["depth"]
      of_leaf = lambda w: jnp.sum(jnp.where(active, per_matrix(w, g), 0.0))
    return hp["reg"] * selection.selected_sum(of_leaf, weights(params, hp), KERNELS[config.model])

  def optimizer(hp):
    return make_optimizer(config, hp["lr"], hp["gain"], one_matrix_per_call=one_matrix)

  def init_member(hp):
    params = init_params(hp)
    return {"params": params, "opt_state": optimizer(hp).init(params), "hp": hp,
            "diverged": jnp.zeros((), bool), "diverged_epoch": jnp.zeros((), jnp.int32)}

  def loss_fn(params, hp, x, y):
    logits = logits_fn(params, hp, x)
    ce = jnp.mean(_cross_entropy(logits, y))
    pen = penalty(params, hp)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return ce + pen, (ce, pen, accuracy)

  def evaluate(params, hp, eval_set):
    def chunk(total, inputs):
      x, y, mask = inputs
      logits = logits_fn(params, hp, x)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return total + jnp.stack([jnp.sum(_cross_entropy(logits, y) * mask),
                                jnp.sum(correct * mask)]), None

    total, _ = jax.lax.scan(chunk, jnp.zeros(2, jnp.float32),
                            (eval_set.x, eval_set.y, eval_set.mask))
    count = jnp.sum(eval_set.mask)
    return {"loss": total[0] / count, "accuracy": total[1] / count}

  def spectra(params, hp):
    w = weights(params, hp)
    svals = lambda m: jnp.linalg.svd(m, compute_uv=False)
    if one_matrix:
      svals = _one_matrix_per_call(svals)
    stacked = jax.vmap(svals)  # (K, n, m) -> (K, min(n, m)), looped over K with one_matrix.
    if config.model == "rnn":
      return {"recurrent": svals(w["recurrent"])}
    if config.model == "lstm":
      return {"recurrent": stacked(models.lstm_recurrent_blocks(w["recurrent"]))}
    return {"input": svals(w["input"]["w"]), "hidden": stacked(w["hidden"]["w"])}

  def gradient_norms(params, hp, x, y):
    """Gradient norms on the probe batch: through time (RNN) or by layer (MLP).

    The loss is the batch mean, so example b's own gradient is B times its slice of the
    gradient of the mean; the returned norms are means over the batch of per-example norms.
    """
    batch = x.shape[0]
    if recurrent:
      eps = jnp.zeros((x.shape[1], batch, hidden), jnp.float32)
      g = jax.grad(lambda e: jnp.mean(_cross_entropy(logits_fn(params, hp, x, e), y)))(eps)
      return {"grad_norm_through_time":
              batch * jnp.mean(jnp.linalg.norm(g, axis=-1), axis=1)}
    eps = jnp.zeros((max_depth, batch, hidden), jnp.float32)
    g_params, g_eps = jax.grad(
        lambda p, e: jnp.mean(_cross_entropy(logits_fn(p, hp, x, e), y)), argnums=(0, 1))(
            params, eps)
    frob = lambda m: jnp.sqrt(jnp.sum(jnp.square(m), axis=(-2, -1)))
    weight_norms = jnp.concatenate([frob(g_params["input"]["w"])[None],
                                    frob(g_params["hidden"]["w"]),
                                    frob(g_params["readout"]["w"])[None]])
    return {"grad_norm_weights": weight_norms,
            "grad_norm_activations": batch * jnp.mean(jnp.linalg.norm(g_eps, axis=-1), axis=1)}

  def jacobian_moments(params, hp, probe_x):
    """The isometry monitor: mean and variance (with standard errors) of the squared singular
    values of the model's own Jacobian, dh_T/dh_0 from h_0 = 0 (RNN) or the hidden stack's
    input-output map (MLP), averaged over MONITOR_INPUTS probe inputs; matrix-free
    (`diagnostics`), with config.monitor_probes probes each."""
    w = weights(params, hp)
    inputs = probe_x[:MONITOR_INPUTS]
    key = jax.random.fold_in(jax.random.key(hp["seed"]), 3)
    keys = jax.random.split(key, inputs.shape[0])
    if config.model == "rnn":
      def one(x, k):
        h0 = jnp.zeros((hidden,), jnp.float32)
        return diagnostics.spectral_moments(
            lambda h: models.rnn_final_state(w, x, h, config.unroll), h0, k,
            config.monitor_probes)
    else:
      phi = activations.get_activation(config.activation).fn
      first = phi(inputs @ w["input"]["w"] + w["input"]["b"][None, :])

      def one(h, k):
        return diagnostics.spectral_moments(
            lambda h: models.mlp_hidden_stack(w, h, hp["depth"], config.activation), h, k,
            config.monitor_probes)
      inputs = first
    moments = jax.vmap(one)(inputs, keys)
    count = inputs.shape[0]
    return {"mean": jnp.mean(moments.mean), "variance": jnp.mean(moments.variance),
            "mean_se": jnp.sqrt(jnp.sum(jnp.square(moments.mean_se))) / count,
            "variance_se": jnp.sqrt(jnp.sum(jnp.square(moments.variance_se))) / count}

  monitor = config.monitor_probes > 0 and config.model in ("rnn", "mlp")

  def measure_member(state, eval_set, probe_x, probe_y):
    params, hp = state["params"], state["hp"]
    result = evaluate(params, hp, eval_set)
    result["spectra"] = spectra(params, hp)
    result.update(gradient_norms(params, hp, probe_x, probe_y))
    if monitor:
      result["jacobian"] = jacobian_moments(params, hp, probe_x)
    return result

  def member_epoch(state, initial_loss, arrays, epoch):
    hp = state["hp"]
    tx = optimizer(hp)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(hp["seed"]), 1), epoch)
    batches = data.epoch_batches(key, num_train, config.batch_size)

    def step(carry, index):
      state, sums = carry
      x = arrays.train_x[index]
      y = arrays.train_y[index]
      params, opt_state = state["params"], state["opt_state"]
      (total, (ce, pen, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, hp, x, y)
      updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      finite = jnp.isfinite(total) & _all_finite(new_params)
      take = finite & ~state["diverged"]
      newly_diverged = ~finite & ~state["diverged"]
      state = {
          "params": _tree_where(take, new_params, params),
          "opt_state": _tree_where(take, new_opt_state, opt_state),
          "hp": hp,
          "diverged": state["diverged"] | newly_diverged,
          "diverged_epoch": jnp.where(newly_diverged, epoch + 1, state["diverged_epoch"]),
      }
      sums = sums + jnp.where(take, jnp.stack([ce, accuracy, pen, 1.0]), 0.0)
      return (state, sums), None

    (state, sums), _ = jax.lax.scan(step, (state, jnp.zeros(4, jnp.float32)), batches)
    count = sums[3]
    # A finite loss that has exploded is divergence too; the member is frozen from here on.
    exploded = (count > 0) & (sums[0] / count > config.divergence_factor * initial_loss)
    newly_diverged = exploded & ~state["diverged"]
    state = {**state, "diverged": state["diverged"] | newly_diverged,
             "diverged_epoch": jnp.where(newly_diverged, epoch + 1, state["diverged_epoch"])}
    out = {"train_loss": sums[0] / count, "train_accuracy": sums[1] / count,
           "train_penalty": sums[2] / count, "steps_taken": count,
           "diverged": state["diverged"], "diverged_epoch": state["diverged_epoch"]}
    measured = measure_member(state, arrays.val, arrays.probe_x, arrays.probe_y)
    out.update({("val_" + k if k in ("loss", "accuracy") else k): v
                for k, v in measured.items()})
    return state, out

  mesh = Mesh(np.array(devices), ("members",))
  member_sharding = NamedSharding(mesh, PartitionSpec("members"))
  replicated = NamedSharding(mesh, PartitionSpec())

  def init(hparams):
    # lax.map, not vmap: init runs once, and vmapping jax.random over per-member keys costs
    # seconds of compile time on CPU (measured 2.5 s against 0.7 s for a (16, 16) normal).
    return jax.lax.map(init_member, hparams)

  def run_epoch(states, initial_loss, arrays, epoch):
    return _map_members(lambda mapped, *shared: member_epoch(*mapped, *shared))(
        (states, initial_loss), arrays, epoch)

  def measure(states, eval_set, probe_x, probe_y):
    return _map_members(measure_member)(states, eval_set, probe_x, probe_y)

  num_padded = -(-len(members) // len(devices)) * len(devices)
  return Program(
      init=jax.jit(init, in_shardings=member_sharding, out_shardings=member_sharding),
      run_epoch=jax.jit(run_epoch,
                        in_shardings=(member_sharding, member_sharding, replicated, replicated),
                        out_shardings=(member_sharding, member_sharding)),
      measure=jax.jit(measure, out_shardings=member_sharding),
      member_sharding=member_sharding, replicated=replicated, num_padded=num_padded)


# ----------------------------------------------------------------------------------------------
# Results: summaries, files, checkpoints.


def _finite_or_none(x) -> Optional[float]:
  x = float(x)
  return x if math.isfinite(x) else None


def _sv_summary(values: np.ndarray) -> dict:
  return {"mean": float(np.mean(values)), "std": float(np.std(values)),
          "min": float(np.min(values)), "max": float(np.max(values))}


def tracked_singular_values(config: TrainConfig, spectra: dict, member: int) -> np.ndarray:
  """The singular values summarised in metrics.json for one member, pooled into one vector.

  RNN: the recurrent kernel; LSTM: its four gate blocks; MLP: the input kernel and the active
  hidden kernels (layers l < depth).
  """
  if config.model in ("rnn", "lstm"):
    return np.ravel(spectra["recurrent"][member])
  depth = config.members[member].depth
  return np.concatenate([spectra["input"][member], np.ravel(spectra["hidden"][member][:depth - 1])])


def _time_indices(num_steps: int) -> np.ndarray:
  if num_steps <= MAX_JSON_TIME_STEPS:
    return np.arange(num_steps)
  return np.unique(np.round(np.linspace(0, num_steps - 1, MAX_JSON_TIME_STEPS)).astype(int))


def _record(config: TrainConfig, out: dict, i: int) -> dict:
  """One member's JSON entry for one epoch (or the initial point) from fetched outputs."""
  entry = {}
  for key in ("train_loss", "train_accuracy", "train_penalty", "val_loss", "val_accuracy"):
    if key in out:
      entry[key] = _finite_or_none(out[key][i])
  entry["singular_values"] = _sv_summary(tracked_singular_values(config, out["spectra"], i))
  if "grad_norm_through_time" in out:
    g = out["grad_norm_through_time"][i]
    entry["grad_norm_through_time"] = [_finite_or_none(v) for v in g[_time_indices(len(g))]]
  if "grad_norm_weights" in out:
    depth = config.members[i].depth
    weights = out["grad_norm_weights"][i]
    # Active layers only: the input kernel, hidden kernels 1..depth-1, the read-out.
    entry["grad_norm_by_layer"] = {
        "weights": [_finite_or_none(v) for v in np.concatenate([weights[:depth], weights[-1:]])],
        "activations": [_finite_or_none(v) for v in out["grad_norm_activations"][i][:depth]]}
  if "jacobian" in out:
    entry["jacobian"] = {k: _finite_or_none(v[i]) for k, v in out["jacobian"].items()}
  return entry


def _strip(tree, num_members: int):
  """Fetches a (padded) member-major pytree to numpy and drops the padding members."""
  return jax.tree.map(lambda x: np.asarray(x)[:num_members], jax.device_get(tree))


def _flatten_dict(d: dict, prefix: str = "") -> dict:
  flat = {}
  for k, v in d.items():
    if isinstance(v, dict):
      flat.update(_flatten_dict(v, f"{prefix}{k}/"))
    else:
      flat[f"{prefix}{k}"] = np.asarray(v)
  return flat


def _unflatten_dict(flat: dict) -> dict:
  d = {}
  for k, v in flat.items():
    node = d
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return d


def _stack_history(history: list) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *history) if history else {}


def _unstack_history(stacked: dict, num_epochs: int) -> list:
  return [jax.tree.map(lambda x: x[e], stacked) for e in range(num_epochs)]


def _config_summaries(config: TrainConfig, test: Optional[dict], diverged: np.ndarray) -> list:
  """Test accuracy per label over its seeds that did not diverge: mean and 95% t-interval
  half-width (None below two seeds), the seeds counted and the diverged ones left out."""
  if test is None:
    return []
  summaries = []
  for label, idx in _labels(config).items():
    kept = [i for i in idx if not diverged[i]]
    values = np.asarray(test["accuracy"])[kept]
    mean, half = stats.mean_ci(values[None, :], axis=1) if kept else ([np.nan], [np.nan])
    summaries.append({"label": label, "seeds": len(idx), "diverged": len(idx) - len(kept),
                      "test_accuracy_mean": _finite_or_none(mean[0]),
                      "test_accuracy_ci95": _finite_or_none(half[0])})
  return summaries


def _labels(config: TrainConfig) -> dict:
  groups = {}
  for i, m in enumerate(config.members):
    groups.setdefault(m.label, []).append(i)
  return groups


def _metrics_json(config: TrainConfig, initial: dict, history: list, test: Optional[dict],
                  epoch_seconds: list, finished: bool) -> dict:
  """metrics.json; a diverged member keeps its history but reports no test metrics."""
  diverged = (np.asarray(history[-1]["diverged"], bool) if history
              else np.zeros(len(config.members), bool))
  members = []
  for i, m in enumerate(config.members):
    tested = test is not None and not diverged[i]
    entry = {
        "config": {**dataclasses.asdict(m), "penalty_gain": m.penalty_gain},
        "status": "diverged" if diverged[i] else ("done" if finished else "running"),
        "diverged_epoch": int(history[-1]["diverged_epoch"][i]) if diverged[i] else None,
        "initial": _record(config, initial, i),
        "epochs": [{"epoch": e + 1, **_record(config, h, i)} for e, h in enumerate(history)],
        "test_loss": _finite_or_none(test["loss"][i]) if tested else None,
        "test_accuracy": _finite_or_none(test["accuracy"][i]) if tested else None,
    }
    members.append(entry)
  metrics = {"members": members, "configs": _config_summaries(config, test, diverged),
             "epoch_seconds": epoch_seconds}
  if config.model != "mlp" and "grad_norm_through_time" in initial:
    metrics["grad_norm_time_steps"] = _time_indices(
        initial["grad_norm_through_time"].shape[-1]).tolist()
  return metrics


def _save_spectra(path: str, config: TrainConfig, initial: dict, history: list) -> None:
  keep = ("spectra", "grad_norm_through_time", "grad_norm_weights", "grad_norm_activations",
          "jacobian")
  per_epoch = [{k: v for k, v in h.items() if k in keep} for h in [initial] + history]
  arrays = _flatten_dict(_stack_history(per_epoch))
  arrays["labels"] = np.array([m.label for m in config.members])
  arrays["seeds"] = np.array([m.seed for m in config.members])
  with io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


def _comparable(config_dict: dict) -> dict:
  """The config as compared on resume: all of it but the epoch count, which may grow."""
  return {k: v for k, v in config_dict.items() if k != "epochs"}


def _save_checkpoint(path: str, config: TrainConfig, states, initial: dict, history: list,
                     epoch_seconds: list) -> None:
  # Without the padding members, so a run can resume on another number of devices.
  leaves = jax.tree.leaves(_strip(states, len(config.members)))
  arrays = {f"state/{i}": x for i, x in enumerate(leaves)}
  arrays.update(_flatten_dict({"initial": initial}))
  if history:
    arrays.update(_flatten_dict({"history": _stack_history(history)}))
  arrays["epoch"] = np.array(len(history))
  arrays["epoch_seconds"] = np.array(epoch_seconds, np.float64)
  arrays["config"] = np.array(json.dumps(config.to_dict(), sort_keys=True))
  with io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def _check_checkpoint_config(path: str, config: TrainConfig) -> None:
  with np.load(path) as f:
    written = json.loads(str(f["config"]))
  # Fields added to TrainConfig since the checkpoint was written take their defaults, so older
  # runs still resume; through JSON both sides, so tuples and lists compare equal.
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
              if f.default is not dataclasses.MISSING}
  known = {f.name for f in dataclasses.fields(TrainConfig)}
  written = {**defaults, **{k: v for k, v in written.items() if k in known}}
  current = json.loads(json.dumps(config.to_dict()))
  if _comparable(json.loads(json.dumps(written))) != _comparable(current):
    raise SetupError(f"{path} was written by a different config; remove it or drop resume")


def _load_checkpoint(path: str, config: TrainConfig, states_like):
  """Reads a checkpoint into the structure (and padded member count) of `states_like`."""
  _check_checkpoint_config(path, config)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  treedef = jax.tree.structure(states_like)
  num_padded = jax.tree.leaves(states_like)[0].shape[0]

  def pad(x):
    return np.concatenate([x, np.repeat(x[-1:], num_padded - len(x), axis=0)])

  states = jax.tree.unflatten(treedef, [pad(arrays[f"state/{i}"])
                                        for i in range(treedef.num_leaves)])
  nested = _unflatten_dict({k: v for k, v in arrays.items()
                            if k.startswith(("initial/", "history/"))})
  epochs = int(arrays["epoch"])
  history = _unstack_history(nested.get("history", {}), epochs)
  return states, nested["initial"], history, list(arrays["epoch_seconds"])


class _StopRequest:
  """SIGINT/SIGTERM handler: the first signal asks to stop after this epoch, a second stops now."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __call__(self, signum, frame):
    del frame
    if self.signal is not None:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    logging.warning("%s: stopping after this epoch (send it again to stop now)", self.signal)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGINT, signal.SIGTERM):
        self._previous[s] = signal.signal(s, self)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


# The no-progress rule of `run` (module constants, so a test can shorten them): a warning when
# nothing finished for max(WATCHDOG_FACTOR x the last epoch's seconds, WATCHDOG_MIN_SECONDS).
WATCHDOG_FACTOR = 10.0
WATCHDOG_MIN_SECONDS = 300.0


class _Watchdog:
  """Warns in the log when a run stops making progress; a daemon thread that only reads clocks.

  The run calls `progress(next_step, expected_seconds)` each time it finishes something (data
  and compilation, a measurement, an epoch). When `next_step` has not finished after
  `limit(expected_seconds)` seconds, the thread logs one warning -- and another each time that
  span passes again -- with the process's CPU time since the previous warning (near zero: every
  thread idle, as in a deadlock) and the Python stack of the waiting thread. It never stops the
  run: a slow epoch is no error, and a deadlocked XLA program cannot be interrupted from Python
  anyway. Use as a context manager; the thread ends with the block.
  """

  def __init__(self, name: str):
    self._name = name
    self._owner = threading.get_ident()
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="isometry-watchdog", daemon=True)
    self.progress("loading the data, compiling and initializing", None)

  @staticmethod
  def limit(expected_seconds: Optional[float]) -> float:
    """Seconds without progress before a warning: max(WATCHDOG_FACTOR x expected_seconds,
    WATCHDOG_MIN_SECONDS), and WATCHDOG_MIN_SECONDS alone when nothing is known yet."""
    if expected_seconds is None:
      return WATCHDOG_MIN_SECONDS
    return max(WATCHDOG_FACTOR * expected_seconds, WATCHDOG_MIN_SECONDS)

  def progress(self, next_step: str, expected_seconds: Optional[float]) -> None:
    with self._lock:
      self._step, self._expected = next_step, expected_seconds
      self._since = self._window = time.monotonic()
      self._window_cpu = time.process_time()
      self._warnings = 0

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    return False

  def _watch(self):
    while not self._done.wait(min(5.0, WATCHDOG_MIN_SECONDS / 10)):
      with self._lock:
        now, cpu_now = time.monotonic(), time.process_time()
        waited = now - self._since
        if waited < (self._warnings + 1) * self.limit(self._expected):
          continue
        self._warnings += 1
        step, expected = self._step, self._expected
        # CPU over the span since the last warning (the first span includes any compilation).
        window, cpu = now - self._window, cpu_now - self._window_cpu
        self._window, self._window_cpu = now, cpu_now
      logging.warning(
          "%s: no progress for %.0f s waiting on %s (expected %s; warning after max(%g x that, "
          "%g s)); the process used %.1f s of CPU in the last %.0f s%s. Waiting in:\n%s",
          self._name, waited, step,
          (f"about {expected:.1f} s, the last epoch's time" if expected is not None
           else "unknown before the first epoch"),
          WATCHDOG_FACTOR, WATCHDOG_MIN_SECONDS, cpu, window,
          (" -- nearly idle, as in a deadlock (see benchmarks/xla_cpu_hang_repro.py)"
           if cpu < 0.05 * window else ""),
          self._stack())

  def _stack(self) -> str:
    """The waiting thread's Python stack from `_run` inward (all of it if `_run` is not on it)."""
    frame = sys._current_frames().get(self._owner)  # pylint: disable=protected-access
    if frame is None:
      return "(the thread is gone)"
    frames = traceback.extract_stack(frame)
    starts = [i for i, f in enumerate(frames) if f.name == "_run" and f.filename == __file__]
    return "".join(traceback.format_list(frames[starts[0] if starts else 0:]))


def _progress_line(config: TrainConfig, epoch: int, seconds: float, steps: int,
                   out: dict) -> str:
  """Per label, means over its seeds of train loss, val accuracy and the singular-value range."""
  parts = [f"epoch {epoch}/{config.epochs} {seconds:.1f}s "
           f"({1e3 * seconds / steps:.1f} ms/step, {len(config.members)} members)"]
  for label, idx in _labels(config).items():
    sv = [tracked_singular_values(config, out["spectra"], i) for i in idx]
    with np.errstate(all="ignore"):
      loss = np.nanmean(out["train_loss"][idx]) if np.any(np.isfinite(out["train_loss"][idx])) \
          else float("nan")
    diverged = int(np.sum(out["diverged"][idx]))
    parts.append(f"{label}: loss {loss:.4f} val_acc {np.mean(out['val_accuracy'][idx]):.4f} "
                 f"sv [{np.mean([s.min() for s in sv]):.3f}, {np.mean([s.max() for s in sv]):.3f}]"
                 + (f" diverged {diverged}/{len(idx)}" if diverged else ""))
  return " | ".join(parts)


def _held_by_a_live_run(out_dir: str) -> bool:
  """Whether a running process holds out_dir's lock (opening it read-only changes nothing)."""
  try:
    fd = os.open(os.path.join(out_dir, LOCK), os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
  except OSError:
    return True
  finally:
    os.close(fd)


def read_status(out_dir: str) -> Optional[dict]:
  """The status.json of the run in out_dir, or None where there is none.

  A run whose status says "running" while no process holds its lock was killed (SIGKILL, a
  crash, a lost machine): it is reported as "interrupted", with "killed": True, like a run
  stopped by a signal; `run(..., resume=True)` continues it from its last checkpoint.
  """
  path = os.path.join(out_dir, "status.json")
  if not os.path.isfile(path):
    return None
  status = io.read_json(path)
  if status.get("status") == "running" and not _held_by_a_live_run(out_dir):
    status = {**status, "status": "interrupted", "killed": True}
  return status


def _describe(status: Optional[dict]) -> str:
  if status is None:
    return "an earlier run's files"
  done, total = status.get("epochs_done"), status.get("epochs")
  how = " (killed: its status said running, and no process holds it)" if status.get("killed") else ""
  return f"a {status['status']} run ({done} of {total} epochs){how}"


def _check_out_dir(config: TrainConfig, out_dir: str, resume: bool, overwrite: bool) -> bool:
  """Validates out_dir before any work; True where the run continues from its checkpoint.

  Raises:
    SetupError: out_dir is a file; another process runs there; it holds a run and neither
      `resume` nor `overwrite` says what to do with it (nothing is changed then); or `resume`
      meets a checkpoint of another config.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise SetupError(f"out_dir {out_dir!r} is a file, not a folder")
  if _held_by_a_live_run(out_dir):
    raise SetupError(f"out_dir {out_dir!r} is in use: another process is training there")
  status = read_status(out_dir)
  holds_a_run = status is not None or any(
      os.path.exists(os.path.join(out_dir, name)) for name in ("metrics.json", CHECKPOINT))
  checkpoint = os.path.join(out_dir, CHECKPOINT)
  if resume and os.path.exists(checkpoint):
    _check_checkpoint_config(checkpoint, config)
    return True
  if not holds_a_run or overwrite:
    return False
  if resume:
    raise SetupError(f"out_dir {out_dir!r} holds {_describe(status)} but no {CHECKPOINT} to "
                     f"resume from: start over with --overwrite, or choose another out_dir")
  raise SetupError(f"out_dir {out_dir!r} holds {_describe(status)}: continue it with --resume, "
                   f"start over with --overwrite, or choose another out_dir")


class _RunLock:
  """Holds an exclusive flock on out_dir/.lock while a run writes there."""

  def __init__(self, out_dir: str):
    self._path = os.path.join(out_dir, LOCK)
    self._fd = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self._path), exist_ok=True)
    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self._fd)
      raise SetupError(f"out_dir {os.path.dirname(self._path)!r} is in use: another process "
                       f"is training there") from None
    return self

  def __exit__(self, *exc):
    os.close(self._fd)   # Closing the descriptor releases the lock.
    return False


def run(config: TrainConfig, out_dir: str, *, resume: bool = False, overwrite: bool = False,
        dataset=None, callback: Optional[Callable[[int, dict], bool]] = None, devices=None,
        plots: bool = True) -> dict:
  """Trains the sweep `config`, writing results to `out_dir` after every epoch.

  A folder that holds a run is never silently replaced: with neither `resume` nor `overwrite`
  the call stops before any work, changing nothing.

  Args:
    config: the sweep.
    out_dir: results folder (created).
    resume: continue from out_dir/checkpoint.npz if it exists (an interrupted run, also one
      that was killed; or a finished one whose `epochs` the config raises); the config must be
      the same but for `epochs`. Without a checkpoint the run starts afresh.
    overwrite: replace a run found in out_dir (without `resume`, or where it cannot resume).
    dataset: optional preloaded data (see `prepare_arrays`); default loads config.dataset.
    callback: called as callback(epoch, epoch_outputs) after each epoch's files are written;
      returning True stops the run as an interruption would (status "interrupted").
    devices: devices of the member mesh (default: all local devices).
    plots: write the figures of `isometry.training_plots` at the end.

  Returns:
    The final metrics.json content.

  Raises:
    SetupError: before anything is written: out_dir is a file or in use by another run, holds
      a run and neither resume nor overwrite is set, holds a checkpoint of another config;
      bad data for this config (missing or corrupt files, too few examples).

  A run that makes no progress says so in its log (`_Watchdog`): when no epoch (or the
  measurement before the first, or the test measurement after the last) has finished for
  max(WATCHDOG_FACTOR x the last epoch's time, WATCHDOG_MIN_SECONDS) seconds -- 10x and 300 s;
  300 s alone before the first epoch, which includes compilation -- it logs a warning with the
  CPU time used meanwhile and the Python stack, and again each time that span passes again.
  """
  resume = _check_out_dir(config, out_dir, resume, overwrite)
  try:
    host = prepare_arrays(config, dataset)
  except ValueError as e:
    raise SetupError(str(e)) from e
  with _RunLock(out_dir):
    if not resume:
      for name in RUN_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
          os.remove(os.path.join(out_dir, name))
    with _Watchdog(out_dir) as watchdog:
      return _train(config, out_dir, host, watchdog, resume, callback, devices, plots)


def _train(config: TrainConfig, out_dir: str, host: Arrays, watchdog: _Watchdog, resume: bool,
           callback, devices, plots: bool) -> dict:
  """The body of `run`, with out_dir checked and locked and the data on the host;
  `watchdog.progress` marks each finished step."""
  paths = {name: os.path.join(out_dir, name) for name in
           ("config.json", "status.json", "metrics.json", "spectra.npz", CHECKPOINT)}
  program = make_train(config, host, devices)
  num_members = len(config.members)
  steps = host.train_x.shape[0] // config.batch_size

  arrays = jax.device_put(host, program.replicated)
  states = program.init(_padded_hparams(config, program))

  os.makedirs(out_dir, exist_ok=True)
  io.write_json(paths["config.json"], config.to_dict())
  if resume:
    states, initial, history, epoch_seconds = _load_checkpoint(paths[CHECKPOINT], config, states)
    states = jax.device_put(states, program.member_sharding)
    logging.info("resuming %s from epoch %d", out_dir, len(history))
  else:
    watchdog.progress("the initial measurement", None)
    initial = _strip(program.measure(states, arrays.val, arrays.probe_x, arrays.probe_y),
                     num_members)
    initial["val_loss"] = initial.pop("loss")
    initial["val_accuracy"] = initial.pop("accuracy")
    history, epoch_seconds = [], []
  # The divergence rule's reference, padded like the members.
  reference = np.asarray(initial["val_loss"], np.float32)
  initial_loss = jax.device_put(
      np.concatenate([reference, np.repeat(reference[-1:], program.num_padded - num_members)]),
      program.member_sharding)

  def write(status: str, test=None, **extra):
    finished = status in ("done", "diverged")
    metrics = _metrics_json(config, initial, history, test, epoch_seconds, finished)
    io.write_json(paths["metrics.json"], metrics)
    _save_spectra(paths["spectra.npz"], config, initial, history)
    diverged = [m["config"]["label"] + f" seed {m['config']['seed']}"
                for m in metrics["members"] if m["status"] == "diverged"]
    io.write_json(paths["status.json"], {
        "status": status, "epochs_done": len(history), "epochs": config.epochs,
        "diverged_members": diverged, "num_members": num_members,
        "num_devices": len(program.member_sharding.mesh.devices.flat),
        "steps_per_epoch": steps, "epoch_seconds": epoch_seconds, **extra})
    return metrics

  status = "running"
  with _StopRequest() as stop:
    try:
      for epoch in range(len(history), config.epochs):
        watchdog.progress(f"epoch {epoch + 1}", epoch_seconds[-1] if epoch_seconds else None)
        start = time.perf_counter()
        states, out = program.run_epoch(states, initial_loss, arrays, np.int32(epoch))
        out = _strip(out, num_members)
        seconds = time.perf_counter() - start
        history.append(out)
        epoch_seconds.append(seconds)
        write("running")
        _save_checkpoint(paths[CHECKPOINT], config, states, initial, history, epoch_seconds)
        logging.info(_progress_line(config, epoch + 1, seconds, steps, out))
        if callback is not None and callback(epoch + 1, out):
          status = "interrupted"
          break
        if stop.signal is not None:
          status = "interrupted"
          break
        if np.all(out["diverged"]):
          logging.warning("every member diverged; stopping")
          break
    except KeyboardInterrupt:
      status = "interrupted"

  if status == "interrupted":
    metrics = write("interrupted")
    logging.info("interrupted after %d epochs; continue with --resume (resume=True)",
                 len(history))
  else:
    watchdog.progress("the test measurement", epoch_seconds[-1] if epoch_seconds else None)
    test = _strip(program.measure(states, arrays.test, arrays.probe_x, arrays.probe_y),
                  num_members)
    all_diverged = bool(history) and bool(np.all(history[-1]["diverged"]))
    status = "diverged" if all_diverged else "done"
    metrics = write(status, test=test)
    for summary in metrics["configs"]:
      nan_if_none = lambda x: float("nan") if x is None else x
      kept = summary["seeds"] - summary["diverged"]
      logging.info("%s: test accuracy %s%s", summary["label"],
                   stats.format_interval(nan_if_none(summary["test_accuracy_mean"]),
                                         nan_if_none(summary["test_accuracy_ci95"]), kept),
                   f"; {summary['diverged']} diverged seeds left out" if summary["diverged"]
                   else "")
  if plots:
    watchdog.progress("the plots", None)
    try:
      from isometry import training_plots  # Deferred: matplotlib takes a second to import.
      training_plots.plot_run(out_dir)
    except Exception:  # pylint: disable=broad-except
      # The results are on disk; a failing figure must not turn a finished run into a failed one.
      logging.exception("plotting %s failed", out_dir)
  return metrics
