"""Study C's pure pieces (critical point, init specs, config checks, summaries) and its quick
run on a synthetic task, in-process."""
import json
import os

import numpy as np
import pytest

from isometry.theory import meanfield
from isometry.engine import train
from isometry.studies import accuracy as acc
from isometry.studies import harness


@pytest.mark.parametrize("sigma_b", [0.0, 0.05, 0.3])
def test_critical_sigma_w_gives_chi_one(sigma_b):
  sw = meanfield.critical_sigma_w("tanh", sigma_b)   # what study C's critical inits use
  # Brent's method solves to 1e-14 in sigma_w; chi is smooth (slope ~2 there), so 1e-6 leaves
  # room for the float64 quadrature of meanfield.chi.
  assert abs(float(meanfield.chi("tanh", sw, sigma_b)) - 1.0) < 1e-6
  # chi increases with sigma_w: 1% either side is ordered / chaotic.
  assert float(meanfield.chi("tanh", 0.99 * sw, sigma_b)) < 1 < float(
      meanfield.chi("tanh", 1.01 * sw, sigma_b))


def test_init_specs():
  config = acc.StudyConfig(sigma_b=0.05, off_critical_sigma_w=2.0)
  specs = {s["name"]: s for s in acc.init_specs(config)}
  assert tuple(specs) == acc.INITS
  assert specs["orthogonal_critical"]["sigma_w"] == specs["gaussian_critical"]["sigma_w"]
  for name in ("orthogonal_critical", "gaussian_critical", "relu_he"):
    assert abs(specs[name]["chi"] - 1.0) < 1e-6
  assert specs["orthogonal_off_critical"]["chi"] > 1.2  # sigma_w = 2 is chaotic
  assert specs["relu_he"]["sigma_w"] == pytest.approx(np.sqrt(2.0))
  assert specs["relu_he"]["sigma_b"] == 0.0
  assert specs["orthogonal_off_critical"]["init"] == "orthogonal"


def test_train_config_members():
  config = acc.StudyConfig.quick(seeds=3)
  tanh = acc.train_config(config, "tanh", 3)
  assert tanh.activation == "tanh" and tanh.sigma_b == config.sigma_b
  assert len(tanh.members) == 3 * 3
  assert {m.depth for m in tanh.members} == {3}
  assert {m.label for m in tanh.members} == set(acc.INITS[:3])
  relu = acc.train_config(config, "relu", 1)
  assert relu.activation == "relu" and relu.sigma_b == 0.0 and len(relu.members) == 3
  with pytest.raises(ValueError, match="no init uses"):
    acc.train_config(config, "linear", 1)


@pytest.mark.parametrize("overrides, message", [
    (dict(seeds=1), "seeds must be >= 2"),
    (dict(depths=(2, 0)), "depths must be integers >= 1"),
    (dict(depths=(2, 2)), "distinct"),
    (dict(depths=()), "depths must be"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(optimizer="lbfgs"), "unknown optimizer"),
    (dict(sigma_b=-0.1), "sigma_b must be >= 0"),
    (dict(off_critical_sigma_w=1.13), "not off-critical"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(max_train_examples=10), "must be >= batch_size"),
])
def test_config_validation(overrides, message):
  with pytest.raises(ValueError, match=message):
    acc.StudyConfig(**overrides)


def test_summarize():
  def member(seed, curve, test, status="done"):
    return {"config": {"label": "a", "seed": seed}, "status": status,
            "initial": {"val_accuracy": 0.1},
            "epochs": [{"val_accuracy": v} for v in curve], "test_accuracy": test}
  config = train.TrainConfig(members=(train.Member("a", seed=1), train.Member("a", seed=0),
                                      train.Member("a", seed=2), train.Member("b", seed=0)))
  metrics = {"members": [member(1, [0.5, 0.4], 0.45), member(0, [0.3, 0.6], 0.55),
                         member(2, [0.2, None], None, "diverged"),
                         {"config": {"label": "b", "seed": 0}}]}
  s = acc.summarize(harness.SweepResult(config, metrics), "a")
  np.testing.assert_allclose(s["test_accuracy"], [0.55, 0.45, np.nan])  # by seed
  np.testing.assert_allclose(s["best_val_accuracy"], [0.6, 0.5, np.nan])  # diverged: missing
  np.testing.assert_allclose(s["val_curves"], [[0.1, 0.3, 0.6], [0.1, 0.5, 0.4],
                                               [0.1, 0.2, np.nan]])
  assert s["diverged"] == 1
  assert s["test_accuracy_mean"] == pytest.approx(0.5)
  # t_{0.975, 1} = 12.706, s = 0.0707, n = 2: half-width 0.6353.
  assert s["test_accuracy_ci95"] == pytest.approx(12.7062 * 0.1 / np.sqrt(2) / np.sqrt(2), rel=1e-4)


def test_paired_comparisons_are_the_named_family_with_holm():
  # Two depths, two inits: orthogonal_critical - gaussian_critical at depths 2 and 8, and
  # orthogonal_critical at 8 - at 2: m = 3, every difference paired by seed.
  base = np.array([0.80, 0.81, 0.79, 0.82])
  by_init = {
      "orthogonal_critical": [{"depth": 8, "test_accuracy": list(base + 0.03)},
                              {"depth": 2, "test_accuracy": list(base)}],
      "gaussian_critical": [{"depth": 8, "test_accuracy": list(base + [0, 0.01, 0.02, 0.01])},
                            {"depth": 2, "test_accuracy": list(base + [0.01, -0.02, 0.0, 0.0])}]}
  rows = acc.paired_comparisons(by_init)
  assert [(r["a"], r["b"]) for r in rows] == [
      ({"init": "orthogonal_critical", "depth": 2}, {"init": "gaussian_critical", "depth": 2}),
      ({"init": "orthogonal_critical", "depth": 8}, {"init": "gaussian_critical", "depth": 8}),
      ({"init": "orthogonal_critical", "depth": 8}, {"init": "orthogonal_critical", "depth": 2})]
  np.testing.assert_allclose(rows[1]["differences"], [0.03, 0.02, 0.01, 0.02], atol=1e-12)
  # Depth 8 - depth 2 is the constant 0.03: no t-test, so it is not in the family (m = 2).
  assert np.isnan(rows[2]["p_value"]) and np.isnan(rows[2]["p_holm"])
  p2, p8 = rows[0]["p_value"], rows[1]["p_value"]
  assert p8 < p2
  assert rows[1]["p_holm"] == pytest.approx(2 * p8, rel=1e-12)
  assert rows[0]["p_holm"] == pytest.approx(min(1.0, max(2 * p8, p2)), rel=1e-12)
  assert {r["family_size"] for r in rows} == {2}


@pytest.mark.slow
def test_quick_run(tmp_path):
  out = tmp_path / "c"
  acc.run(acc.StudyConfig.quick(), str(out))
  with open(out / "study.json") as f:
    study = json.load(f)
  assert study["depths"] == [1, 3]
  assert [s["name"] for s in study["inits"]] == list(acc.INITS)
  for name in acc.INITS:
    rows = study["by_init"][name]
    assert [r["depth"] for r in rows] == [1, 3]
    for r in rows:
      assert len(r["test_accuracy"]) == 2 and all(0 <= a <= 1 for a in r["test_accuracy"])
      assert np.asarray(r["val_curves"]).shape == (2, 3)  # seeds x (init + 2 epochs)
      assert np.isfinite(r["test_accuracy_mean"])
  for png in ("C1_accuracy_vs_depth.png", "C2_learning_curves.png"):
    assert os.path.getsize(out / png) > 1000
  for run in ("tanh_depth1", "tanh_depth3", "relu_depth1", "relu_depth3"):
    assert os.path.exists(out / run / "checkpoint.npz")
