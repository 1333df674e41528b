"""Study D: arm -> TrainConfig mapping, summaries against hand computations, and a quick run
in-process."""
import os

import numpy as np
import pytest

from isometry.results import io
from isometry.results import stats
from isometry.engine import train
from isometry.studies import constraints as cs
from isometry.studies import harness


def test_arms_map_to_their_constraint_and_penalty():
  config = cs.StudyConfig(seeds=3, reg_strength=0.05, gain=1.1, synthetic=True)
  names = cs.arm_names(config)
  assert names == ("none", "soft", "projection", "cayley", "expm", "riemannian_adam", "margin0",
                   "margin0.01", "margin0.1", "margin1")
  expected = {"none": ("none", "none", 0.0), "soft": ("none", "so", 0.05),
              "projection": ("projection", "none", 0.0), "cayley": ("cayley", "none", 0.0),
              "expm": ("expm", "none", 0.0),
              "riemannian_adam": ("riemannian_adam", "none", 0.0),
              "margin0.1": ("margin", "none", 0.0),
              "margin1": ("margin", "none", 0.0)}
  for arm, (constraint, regularizer, reg) in expected.items():
    c = cs.arm_train_config(config, arm)
    assert (c.constraint, c.regularizer) == (constraint, regularizer), arm
    assert [m.seed for m in c.members] == [0, 1, 2]
    assert all(m.label == arm and m.reg_strength == reg and m.gain == 1.1
               and m.init == "orthogonal" for m in c.members)
  assert cs.arm_train_config(config, "margin0.01").margin == 0.01
  assert cs.arm_train_config(config, "margin1").margin == 1.0
  assert cs.band(config, "expm") == (1.1, 1.1)
  assert cs.band(config, "riemannian_adam") == (1.1, 1.1)
  # The Riemannian arm replaces Adam for W with Cayley ADAM at the members' Adam rate.
  radam = cs.arm_train_config(config, "riemannian_adam")
  assert radam.optimizer == "adam" and all(m.lr == config.lr for m in radam.members)
  assert cs.band(config, "margin0.1") == pytest.approx((0.99, 1.21))
  assert cs.band(config, "soft") == (0.0, float("inf"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(arms=("hard",)), "unknown arm"), (dict(margins=(1.5,)), "margins"),
    (dict(seeds=1), "seeds"), (dict(reg_strength=0.0), "soft needs"),
    (dict(arms=(), margins=()), "at least one"), (dict(max_train_examples=10), "batch_size"),
    (dict(dataset="cifar10"), "28 x 28")])
def test_bad_settings_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    cs.StudyConfig(**kwargs)


def _member(seed, val, test, sv, status="done"):
  """A metrics.json member with per-epoch val accuracies and (min, mean, max) singular values."""
  summary = lambda s: {"min": s[0], "mean": s[1], "max": s[2], "std": 0.0}
  return {"config": {"label": "arm", "seed": seed}, "status": status, "test_accuracy": test,
          "initial": {"singular_values": summary(sv[0]), "val_accuracy": 0.1},
          "epochs": [{"val_accuracy": v, "singular_values": summary(s)}
                     for v, s in zip(val, sv[1:])]}


def _result():
  metrics = {"members": [
      _member(0, [0.5, 0.7, 0.6], 0.65, [(1, 1, 1), (0.9, 1.0, 1.1), (0.8, 1.0, 1.3),
                                         (0.7, 1.0, 1.4)]),
      _member(1, [0.4, 0.5, 0.8], 0.75, [(1, 1, 1), (0.7, 1.0, 1.3), (0.6, 1.0, 1.5),
                                         (0.5, 1.0, 1.6)]),
      _member(2, [0.1, None, None], None, [(1, 1, 1), (0.1, 2.0, 9.0), (0.1, 2.0, 9.0),
                                           (0.1, 2.0, 9.0)], status="diverged")]}
  config = train.TrainConfig(members=tuple(train.Member("arm", seed=s) for s in range(3)))
  return harness.SweepResult(config, metrics)


def test_summaries_match_hand_computation():
  result = _result()
  best = result.per_seed("best_val_accuracy")
  np.testing.assert_array_equal(best[:2], [0.7, 0.8])
  assert np.isnan(best[2])  # diverged seeds count as missing.
  test = stats.interval(result.per_seed("test_accuracy"))
  # Two values 0.65, 0.75: s = 0.0707107, t_{0.975, 1} = 12.7062047 (scipy.stats.t.ppf).
  assert test["n"] == 2 and test["mean"] == pytest.approx(0.70, abs=1e-12)
  assert test["ci95"] == pytest.approx(12.7062047 * 0.0707107 / np.sqrt(2), rel=1e-6)
  sv = cs.singular_value_trajectory(result)
  assert sv["epoch"] == [0, 1, 2, 3]
  np.testing.assert_allclose(sv["min"], [1.0, 0.8, 0.7, 0.6])
  np.testing.assert_allclose(sv["max"], [1.0, 1.2, 1.4, 1.5])
  np.testing.assert_allclose(sv["min_over_seeds"], [1.0, 0.7, 0.6, 0.5])
  np.testing.assert_allclose(sv["max_over_seeds"], [1.0, 1.3, 1.5, 1.6])
  curve = cs.val_curve(result)
  np.testing.assert_allclose(curve["mean"], [(0.5 + 0.4 + 0.1) / 3, 0.6, 0.7])
  timing = cs.timing({"epoch_seconds": [9.0, 2.0, 4.0, 3.0], "steps_per_epoch": 100})
  assert timing["epoch_seconds_median"] == 3.0 and timing["ms_per_step"] == pytest.approx(30.0)
  assert timing["first_epoch_seconds"] == 9.0 and timing["total_seconds"] == 18.0


def test_paired_comparisons_to_none_use_the_seeds_values():
  arms = {"none": {m: {"values": [0.79, 0.80, 0.81, 0.70, 0.80]} for m in cs.METRICS},
          "soft": {m: {"values": [0.80, 0.82, 0.81, np.nan, 0.83]} for m in cs.METRICS}}
  paired = cs.compare_to_baseline(arms)
  assert set(paired) == {"soft"}
  for metric in cs.METRICS:
    assert paired["soft"][metric]["n_pairs"] == 4 and paired["soft"][metric]["wins"] == 3
    assert paired["soft"][metric]["verdict"] == "no difference resolved"
  assert cs.compare_to_baseline({"soft": arms["soft"]}) == {}


def test_holm_runs_over_every_arm_and_metric():
  base = [0.80, 0.81, 0.79, 0.82, 0.80]
  shifts = {"soft": [0.01, -0.02, 0.03, 0.00, 0.01], "expm": [-0.05, -0.06, -0.05, -0.07, -0.06]}
  arms = {"none": {m: {"values": base} for m in cs.METRICS}}
  arms.update({arm: {m: {"values": list(np.add(base, shift))} for m in cs.METRICS}
               for arm, shift in shifts.items()})
  paired = cs.compare_to_baseline(arms)
  p_soft = paired["soft"]["test_accuracy"]["p_value"]
  p_expm = paired["expm"]["test_accuracy"]["p_value"]
  assert p_expm < p_soft
  # m = 4 (2 arms x 2 metrics, equal p in both metrics): 4 p_e, then max(4 p_e, 2 p_s).
  for metric in cs.METRICS:
    assert paired["expm"][metric]["p_holm"] == pytest.approx(4 * p_expm, rel=1e-12)
    assert paired["soft"][metric]["p_holm"] == pytest.approx(
        min(1.0, max(4 * p_expm, 2 * p_soft)), rel=1e-12)
    assert paired["soft"][metric]["family_size"] == 4


@pytest.mark.slow
def test_quick_run_keeps_the_constraints(tmp_path):
  out = tmp_path / "d"
  config = cs.StudyConfig.quick(arms=("none", "projection", "cayley", "expm", "riemannian_adam"),
                                margins=(0, 0.1))
  returned = cs.run(config, str(out))
  study = io.read_json(out / "study.json")
  assert study["arms"].keys() == returned["arms"].keys()
  arms = study["arms"]
  assert list(arms) == ["none", "projection", "cayley", "expm", "riemannian_adam", "margin0",
                        "margin0.1"]
  gain = study["config"]["gain"]
  for name, entry in arms.items():
    for metric in cs.METRICS:
      assert entry[metric]["n"] == 2 and 0 <= entry[metric]["mean"] <= 1
    sv = entry["singular_values"]
    assert sv["epoch"] == [0, 1, 2] and len(entry["timing"]["epoch_seconds"]) == 2
    if name == "none":
      # Unconstrained Adam at lr 1e-2 moves W off the orthogonal point within an epoch.
      assert max(sv["max_over_seeds"][1:]) > gain * 1.01
      continue
    lo, hi = entry["band"]
    # float32 SVD of an 8 x 8 matrix that was projected or retracted in float32: ~1e-6
    # relative; 1e-5 leaves room for the Cayley step's accumulated solve error over 8 steps.
    assert min(sv["min_over_seeds"]) >= lo - 1e-5 * gain, name
    assert max(sv["max_over_seeds"]) <= hi + 1e-5 * gain, name
  # m = 0.1 is loose enough that training reaches the band's edge (clipping is active).
  assert max(arms["margin0.1"]["singular_values"]["max_over_seeds"]) > gain * 1.05
  assert set(study["paired_vs_none"]) == {"projection", "cayley", "expm", "riemannian_adam",
                                          "margin0", "margin0.1"}
  for name in ("D_accuracy.png", "D_singular_values.png", "D_val_curves.png"):
    assert os.path.getsize(out / name) > 1000
