"""Study E: its sweeps pair every penalized member with an unpenalized twin, its statistics
against hand computations, and its quick run in-process."""
import os

import numpy as np
import pytest

from isometry.results import io
from isometry.results import stats
from isometry.studies import benefit as bs
from isometry.studies import harness


def _arm(with_penalty, without_penalty):
  """A study.json depth / task entry with the per-seed accuracies (both metrics alike)."""
  return {"with_penalty": {m: stats.interval(with_penalty) for m in bs.METRICS},
          "without_penalty": {m: stats.interval(without_penalty) for m in bs.METRICS},
          "difference": {}}


def test_paired_difference_matches_hand_computation():
  with_penalty = np.array([0.52, 0.55, 0.50, np.nan, 0.58])
  without = np.array([0.50, 0.51, 0.51, 0.40, 0.53])
  summary = bs.with_differences({"depths": {"2": _arm(with_penalty, without)}, "tasks": {}})
  result = summary["depths"]["2"]["difference"]["test_accuracy"]
  d = np.array([0.02, 0.04, -0.01, 0.05])  # The NaN seed is dropped with its partner.
  # t_{0.975, 3} = 3.182446305284263 (scipy.stats.t.ppf(0.975, 3)); s = std(d, ddof=1).
  half = 3.182446305284263 * np.std(d, ddof=1) / np.sqrt(4)
  assert result["n_pairs"] == 4 and result["penalty_wins"] == 3
  # Differences of float64 inputs: exact to rounding.
  np.testing.assert_allclose(result["differences"], d, atol=1e-12)
  assert result["mean"] == pytest.approx(0.025, abs=1e-12)
  assert result["ci95"] == pytest.approx(half, rel=1e-9)
  # Paired t = mean / (s / 2) = 0.025 / (0.0264575 / 2) = 1.88982, two-sided p with 3 dof.
  assert result["p_value"] == pytest.approx(0.155182, abs=1e-6)
  # A family of two (the same test in both metrics): Holm gives min(1, 2 p) to both.
  assert result["p_holm"] == pytest.approx(2 * 0.155182, abs=2e-6)
  assert result["family_size"] == 2


def test_holm_runs_over_every_depth_task_and_metric():
  base = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
  summary = {"depths": {"2": _arm(base + [0.05, 0.06, 0.05, 0.07, 0.06], base),
                        "8": _arm(base + [0.01, -0.02, 0.03, 0.00, 0.01], base)},
             "tasks": {"row": _arm(base + [0.02, 0.00, 0.03, 0.01, 0.02], base)},
             "seconds": 1.0}
  new = bs.with_differences(summary)
  p = {arm: new[g][arm]["difference"]["test_accuracy"]["p_value"]
       for g, arm in (("depths", "2"), ("depths", "8"), ("tasks", "row"))}
  assert p["2"] < p["row"] < p["8"]
  # m = 6 (3 arms x 2 metrics with equal p in both): sorted p, p, q, q, r, r.
  holm = {"2": 6 * p["2"]}
  holm["row"] = max(holm["2"], 4 * p["row"])
  holm["8"] = min(1.0, max(holm["row"], 2 * p["8"]))
  for g, arm in (("depths", "2"), ("depths", "8"), ("tasks", "row")):
    for metric in bs.METRICS:
      d = new[g][arm]["difference"][metric]
      assert d["family_size"] == 6 and d["p_holm"] == pytest.approx(holm[arm], rel=1e-12)
  # Nothing else changes, and the input is not modified.
  assert new["seconds"] == 1.0 and summary["depths"]["2"]["difference"] == {}
  assert new["depths"]["2"]["with_penalty"] == summary["depths"]["2"]["with_penalty"]


def test_paired_difference_rejects_unpaired_shapes():
  with pytest.raises(ValueError, match="seeds"):
    bs.with_differences({"depths": {"2": _arm(np.zeros(3), np.zeros(4))}, "tasks": {}})


@pytest.mark.parametrize("overrides, message", [
    (dict(depths=(1, 8)), "depths"),
    (dict(depths=(8, 8)), "repeats"),
    (dict(tasks=("permuted",)), "tasks"),
    (dict(depths=(), tasks=()), "nothing to run"),
    (dict(seeds=1), "seeds"),
    (dict(reg_strength=0.0), "reg_strength"),
    (dict(regularizer="none"), "regularizer"),
    (dict(max_train_examples=64), "max_train_examples"),
    (dict(dataset="svhn"), "dataset"),
])
def test_bad_settings_raise_value_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    bs.StudyConfig(**overrides)


def test_every_penalized_member_has_an_unpenalized_twin():
  config = bs.StudyConfig(depths=(2, 8), seeds=3, reg_strength=0.5)
  mlp = bs.mlp_train_config(config)
  assert mlp.model == "mlp" and len(mlp.members) == 2 * 2 * 3
  assert max(m.depth for m in mlp.members) == 8
  for task in bs.TASKS:
    rnn = bs.rnn_train_config(config, task)
    assert rnn.model == "rnn" and rnn.task == task and len(rnn.members) == 2 * 3
  for train_config in (mlp, bs.rnn_train_config(config, "pixel")):
    # Twins: same seed (hence init and batch order), depth, gain and lr; only the penalty differs.
    key = lambda m: (m.seed, m.depth, m.gain, m.lr, m.init)
    off = {key(m): m for m in train_config.members if m.reg_strength == 0}
    on = {key(m): m for m in train_config.members if m.reg_strength == 0.5}
    assert set(off) == set(on) and len(off) == len(train_config.members) // 2
  assert list(bs.run_configs(bs.StudyConfig(depths=()))) == ["rnn_row", "rnn_pixel"]


def test_per_seed_reads_best_val_and_drops_diverged_members():
  def member(seed, reg, status, vals, test):
    return {"config": {"label": f"row_reg{reg:g}", "seed": seed}, "status": status,
            "initial": {"val_accuracy": 0.1},
            "epochs": [{"val_accuracy": v} for v in vals], "test_accuracy": test}
  config = bs.rnn_train_config(bs.StudyConfig(seeds=2, max_train_examples=None), "row")
  metrics = {"members": [member(0, 0.0, "done", [0.2, 0.2, 0.2], 0.2),
                         member(1, 0.0, "done", [0.2, 0.2, 0.2], 0.2),
                         member(0, 1.0, "done", [0.3, 0.5, 0.4], 0.45),
                         member(1, 1.0, "diverged", [0.2, None, None], None)]}
  result = harness.SweepResult(config, metrics)
  np.testing.assert_array_equal(result.per_seed("best_val_accuracy", reg_strength=1.0),
                                [0.5, np.nan])
  np.testing.assert_array_equal(result.per_seed("test_accuracy", reg_strength=1.0), [0.45, np.nan])
  np.testing.assert_array_equal(result.history("val_accuracy", reg_strength=1.0),
                                [[0.1, 0.3, 0.5, 0.4], [0.1, 0.2, np.nan, np.nan]])


@pytest.mark.slow
def test_quick_run_writes_study_and_figures(tmp_path):
  out = tmp_path / "e"
  bs.run(bs.StudyConfig.quick(), str(out))
  study = io.read_json(out / "study.json")
  assert set(study["depths"]) == {"2", "4"} and set(study["tasks"]) == {"row", "pixel"}
  # Synthetic 6 x 6 images: 6 rows of 6, or 36 pixels of 1.
  assert study["tasks"]["row"]["time_steps"] == 6 and study["tasks"]["pixel"]["time_steps"] == 36
  for entry in list(study["depths"].values()) + list(study["tasks"].values()):
    for metric in bs.METRICS:
      on = np.array(entry["with_penalty"][metric]["values"])
      off = np.array(entry["without_penalty"][metric]["values"])
      d = entry["difference"][metric]
      assert d["n_pairs"] == 2 and len(on) == 2
      np.testing.assert_allclose(d["differences"], on - off, atol=1e-12)
      assert d["mean"] == pytest.approx(np.mean(on - off), abs=1e-12)
    # Curves hold the initial point and every epoch (quick: 2).
    assert len(entry["curves"]["with_penalty"]["val_accuracy_mean"]) == 3
    # Orthogonal init at gain 1, trained: the gap is finite and non-negative.
    assert entry["orthogonality_gap"]["without_penalty"]["mean"] >= 0
  for name in ("benefit_vs_depth.png", "benefit_row_vs_pixel.png", "learning_curves.png"):
    assert os.path.getsize(out / name) > 1000
  for run in ("mlp", "rnn_row", "rnn_pixel"):
    assert io.read_json(out / run / "status.json")["status"] == "done"
