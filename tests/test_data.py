"""IDX files, dataset loading (IDX, mocked TFDS, missing data), sequence views and epochs."""
import importlib.util
import os
import socket
import time

import jax
import numpy as np
import pytest

from isometry import data
from isometry.data import images

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
  array = (np.arange(2 * 3 * 5) * 7 % 256).reshape(2, 3, 5).astype(dtype)
  path = str(tmp_path / f"a-idx3-ubyte{suffix}")
  data.write_idx(path, array)
  back = data.read_idx(path)
  assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 5)
  np.testing.assert_array_equal(back, array)
  with open(path, "rb") as f:
    assert (f.read(2) == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_big_endian(tmp_path):
  path = str(tmp_path / "labels")
  data.write_idx(path, np.array([3, 1, 4], np.uint8))
  with open(path, "rb") as f:
    # Magic 0x00000801 (ubyte, 1 dimension), size 3 as big-endian uint32, then the bytes.
    assert f.read() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_read_idx_rejects_bad_files(tmp_path):
  path = str(tmp_path / "bad")
  with open(path, "wb") as f:
    f.write(b"not an idx file")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(path)
  with open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))  # Says 5 bytes, holds 2.
  with pytest.raises(ValueError, match="header says"):
    data.read_idx(path)
  with pytest.raises(ValueError, match="dtype"):
    data.write_idx(path, np.ones(3, np.int64))


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION), reason="Debian dataset-fashion-mnist absent")
def test_reads_debian_fashion_mnist():
  train_y = data.read_idx(os.path.join(DEBIAN_FASHION, "train-labels-idx1-ubyte.gz"))
  test_x = data.read_idx(os.path.join(DEBIAN_FASHION, "t10k-images-idx3-ubyte.gz"))
  assert train_y.shape == (60000,) and test_x.shape == (10000, 28, 28)
  # Fashion-MNIST is balanced: 6000 training images per class.
  np.testing.assert_array_equal(np.bincount(train_y), np.full(10, 6000))
  ds = data.load_dataset("fashion_mnist", data_dir=DEBIAN_FASHION)
  assert ds.train_x.shape == (48000, 28, 28) and ds.val_x.shape == (12000, 28, 28)
  assert ds.test_x.shape == (10000, 28, 28) and ds.test_y.shape == (10000,)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
  assert set(np.unique(ds.test_y)) == set(range(10))


def _write_tiny_idx(folder, n_train=10, n_test=4, gz=True):
  rng = np.random.default_rng(0)
  suffix = ".gz" if gz else ""
  arrays = {
      "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_y": (np.arange(n_train) % 10).astype(np.uint8),
      "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_y": (np.arange(n_test) % 10).astype(np.uint8),
  }
  for key, array in arrays.items():
    data.write_idx(os.path.join(folder, data.IDX_FILES[key] + suffix), array)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_from_tiny_idx_dir(tmp_path, gz):
  arrays = _write_tiny_idx(str(tmp_path), gz=gz)
  ds = data.load_dataset("mnist", data_dir=str(tmp_path), val_size=3, split_seed=1)
  assert ds.train_x.shape == (7, 28, 28) and ds.val_x.shape == (3, 28, 28)
  np.testing.assert_array_equal(ds.test_x, arrays["test_x"].astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
  # Train and validation partition the original training set, labels following their images.
  merged_x = np.concatenate([ds.train_x, ds.val_x])
  merged_y = np.concatenate([ds.train_y, ds.val_y])
  order = np.argsort(merged_y)  # labels 0..9 are distinct among the 10 examples
  np.testing.assert_array_equal(merged_x[order], arrays["train_x"].astype(np.float32) / 255)
  # The same seed gives the same split; another seed a different one.
  again = data.load_dataset("mnist", data_dir=str(tmp_path), val_size=3, split_seed=1)
  np.testing.assert_array_equal(again.val_y, ds.val_y)
  other = data.load_dataset("mnist", data_dir=str(tmp_path), val_size=3, split_seed=2)
  assert not np.array_equal(other.val_y, ds.val_y)
  # split_seed=None: the last val_size examples, as Keras's validation_split.
  last = data.load_dataset("mnist", data_dir=str(tmp_path), val_size=3, split_seed=None)
  np.testing.assert_array_equal(last.val_y, [7, 8, 9])


def test_bad_val_size(tmp_path):
  _write_tiny_idx(str(tmp_path))
  with pytest.raises(ValueError, match="val_size"):
    data.load_dataset("mnist", data_dir=str(tmp_path), val_size=10)


def test_load_dataset_with_mocked_tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset("mnist", val_size=4)
  assert ds.train_x.shape == (8, 28, 28) and ds.val_x.shape == (4, 28, 28)
  assert ds.test_x.shape == (12, 28, 28)
  assert ds.train_x.dtype == np.float32 and ds.test_y.dtype == np.int32
  assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
  assert set(np.unique(np.concatenate([ds.train_y, ds.test_y]))) <= set(range(10))
  with tfds.testing.mock_data(num_examples=3):
    cifar = data.load_dataset("cifar10", val_size=1)
  assert cifar.train_x.shape == (2, 32, 32, 3)


def test_missing_data_message(tmp_path):
  # An existing folder with neither IDX files nor a TFDS dataset: no download, a message that
  # says what to do.
  with pytest.raises(data.DataUnavailableError, match="--data_dir") as info:
    data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  message = str(info.value)
  assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
  assert "/usr/share/datasets/fashion-mnist" in message and "tensorflow-cpu" in message
  assert isinstance(info.value, ValueError)
  with pytest.raises(data.DataUnavailableError, match="no such directory"):
    data.load_dataset("mnist", data_dir=str(tmp_path / "absent"))
  with pytest.raises(data.DataUnavailableError, match="no TFDS folder cifar10/"):
    data.load_dataset("cifar10", data_dir=str(tmp_path))


def test_offline_is_detected_at_once(tmp_path, monkeypatch):
  # Not prepared in data_dir, downloads allowed, but the download host is out of reach: the
  # helpful message comes within seconds instead of after TFDS's minutes of retries.
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(images, "can_download", lambda *args, **kwargs: False)
  start = time.perf_counter()
  with pytest.raises(data.DataUnavailableError, match="cannot reach") as info:
    data.load_dataset("mnist", data_dir=str(tmp_path), download=True)
  assert time.perf_counter() - start < 30
  assert "--data_dir" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="with TensorFlow installed TFDS could really download")
def test_tfds_failure_becomes_data_unavailable(tmp_path, monkeypatch):
  monkeypatch.setattr(images, "can_download", lambda *args, **kwargs: True)
  with pytest.raises(data.DataUnavailableError, match="TFDS failed"):
    data.load_dataset("mnist", data_dir=str(tmp_path), download=True)


def test_download_probe_on_a_closed_local_port():
  # Nothing listens on this port of the loopback address: the probe says no, fast.
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
  start = time.perf_counter()
  assert not data.can_download(("127.0.0.1", port), timeout=2.0)
  assert time.perf_counter() - start < 5


@pytest.mark.parametrize("val_size, expected", [(0.2, 12), (0.25, 15), (12, 12), (12.0, 12),
                                                (0, 0)])
def test_validation_count_takes_fractions_and_counts(val_size, expected):
  assert data.validation_count(val_size, 60) == expected


@pytest.mark.parametrize("val_size, match", [(1.5, "whole number"), (-0.1, "fraction"),
                                             (60, "leaving none"), (0.999, "leaving none")])
def test_validation_count_rejects(val_size, match):
  with pytest.raises(ValueError, match=match):
    data.validation_count(val_size, 60)


def _corrupt_copies(tmp_path):
  """A tiny gzipped IDX folder whose files the tests then spoil."""
  folder = tmp_path / "idx"
  folder.mkdir()
  _write_tiny_idx(str(folder), n_test=5)
  return folder


def test_truncated_gzip_is_one_clear_error_naming_the_file(tmp_path):
  folder = _corrupt_copies(tmp_path)
  path = folder / "train-images-idx3-ubyte.gz"
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is a truncated or corrupt"):
    data.load_dataset("mnist", data_dir=str(folder))
  path.write_bytes(raw[:10] + b"\x00" * (len(raw) - 10))
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is a truncated or corrupt"):
    data.load_dataset("mnist", data_dir=str(folder))


def test_inconsistent_idx_files_name_the_file(tmp_path):
  folder = _corrupt_copies(tmp_path)
  labels = str(folder / "t10k-labels-idx1-ubyte.gz")
  data.write_idx(labels, np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz has 5 images but .*"
                                       "t10k-labels-idx1-ubyte.gz has 3 labels"):
    data.load_dataset("mnist", data_dir=str(folder))
  data.write_idx(labels, np.full(5, 12, np.uint8))
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz has labels outside 0..9"):
    data.load_dataset("mnist", data_dir=str(folder))
  data.write_idx(str(folder / "t10k-images-idx3-ubyte.gz"), np.zeros((5, 4), np.uint8))
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz holds an array of shape"):
    data.load_dataset("mnist", data_dir=str(folder))


def test_unknown_dataset():
  with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
    data.load_dataset("svhn")


def test_sequence_views_shapes_and_row_reconstruction():
  images = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
  rows = data.sequence_view(images, "row")
  assert rows.shape == (3, 28, 28) and rows.dtype == np.float32
  np.testing.assert_array_equal(rows, images)  # step t is row t
  pixels = data.sequence_view(images, "pixel")
  assert pixels.shape == (3, 784, 1)
  np.testing.assert_array_equal(pixels[:, 28 * 5 + 7, 0], images[:, 5, 7])  # raster order
  cifar = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
  cifar_rows = data.sequence_view(cifar, "row")
  assert cifar_rows.shape == (2, 32, 96)
  np.testing.assert_array_equal(cifar_rows.reshape(2, 32, 32, 3), cifar)
  assert data.sequence_view(cifar, "pixel").shape == (2, 1024, 3)
  # jax arrays work too (a train step may build views inside jit).
  jax_rows = jax.jit(lambda x: data.sequence_view(x, "permuted"))(images)
  np.testing.assert_array_equal(jax_rows, data.sequence_view(images, "permuted"))


def test_permuted_is_a_fixed_permutation():
  images = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
  a = data.sequence_view(images, "permuted", permutation_seed=3)
  b = data.sequence_view(images, "permuted", permutation_seed=3)
  c = data.sequence_view(images, "permuted", permutation_seed=4)
  assert a.shape == (4, 784, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # The same permutation for every image, and a bijection of pixels.
  perm = data.pixel_permutation(784, 3)
  np.testing.assert_array_equal(np.sort(perm), np.arange(784))
  np.testing.assert_array_equal(a[:, :, 0], images.reshape(4, 784)[:, perm])
  assert not np.array_equal(perm, np.arange(784))


def test_sequence_view_errors():
  with pytest.raises(ValueError, match="row, pixel, permuted"):
    data.sequence_view(np.zeros((1, 28, 28)), "column")
  with pytest.raises(ValueError, match="images must be"):
    data.sequence_view(np.zeros((28, 28)), "row")


def test_epoch_batches_is_a_permutation_of_a_subset(key):
  batches = jax.jit(data.epoch_batches, static_argnums=(1, 2))(key, 103, 10)
  assert batches.shape == (10, 10) and batches.dtype == np.int32
  flat = np.asarray(batches).ravel()
  assert len(np.unique(flat)) == 100  # no repeats
  assert flat.min() >= 0 and flat.max() < 103
  assert not np.array_equal(flat, np.arange(100))  # shuffled
  other = data.epoch_batches(jax.random.fold_in(key, 1), 103, 10)
  assert not np.array_equal(np.asarray(other), np.asarray(batches))
  with pytest.raises(ValueError, match="batch_size"):
    data.epoch_batches(key, 5, 6)
