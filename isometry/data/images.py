"""Image classification data as numpy arrays, sequence views of images, and shuffled epochs.

Sources, tried in this order by `load_dataset`:
  1. IDX files (the original MNIST / Fashion-MNIST distribution format) in `data_dir`: the four
     files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
     t10k-labels-idx1-ubyte, each plain or gzipped (.gz). Fully offline; Debian's
     dataset-fashion-mnist package installs them in /usr/share/datasets/fashion-mnist.
  2. TFDS through `tfds.data_source` (random access over ArrayRecord files, read without
     TensorFlow). Preparing a dataset for the first time (download and conversion) needs
     TensorFlow and a network; reading a prepared one needs neither.
When neither works, `DataUnavailableError` says what to do.

Splits: TFDS's / IDX's train (60000 for MNIST-like, 50000 for CIFAR-10) is divided into train and
validation. `val_size` is a fraction of the training examples (0.2 by default: the seed
notebook's 48k / 12k split of MNIST) or a count (an integer >= 1); the validation examples are a
random subset drawn with numpy's default_rng(split_seed), or with split_seed=None the LAST ones,
as Keras's `validation_split` takes them. The test split is kept.
"""
import gzip
import os
import socket
import zlib
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

NAMES = ("mnist", "fashion_mnist", "cifar10")
TASKS = ("row", "pixel", "permuted")
# Where a Debian package installs a dataset's IDX files (dataset-fashion-mnist).
OFFLINE_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> big-endian numpy dtype (LeCun & Cortes, the MNIST database page).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataUnavailableError(ValueError):
  """The requested dataset cannot be read here; the message says how to provide it."""


class Dataset(NamedTuple):
  """A split dataset. Images float32 in [0, 1], (N, H, W) or (N, H, W, C); labels int32 (N,)."""
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file, plain or gzip-compressed (told apart by the gzip magic number).

  IDX: two zero bytes, a type byte, the number of dimensions d, then d big-endian uint32 sizes
  and the data in C order, big-endian.

  Args:
    path: file path.

  Returns:
    The array, in native byte order, with the stored dtype (uint8 for MNIST).

  Raises:
    ValueError: if the file is not a well-formed IDX file.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise ValueError(f"{path} is a truncated or corrupt gzip file ({e})") from None
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) != expected:
    raise ValueError(f"{path} is truncated or corrupt: its IDX header says shape {shape} of "
                     f"{dtype} ({expected} bytes with the header), the file has {len(raw)}")
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes `array` as an IDX file, gzip-compressed if `path` ends in .gz.

  Raises:
    ValueError: for a dtype IDX cannot store (it has uint8, int8, int16, int32, float32,
      float64) or more than 255 dimensions.
  """
  array = np.asarray(array)
  codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
  native = array.dtype.newbyteorder("=")
  if native not in codes:
    raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of "
                     f"{', '.join(str(d) for d in codes)}")
  if array.ndim > 255:
    raise ValueError(f"IDX stores at most 255 dimensions, got {array.ndim}")
  big = array.astype(native.newbyteorder(">"))
  raw = (bytes([0, 0, codes[native], array.ndim]) +
         np.asarray(array.shape, dtype=">u4").tobytes() + big.tobytes(order="C"))
  if path.endswith(".gz"):
    raw = gzip.compress(raw)
  with open(path, "wb") as f:
    f.write(raw)


def _find_idx_files(data_dir: str) -> Optional[dict]:
  """Paths of the four IDX files in data_dir (plain preferred over .gz); None if one is missing."""
  found = {}
  for key, stem in IDX_FILES.items():
    for candidate in (stem, stem + ".gz"):
      path = os.path.join(data_dir, candidate)
      if os.path.isfile(path):
        found[key] = path
        break
    else:
      return None
  return found


def _unavailable_message(name: str, data_dir: Optional[str], reason: str) -> str:
  where = f"data_dir={data_dir!r}" if data_dir else "the default TFDS directory"
  tfds_hint = (f"prepare it with TFDS once: install tensorflow-cpu (pip install 'isometry[data]') "
               f"and run on a connected machine with data_dir unset (or download=True), so TFDS "
               f"downloads {name!r} and writes it in array_record format; that directory is then "
               f"readable offline without TensorFlow")
  if name == "cifar10":
    return f"dataset {name!r} is not available from {where}: {reason}. To fix: {tfds_hint}."
  files = ", ".join(IDX_FILES.values())
  debian = (" (e.g. /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)"
            if name == "fashion_mnist" else "")
  return (f"dataset {name!r} is not available from {where}: {reason}. To fix, either pass "
          f"data_dir (--data_dir=DIR in the scripts) holding the four IDX files {files} "
          f"(plain or .gz){debian}; or {tfds_hint}.")


def _load_idx(files: dict) -> tuple:
  """(train_x, train_y, test_x, test_y) from the four IDX files; ValueError naming the file."""
  arrays = {key: read_idx(path) for key, path in files.items()}
  for split in ("train", "test"):
    x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
    x_path, y_path = files[f"{split}_x"], files[f"{split}_y"]
    if x.ndim != 3:
      raise ValueError(f"{x_path} holds an array of shape {x.shape}, not (N, rows, columns) "
                       f"images")
    if y.ndim != 1:
      raise ValueError(f"{y_path} holds an array of shape {y.shape}, not (N,) labels")
    if len(x) != len(y):
      raise ValueError(f"{x_path} has {len(x)} images but {y_path} has {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(f"{y_path} has labels outside 0..9 (min {y.min()}, max {y.max()})")
  return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _source_to_numpy(source) -> tuple:
  # Item by item: tfds.testing.mock_data's batched __getitems__ is broken in tfds 4.9.10.
  images, labels = [], []
  for example in source:
    images.append(example["image"])
    labels.append(example["label"])
  if not images:
    raise DataUnavailableError("the TFDS split is empty")
  return np.stack(images), np.asarray(labels)


# TFDS looks for a prepared copy on Google Cloud Storage before it downloads, and retries each
# request with back-off: offline, that took 3.5 minutes before it gave up. One connection
# attempt to that host, with this timeout, tells within seconds whether downloading can work.
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_TIMEOUT = 5.0


def can_download(address=DOWNLOAD_PROBE, timeout: float = DOWNLOAD_PROBE_TIMEOUT) -> bool:
  """Whether this machine can open a connection to TFDS's download host (or uses a proxy,
  which this probe cannot judge)."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True
  try:
    socket.create_connection(address, timeout=timeout).close()
    return True
  except OSError:
    return False


def tfds_splits(name: str, data_dir: Optional[str], download: bool, unavailable) -> list:
  """[train, test] `tfds.data_source`s of a TFDS dataset, prepared first if allowed and needed.

  A dataset already prepared in data_dir (or TFDS's default directory) is read offline. One that
  is not is downloaded only where `download` is set and `can_download()`; otherwise, and when
  TFDS fails in any other way, DataUnavailableError(unavailable(reason)) is raised at once.
  """
  import tensorflow_datasets as tfds  # Deferred: importing TFDS takes seconds.
  try:
    return tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
  # Not prepared here (or unreadable: a TFRecord copy where ArrayRecord is needed, ...).
  except Exception as e:  # pylint: disable=broad-except
    not_prepared = e
  if not download:
    raise DataUnavailableError(unavailable(
        f"TFDS failed with {type(not_prepared).__name__}: {not_prepared}")) from not_prepared
  if not can_download():
    host, port = DOWNLOAD_PROBE
    raise DataUnavailableError(unavailable(
        f"it is not prepared there, and this machine cannot reach TFDS's download host "
        f"{host}:{port} (offline?)"))
  try:
    return tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=True)
  # TFDS fails in many ways here (missing TensorFlow for preparation, a failed download,
  # missing optional modules); all mean "not available".
  except Exception as e:  # pylint: disable=broad-except
    raise DataUnavailableError(unavailable(f"TFDS failed with {type(e).__name__}: {e}")) from e


def _load_tfds(name: str, data_dir: Optional[str], download: bool) -> tuple:
  unavailable = lambda reason: _unavailable_message(name, data_dir, reason)
  train, test = tfds_splits(name, data_dir, download, unavailable)
  try:
    train_x, train_y = _source_to_numpy(train)
    test_x, test_y = _source_to_numpy(test)
  except DataUnavailableError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataUnavailableError(unavailable(f"TFDS failed with {type(e).__name__}: {e}")) from e
  if train_x.ndim == 4 and train_x.shape[-1] == 1:
    train_x, test_x = train_x[..., 0], test_x[..., 0]
  return train_x, train_y, test_x, test_y


def validation_count(val_size: Union[int, float], num_examples: int) -> int:
  """How many of `num_examples` training examples go to validation.

  Args:
    val_size: a fraction in [0, 1), or a count: an integer >= 1 (12000 and 12000.0 alike).
    num_examples: the training split's size.

  Raises:
    ValueError: a negative or non-integer count, or one that leaves no training example.
  """
  if 0 <= val_size < 1:
    count = int(round(val_size * num_examples))
  elif val_size >= 1 and float(val_size).is_integer():
    count = int(val_size)
  else:
    raise ValueError(f"val_size must be a fraction in [0, 1) or a whole number of examples, "
                     f"got {val_size}")
  if count >= num_examples:
    raise ValueError(f"val_size {val_size} takes {count} of the {num_examples} training "
                     f"examples, leaving none to train on")
  return count


def split_validation(x, y, val_size: Union[int, float], split_seed: Optional[int]):
  """(train_x, train_y, val_x, val_y), both in original order.

  Args:
    x, y: the training split.
    val_size: fraction or count of the examples that go to validation (`validation_count`).
    split_seed: seed of the random validation subset; None takes the last ones.
  """
  n = len(x)
  count = validation_count(val_size, n)
  if split_seed is None:
    order = np.arange(n)
  else:
    order = np.random.default_rng(split_seed).permutation(n)
  train_idx, val_idx = np.sort(order[:n - count]), np.sort(order[n - count:])
  return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def load_dataset(name: str, data_dir: Optional[str] = None, val_size: float = 0.2,
                 split_seed: Optional[int] = 0, download: Optional[bool] = None) -> Dataset:
  """Loads mnist, fashion_mnist or cifar10 as numpy arrays with a validation split.

  Args:
    name: one of NAMES.
    data_dir: a folder with the four IDX files (mnist / fashion_mnist; taken to be the dataset
      `name`, which cannot be checked), or a TFDS data directory. None: TFDS's default.
    val_size: fraction (in [0, 1)) or number (>= 1) of the training examples moved to
      validation.
    split_seed: seed of the random validation subset; None takes the last val_size examples
      (Keras's validation_split). Train and validation keep the original order.
    download: let TFDS download and prepare the dataset. Default: True when data_dir is None,
      False for an explicit data_dir (which is then read offline).

  Returns:
    Dataset with images float32 in [0, 1], (N, 28, 28) for mnist / fashion_mnist and
    (N, 32, 32, 3) for cifar10, and labels int32.

  Raises:
    ValueError: unknown name or bad val_size.
    DataUnavailableError: the data cannot be found or prepared here (the message says what to do).
  """
  if name not in NAMES:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
  if download is None:
    download = data_dir is None
  files = None
  if data_dir is not None:
    if not os.path.isdir(data_dir):
      raise DataUnavailableError(_unavailable_message(name, data_dir, "no such directory"))
    files = None if name == "cifar10" else _find_idx_files(data_dir)
    if files is None and not download and not os.path.isdir(os.path.join(data_dir, name)):
      reason = (f"it holds no TFDS folder {name}/" if name == "cifar10" else
                f"it holds neither the four IDX files nor a TFDS folder {name}/")
      raise DataUnavailableError(_unavailable_message(name, data_dir, reason))
  if files is not None:
    train_x, train_y, test_x, test_y = _load_idx(files)
  else:
    train_x, train_y, test_x, test_y = _load_tfds(name, data_dir, download)
  to_float = lambda x: x.astype(np.float32) / np.float32(255)
  train_x, train_y, val_x, val_y = split_validation(
      to_float(train_x), train_y.astype(np.int32), val_size, split_seed)
  return Dataset(train_x, train_y, val_x, val_y, to_float(test_x), test_y.astype(np.int32))


def synthetic_dataset(num_train: int = 64, num_val: int = 16, num_test: int = 16,
                      side: int = 28, seed: int = 0, learnable: bool = False) -> Dataset:
  """Tiny image sets for smoke runs (`--quick`) and tests, no files needed.

  learnable=False: uniform [0, 1) pixels with random labels 0..9 (nothing to learn; exercises a
  pipeline end to end and has known pixel statistics, E x^2 = 1/3).
  learnable=True: noise in [0, 0.3) with row y % side brightened by an amount that grows with
  y // side, so the label is readable (by an RNN, at the row's time step).
  """
  rng = np.random.default_rng(seed)

  def split(n):
    if not learnable:
      return (rng.random((n, side, side), dtype=np.float32),
              rng.integers(0, 10, n).astype(np.int32))
    y = rng.integers(0, 10, n).astype(np.int32)
    x = 0.3 * rng.random((n, side, side), dtype=np.float32)
    x[np.arange(n), y % side, :] += 0.7 * (1 + y[:, None] // side) / 2
    return x, y

  return Dataset(*split(num_train), *split(num_val), *split(num_test))


def resolve_data_dir(name: str, data_dir: Optional[str]) -> Optional[str]:
  """data_dir if given; else this machine's offline copy of `name` (OFFLINE_DIRS) if present;
  else None (TFDS's default directory, downloading when connected)."""
  if data_dir is not None:
    return data_dir
  offline = OFFLINE_DIRS.get(name)
  return offline if offline is not None and os.path.isdir(offline) else None


def sequence_view(images, task: str, permutation_seed: int = 0):
  """Reads images as sequences for an RNN.

  Args:
    images: (N, H, W) or (N, H, W, C) numpy or jax array.
    task: "row": one row per step, (N, H, W * C) (28 x 28 for MNIST, 32 x 96 for CIFAR-10);
      "pixel": one pixel per step in raster order, (N, H * W, C) (784 x 1 for MNIST);
      "permuted": "pixel" with the pixel order shuffled by a fixed permutation drawn from
      numpy's default_rng(permutation_seed), the same for every image (Le et al. 2015's pMNIST).
    permutation_seed: seed of the "permuted" order.

  Returns:
    float32 array (N, T, D) of the same kind (numpy or jax) as `images`.

  Raises:
    ValueError: unknown task or images of the wrong rank.
  """
  if task not in TASKS:
    raise ValueError(f"unknown sequence task {task!r}; choose one of {', '.join(TASKS)}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
  n, h, w, c = images.shape
  images = images.astype(np.float32)
  if task == "row":
    return images.reshape(n, h, w * c)
  pixels = images.reshape(n, h * w, c)
  if task == "permuted":
    pixels = pixels[:, pixel_permutation(h * w, permutation_seed)]
  return pixels


def pixel_permutation(num_pixels: int, seed: int = 0) -> np.ndarray:
  """The fixed pixel order of the "permuted" task: default_rng(seed).permutation(num_pixels)."""
  return np.random.default_rng(seed).permutation(num_pixels)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Indices of one shuffled epoch, the last incomplete batch dropped.

  Pure and jit-compatible (num_examples and batch_size are static shapes): a train loop can
  `lax.scan` over the rows.

  Args:
    key: PRNG key for this epoch (e.g. fold_in(key, epoch)).
    num_examples: dataset size.
    batch_size: examples per batch, 1 <= batch_size <= num_examples.

  Returns:
    int32 array (num_examples // batch_size, batch_size) of distinct indices.
  """
  if not 1 <= batch_size <= num_examples:
    raise ValueError(f"batch_size must be in [1, {num_examples}], got {batch_size}")
  num_batches = num_examples // batch_size
  order = jax.random.permutation(key, num_examples)
  return order[:num_batches * batch_size].reshape(num_batches, batch_size).astype(jnp.int32)
