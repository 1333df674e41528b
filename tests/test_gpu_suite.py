"""benchmarks/gpu_suite.py: its early-stopping rule against hand-worked sequences, and the whole
suite's --smoke run (a subprocess, synthetic images) with the structure and sanity of its JSON.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import gpu_suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_suite.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        env=env, timeout=timeout, cwd=REPO)


class Clock:
  """A clock that advances `step` seconds per reading."""

  def __init__(self, step):
    self.now, self.step = 0.0, step

  def __call__(self):
    self.now += self.step
    return self.now


def _epoch(accuracy, diverged=None):
  accuracy = np.asarray(accuracy, np.float32)
  return {"val_accuracy": accuracy,
          "diverged": np.zeros(accuracy.shape, bool) if diverged is None else np.asarray(diverged)}


def _feed(rule, accuracies, diverged=None):
  """Calls the rule per epoch; returns the epoch at which it asked to stop (None: never)."""
  for epoch, accuracy in enumerate(accuracies, start=1):
    if rule(epoch, _epoch(accuracy, None if diverged is None else diverged[epoch - 1])):
      return epoch
  return None


def test_patience_waits_for_every_member():
  # Member 0 peaks at epoch 2, member 1 at epoch 4 (a tie at epoch 5 does not count as rising):
  # with patience 2, member 0 is done after epoch 4, member 1 after epoch 6.
  rule = gpu_suite.StopRule("t", deadline=math.inf, patience=2, max_epochs=10, clock=Clock(1))
  stop = _feed(rule, [[0.1, 0.1], [0.5, 0.2], [0.4, 0.3], [0.4, 0.6], [0.3, 0.6], [0.2, 0.5],
                      [0.9, 0.9]])
  assert stop == 6 and rule.stopped_by() == "patience"
  np.testing.assert_array_equal(rule.best_epoch, [2, 4])
  np.testing.assert_allclose(rule.best, [0.5, 0.6], rtol=1e-6)


def test_patience_ignores_diverged_and_nan_members():
  # Member 1 diverges at epoch 2 with NaN accuracy: it neither rises nor keeps the run going.
  rule = gpu_suite.StopRule("t", deadline=math.inf, patience=1, max_epochs=10, clock=Clock(1))
  stop = _feed(rule, [[0.1, 0.1], [0.2, np.nan], [0.2, np.nan]],
               diverged=[[False, False], [False, True], [False, True]])
  assert stop == 3 and rule.stopped_by() == "patience"
  np.testing.assert_array_equal(rule.best_epoch, [2, 1])


def test_max_epochs_ends_the_run_not_the_rule():
  rule = gpu_suite.StopRule("t", deadline=math.inf, patience=1, max_epochs=2, clock=Clock(1))
  assert _feed(rule, [[0.5], [0.4]]) is None
  assert rule.reason is None and rule.stopped_by() == "max_epochs"


def test_budget_uses_the_last_epoch_time():
  # Readings at 10, 20, 30: after epoch 1 nothing is known of an epoch's length (it included
  # compilation); after epoch 2 the next would end at 20 + 10 = 30 > 25.
  rule = gpu_suite.StopRule("t", deadline=25.0, max_epochs=10, clock=Clock(10))
  assert _feed(rule, [[0.1], [0.2], [0.3]]) == 2
  assert rule.stopped_by() == "budget"
  # A deadline already passed stops after the first epoch.
  rule = gpu_suite.StopRule("t", deadline=5.0, max_epochs=10, clock=Clock(10))
  assert _feed(rule, [[0.1], [0.2]]) == 1


def test_usage_errors_exit_2_in_one_line(tmp_path):
  assert _run("--help").returncode == 0
  for args, flag in ((["--parts=a,x", "--smoke"], "--parts"),
                     (["--parts=b"], "--data_dir"),
                     ([f"--data_dir={tmp_path}", "--smoke"], "--data_dir"),
                     (["--smoke", "--patience=0"], "--patience")):
    result = _run(*args, f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 2, (args, result.stderr)
    assert flag in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def _finite(x, low=-math.inf, high=math.inf):
  return isinstance(x, (int, float)) and math.isfinite(x) and low <= x <= high


def _check_part_a(a):
  assert [r["K"] for r in a["rows"]] == list(gpu_suite.SMOKE.ks)
  for r in a["rows"]:
    assert _finite(r["vmapped_steps_per_s"], 1e-3) and _finite(r["separate_steps_per_s"], 1e-3)
    # Both throughputs count the same member-steps: their ratio is the train-time ratio.
    assert r["ratio"] == pytest.approx(r["vmapped_steps_per_s"] / r["separate_steps_per_s"],
                                       rel=0.01)
  assert a["rows"][0]["vmapped_over_vmapped_k1"] == 1.0
  # No K = 64 row in the smoke sizes: the target is stated, not judged.
  assert a["target"] == {"K": 64, "min_ratio": 6.0, "ratio": None, "met": None}
  assert a["settings"]["hidden"] == gpu_suite.SMOKE.hidden


def _check_part_b(b):
  assert [s["name"] for s in b["inits"]] == list(gpu_suite.B_INITS)
  for s in b["inits"]:
    # Every init sits at chi = 1: tanh at the critical sigma_w, ReLU-He exactly (2 * 1/2).
    assert s["chi"] == pytest.approx(1.0, abs=1e-6)
  seeds = gpu_suite.SMOKE.seeds
  for name in gpu_suite.B_INITS:
    (row,) = b["by_init"][name]
    assert row["depth"] == gpu_suite.SMOKE.depth
    assert len(row["test_accuracy"]) == seeds
    assert all(_finite(x, 0.0, 1.0) for x in row["test_accuracy"] + row["best_val_accuracy"])
    assert _finite(row["test_accuracy_mean"], 0.0, 1.0) and _finite(row["test_accuracy_ci95"], 0)
    # Curves: one row per seed, init (epoch 0) plus each epoch trained.
    assert np.shape(row["val_curves"]) == (seeds, b["runs"]["tanh_depth4"]["epochs_done"] + 1)
  # A passed budget stops the tanh sweep after epoch 1; ReLU trains exactly as long.
  assert b["runs"]["tanh_depth4"]["stopped_by"] == "budget"
  assert b["runs"]["tanh_depth4"]["epochs_done"] == 1
  assert b["runs"]["relu_depth4"]["epochs_done"] == 1
  assert len(b["comparisons"]) == 4
  for c in b["comparisons"].values():
    assert c["n_pairs"] == seeds and _finite(c["mean_difference"], -1.0, 1.0)
    assert c["mean_difference"] == pytest.approx(np.mean(c["differences"]))


def _check_part_c(c):
  stop = c["early_stopping"]
  sizes = gpu_suite.SMOKE
  assert stop["patience"] == sizes.patience and stop["max_epochs"] == sizes.max_epochs
  assert 1 <= stop["epochs_done"] <= sizes.max_epochs
  members = stop["members"]
  assert len(members) == 4  # {no penalty, penalty} x 2 seeds (study E's quick config)
  for m in members:
    assert 1 <= m["best_epoch"] <= stop["epochs_done"]
    assert _finite(m["best_val_accuracy"], 0.0, 1.0) and _finite(m["test_accuracy"], 0.0, 1.0)
  # The rule that ended the run must hold (a budget stop only on a machine loaded far beyond
  # what the smoke's 120 s allow for).
  if stop["stopped_by"] == "patience":
    assert all(stop["epochs_done"] - m["best_epoch"] >= sizes.patience for m in members)
  elif stop["stopped_by"] == "max_epochs":
    assert stop["epochs_done"] == sizes.max_epochs
  else:
    assert stop["stopped_by"] == "budget" and stop["epochs_done"] < sizes.max_epochs
  pixel = c["tasks"]["pixel"]
  assert pixel["time_steps"] == 36  # the 6 x 6 synthetic images, pixel by pixel
  assert len(pixel["curves"]["with_penalty"]["val_accuracy_mean"]) == stop["epochs_done"] + 1
  d = pixel["difference"]["best_val_accuracy"]
  assert d["n_pairs"] == 2 and _finite(d["mean"], -1.0, 1.0)


@pytest.mark.slow
def test_smoke_run(tmp_path):
  out = tmp_path / "gpu"
  # A one-second budget for part b exercises the rule's stop and the finishing of a stopped run.
  result = _run("--smoke", f"--out_dir={out}", "--budget_b_s=1")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "device(s):" in result.stdout.splitlines()[0]
  suite = json.loads((out / gpu_suite.SUMMARY).read_text())
  assert suite["status"] == "done" and suite["smoke"] and suite["parts"] == ["a", "b", "c"]
  assert suite["tfds_imported"] is False
  import jax
  assert suite["device"]["jax"] == jax.__version__
  assert suite["device"]["device_kind"] and suite["device"]["device_count"] >= 1
  walls = suite["wall_s"]
  assert all(_finite(walls[p], 0.0) and walls[p] > 0 for p in ("a", "b", "c", "total"))
  assert walls["total"] >= walls["a"] + walls["b"] + walls["c"]
  _check_part_a(suite["a"])
  _check_part_b(suite["b"])
  _check_part_c(suite["c"])
  for name in ("a_sweep_scaling.png", "b_learning_curves.png", "c_learning_curves.png"):
    assert (out / name).read_bytes()[:8] == PNG_MAGIC
  assert not list(out.rglob("checkpoint.npz"))
  # A second run into the same folder is refused before any work.
  again = _run("--smoke", f"--out_dir={out}")
  assert again.returncode == 2 and "--out_dir" in again.stderr.strip().splitlines()[-1]


def test_full_sizes_are_the_issues(tmp_path):
  # Only the configs are built (any folder passes as data_dir there): nothing trains.
  full = gpu_suite.FULL
  assert (full.ks, full.hidden, full.batch) == ((1, 8, 64), 128, 128)
  b = gpu_suite.b_train_configs(gpu_suite.accuracy_config(full, str(tmp_path), smoke=False))
  assert [m.label for m in b["tanh"].members] == ["orthogonal_critical"] * 3 + [
      "gaussian_critical"] * 3
  assert [m.label for m in b["relu"].members] == ["relu_he"] * 3
  for activation, config in b.items():
    assert (config.model, config.activation, config.hidden) == ("mlp", activation, 400)
    assert {m.depth for m in config.members} == {200} and config.data_dir == str(tmp_path)
    assert [m.seed for m in config.members] == list(range(3)) * (len(config.members) // 3)
  # Study C's tanh inits share sigma_w (orthogonal vs Gaussian at the same critical point).
  assert len({m.gain for m in b["tanh"].members}) == 1
  from isometry.studies import benefit
  study = gpu_suite.benefit_config(full, str(tmp_path), smoke=False)
  c = benefit.rnn_train_config(study, "pixel")
  assert c.task == "pixel" and study.epochs == full.max_epochs and not study.synthetic
  assert {m.reg_strength for m in c.members} == {0.0, study.reg_strength}
  assert full.patience == 10
