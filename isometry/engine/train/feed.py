"""The data as a sweep's programs read it, on the host: each split shaped for the model
(sequence views for recurrent models, flat images for the MLP, token ids for text), evaluation
sets in equal chunks with a padding mask, and the fixed probe batch of the diagnostics."""
from typing import Any, NamedTuple

import numpy as np

from isometry import data
from isometry.data import text
from isometry.engine.train import sweep


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


def num_classes(config: sweep.TrainConfig) -> int:
  return text.NUM_CLASSES.get(config.dataset, sweep.NUM_CLASSES)


def prepare_arrays(config: sweep.TrainConfig, dataset=None) -> Arrays:
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
  sweep.require(len(train_x) >= config.batch_size,
         f"batch_size {config.batch_size} > {len(train_x)} training examples")
  sweep.require(
      len(dataset.val_x) > 0 and len(dataset.test_x) > 0, "empty validation or test split")
  classes = num_classes(config)
  for y in (train_y, dataset.val_y, dataset.test_y):
    sweep.require(0 <= int(np.min(y)) and int(np.max(y)) < classes,
                  f"labels must be in [0, {classes})")

  if is_text:
    def view(ids):
      ids = np.asarray(ids, np.int32)
      sweep.require(ids.ndim == 2 and 0 <= ids.min() and ids.max() < config.vocab_size,
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
