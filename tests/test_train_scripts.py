"""The command-line pipelines: scripts/train_rnn.py in-process on tfds.testing.mock_data (flax's
examples/mnist/train_test.py pattern), scripts/train_mlp.py in a subprocess on IDX files, and
bad flags (exit status 2, one line on stderr, nothing written).

Only train_rnn.py is imported here: both scripts define flags with the same names in absl's
global FLAGS, so the second one runs in a subprocess.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from isometry import data
from isometry.results import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")


def _import_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def train_rnn():
  return _import_script("train_rnn")


def _run_main(module, argv):
  argv = [module.__file__] + argv
  module.FLAGS(argv)
  try:
    module.main(argv[:1])
  finally:
    module.FLAGS.unparse_flags()


@pytest.mark.slow
def test_train_rnn_pipeline_on_mock_data(train_rnn, tmp_path):
  out = tmp_path / "run"
  # mock_data gives num_examples random 28 x 28 images per split: 40 train, 8 of them for
  # validation; configs2 with 1 seed is 6 members in one program.
  with tfds.testing.mock_data(num_examples=40):
    _run_main(train_rnn, ["--preset=configs2", "--seeds=1", "--epochs=1", "--hidden=8",
                          "--batch_size=16", "--val_size=8", "--unroll=1", f"--out_dir={out}"])
  status = io.read_json(out / "status.json")
  assert status["status"] == "done" and status["epochs_done"] == 1
  config = io.read_json(out / "config.json")
  assert config["preset"] == "configs2" and config["regularizer"] == "notebook_so"
  assert config["dataset"] == "mnist" and config["task"] == "row"
  assert len(config["members"]) == 6
  metrics = io.read_json(out / "metrics.json")
  assert [m["config"]["label"] for m in metrics["members"]] == [
      "Orthogonal_Gain1.025_adj_Reg1", "Orthogonal_Gain1.025_adj_Reg0.5",
      "Orthogonal_Gain1.025_Reg1", "Orthogonal_Gain1.025_Reg0.5", "Orthogonal_NoReg",
      "NoOrthogonal"]
  for member in metrics["members"]:
    assert set(member) >= {"config", "status", "epochs", "test_accuracy"}
    assert member["status"] == "done"
    (epoch,) = member["epochs"]
    assert set(epoch) >= {"train_loss", "val_loss", "val_accuracy", "singular_values",
                          "grad_norm_through_time"}
    assert len(epoch["grad_norm_through_time"]) == 28
    assert 0 <= member["test_accuracy"] <= 1
  for name in ("spectra.npz", "checkpoint.npz", "singular_values.png", "curves.png",
               "gradients.png", "monitor.png"):   # the isometry monitor is on by default
    assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_train_rnn_with_riemannian_adam_and_the_monitor(train_rnn, tmp_path):
  """--constraint=riemannian_adam replaces Adam for the recurrent kernel: it stays on g O(n)
  (polar retraction of an 8 x 8 kernel in float32: within 1e-5 of g) while the net trains; the
  monitor's moments are recorded per epoch and drawn."""
  out = tmp_path / "radam"
  with tfds.testing.mock_data(num_examples=40):
    _run_main(train_rnn, ["--constraint=riemannian_adam", "--gains=1.1", "--reg_strengths=0",
                          "--seeds=2", "--epochs=2", "--hidden=8", "--batch_size=16",
                          "--val_size=8", "--unroll=1", "--lr=0.01", "--monitor_probes=4",
                          f"--out_dir={out}"])
  assert io.read_json(out / "config.json")["constraint"] == "riemannian_adam"
  members = io.read_json(out / "metrics.json")["members"]
  assert len(members) == 2
  # Every singular value of the kernel at init and after each epoch (3, members, 8): g.
  recurrent = np.load(out / "spectra.npz")["spectra/recurrent"]
  assert recurrent.shape == (3, 2, 8)
  np.testing.assert_allclose(recurrent, 1.1, atol=1e-5)
  for member in members:
    assert member["status"] == "done"
    for entry in [member["initial"]] + member["epochs"]:
      jacobian = entry["jacobian"]
      assert jacobian["mean"] > 0 and jacobian["variance"] >= 0 and jacobian["mean_se"] >= 0
    assert member["epochs"][-1]["train_loss"] != member["epochs"][0]["train_loss"]
  assert (out / "monitor.png").stat().st_size > 0


def _write_idx_dataset(folder, n_train=60, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    data.write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
    data.write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def _script(name, *args, **environ):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **environ)
  return subprocess.run([sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *args],
                        capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_train_mlp_pipeline_on_idx_files(tmp_path):
  _write_idx_dataset(str(tmp_path))
  out = tmp_path / "run"
  result = _script("train_mlp", f"--data_dir={tmp_path}", "--val_size=12", "--depths=1,3",
                   "--inits=orthogonal,gaussian", "--width=8", "--batch_size=16", "--epochs=1",
                   "--monitor_probes=0", f"--out_dir={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert io.read_json(out / "status.json")["status"] == "done"
  metrics = io.read_json(out / "metrics.json")
  assert sorted((m["config"]["init"], m["config"]["depth"]) for m in metrics["members"]) == [
      ("gaussian", 1), ("gaussian", 3), ("orthogonal", 1), ("orthogonal", 3)]
  assert (out / "singular_values.png").stat().st_size > 0


@pytest.mark.parametrize("script, args, message", [
    ("train_rnn", ["--hidden=0"], "--hidden"),
    ("train_rnn", ["--gains=1,-1"], "--gains must be > 0"),
    ("train_rnn", ["--task=diagonal"], "--task"),
    ("train_rnn", ["--cell=lstm", "--constraint=cayley"], "rnn only"),
    ("train_rnn", ["--preset=configs2", "--gains=1.1"], "--gains"),
    ("train_rnn", ["--data_dir={tmp}"], "IDX"),
    ("train_mlp", ["--depths=2,zero"], "--depths"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, script, args, message):
  out = tmp_path / "out"
  args = [a.format(tmp=tmp_path) for a in args]
  result = _script(script, *args, f"--out_dir={out}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert not out.exists()


def _member_numbers(metrics):
  """Every member's metrics as canonical text (epoch timings live outside the members)."""
  return json.dumps(metrics["members"], sort_keys=True)


@pytest.mark.slow
def test_same_flags_and_seed_give_identical_metrics_in_two_processes(tmp_path):
  """Run twice from scratch in separate processes (fresh compiles): bitwise-equal metrics.

  Both runs use XLA's default optimizing pipeline (the rest of the suite turns it off, see
  tests/conftest.py), so the programs a user runs are trained end to end here.

  The projection constraint runs here end to end as well, so a full training run keeps the
  recurrent kernel on g O(n) (its singular values are recorded every epoch).
  """
  _write_idx_dataset(str(tmp_path))
  runs = []
  for name in ("first", "second"):
    out = tmp_path / name
    result = _script("train_rnn", f"--data_dir={tmp_path}", "--val_size=12", "--hidden=8",
                     "--gains=1.1", "--reg_strengths=0", "--constraint=projection", "--seeds=2",
                     "--lr=0.01", "--batch_size=16", "--epochs=2", "--unroll=1",
                     "--monitor_probes=0", f"--out_dir={out}",
                     JAX_DISABLE_MOST_OPTIMIZATIONS="0")
    assert result.returncode == 0, result.stderr[-3000:]
    runs.append(io.read_json(out / "metrics.json"))
  assert _member_numbers(runs[0]) == _member_numbers(runs[1])
  for member in runs[0]["members"]:
    assert member["status"] == "done"
    for epoch in member["epochs"]:
      sv = epoch["singular_values"]
      # float32 polar decomposition of an 8 x 8 kernel: singular values within 1e-5 of g.
      assert abs(sv["min"] - 1.1) < 1e-5 and abs(sv["max"] - 1.1) < 1e-5
    # It trained: the loss moved (lr 0.01, 6 Adam steps per epoch).
    assert member["epochs"][-1]["train_loss"] != member["epochs"][0]["train_loss"]


@pytest.mark.slow
def test_train_lstm_on_mock_imdb_reviews(train_rnn, tmp_path):
  """The seed's second experiment's pipeline: token ids -> learned embedding -> LSTM -> 2 classes."""
  out = tmp_path / "imdb"
  with tfds.testing.mock_data(num_examples=40):
    _run_main(train_rnn, ["--dataset=imdb_reviews", "--cell=lstm", "--hidden=8",
                          "--vocab_size=50", "--max_len=12", "--embed_dim=4", "--val_size=8",
                          "--batch_size=16", "--epochs=1", "--unroll=1", "--lr=0.01",
                          f"--out_dir={out}"])
  assert io.read_json(out / "status.json")["status"] == "done"
  config = io.read_json(out / "config.json")
  assert config["dataset"] == "imdb_reviews" and config["model"] == "lstm"
  (member,) = io.read_json(out / "metrics.json")["members"]
  (epoch,) = member["epochs"]
  assert len(epoch["grad_norm_through_time"]) == 12
  assert 0 <= member["test_accuracy"] <= 1
  checkpoint = np.load(out / "checkpoint.npz")
  # The state holds a learned (vocab_size, embed_dim) table and a (embed_dim, 4 H) input kernel.
  shapes = {checkpoint[name].shape[1:] for name in checkpoint.files}
  assert {(50, 4), (4, 32)} <= shapes
