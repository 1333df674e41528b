"""The binding seed-claim study: sweeps, the pilot's bound, the per-(preset, strength) summary."""
import numpy as np
import pytest

from isometry.studies import seed_claim_binding as study


def test_sweeps_pair_every_seed_and_strength():
  config = study.BindingConfig(seeds=3, strengths=(1.0, 10.0))
  members = study.sweep_config(config, "configs3").members
  assert len(members) == 2 * 2 * 3
  for strength in (1.0, 10.0):
    for seed in range(3):
      pair = [m for m in members if m.reg_strength == strength and m.seed == seed]
      assert sorted(m.gain_adjusted for m in pair) == [False, True]
      assert {m.gain for m in pair} == {1.25} and {m.penalty_gain for m in pair} == {1.0, 1.25}
  assert study.sweep_config(config, "configs2").regularizer == "so"   # eq. 11, a sum


def _metrics(config, preset, accuracy, spread):
  """metrics.json-like content: accuracy(adjusted, seed) and singular values g (1 +- spread)."""
  gain = study.GAINS[preset]
  members = []
  for m in study.sweep_config(config, preset).members:
    s = spread(m.gain_adjusted)
    record = {"singular_values": {"min": gain * (1 - s), "max": gain * (1 + s / 2)}}
    members.append({"config": {**m.__dict__}, "status": "done", "epochs": [record],
                    "test_accuracy": accuracy(m.gain_adjusted, m.seed)})
  return {"members": members}


def test_summary_pairs_by_seed_and_reports_the_deviation():
  config = study.BindingConfig(presets=("configs2",), strengths=(1.0,), seeds=4)
  metrics = _metrics(config, "configs2",
                     accuracy=lambda adjusted, seed: 0.8 + 0.01 * seed + (0.02 if adjusted else 0),
                     spread=lambda adjusted: 0.05 if adjusted else 0.2)
  (comparison,) = study.summarize(config, {"configs2": metrics})["comparisons"]
  assert comparison["preset"] == "configs2" and comparison["strength"] == 1.0
  assert comparison["difference"]["mean"] == pytest.approx(0.02)
  assert comparison["difference"]["wins"] == 4 and comparison["difference"]["n"] == 4
  assert comparison["max_abs_s_over_g_minus_1"] == pytest.approx({"adjusted": 0.05,
                                                                  "unadjusted": 0.2})


def test_quick_run_writes_the_summary(tmp_path):
  summary = study.run(study.BindingConfig.quick(presets=("configs3",)), str(tmp_path))
  assert (tmp_path / "summary.json").exists() and (tmp_path / "seed_claim_binding.png").exists()
  assert [c["strength"] for c in summary["comparisons"]] == [1.0, 10.0]
  (pilot,) = summary["pilot"]
  assert [row["strength"] for row in pilot["strengths"]] == [0.1, 1.0]
  for c in summary["comparisons"]:
    assert np.isfinite(c["max_abs_s_over_g_minus_1"]["adjusted"])
    assert 0 <= c["difference"]["p_holm"] <= 1 or np.isnan(c["difference"]["p_holm"])
