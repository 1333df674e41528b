"""The binding seed-claim study: sweeps, the pilot's bound, the per-(preset, strength) summary
with Holm's adjustment, the committed runs' summary read back, and the script's command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from isometry.engine import train
from isometry.results import io
from isometry.studies import cli as study_cli
from isometry.studies import harness
from isometry.studies import seed_claim_binding as study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "results", "seed_claim_binding")


def test_sweeps_pair_every_seed_and_strength():
  config = study.StudyConfig(seeds=3, strengths=(1.0, 10.0))
  members = study.sweep_config(config, "configs3").members
  assert len(members) == 2 * 2 * 3
  for strength in (1.0, 10.0):
    for seed in range(3):
      pair = [m for m in members if m.reg_strength == strength and m.seed == seed]
      assert sorted(m.gain_adjusted for m in pair) == [False, True]
      assert {m.gain for m in pair} == {1.25} and {m.penalty_gain for m in pair} == {1.0, 1.25}
  assert study.sweep_config(config, "configs2").regularizer == "so"   # eq. 11, a sum
  assert list(study.sweeps(config)) == ["pilot_configs2", "pilot_configs3", "configs2",
                                        "configs3"]
  assert list(study.sweeps(study.StudyConfig(pilot_strengths=()))) == ["configs2", "configs3"]


def _result(config, preset, accuracy, spread):
  """A finished sweep in memory: accuracy(adjusted, strength, seed) and, after the one epoch,
  singular values g (1 - spread) .. g (1 + spread / 2)."""
  train_config = study.sweep_config(config, preset)
  gain = study.GAINS[preset]
  members = []
  for m in train_config.members:
    s = spread(m.gain_adjusted)
    record = {"singular_values": {"min": gain * (1 - s), "max": gain * (1 + s / 2)}}
    members.append({"config": {**m.__dict__}, "status": "done",
                    "initial": {"singular_values": {"min": gain, "max": gain}},
                    "epochs": [record],
                    "test_accuracy": accuracy(m.gain_adjusted, m.reg_strength, m.seed)})
  return harness.SweepResult(train_config, {"members": members})


def test_summary_pairs_by_seed_and_reports_the_deviation():
  config = study.StudyConfig(presets=("configs2",), strengths=(1.0,), seeds=4)
  result = _result(config, "configs2",
                   accuracy=lambda adjusted, strength, seed: 0.8 + 0.01 * seed + 0.02 * adjusted,
                   spread=lambda adjusted: 0.05 if adjusted else 0.2)
  (comparison,) = study.summarize(config, {"configs2": result})["comparisons"]
  assert comparison["preset"] == "configs2" and comparison["strength"] == 1.0
  assert comparison["difference"]["mean"] == pytest.approx(0.02)
  assert comparison["difference"]["wins"] == 4 and comparison["difference"]["n"] == 4
  assert comparison["max_abs_s_over_g_minus_1"] == pytest.approx({"adjusted": 0.05,
                                                                  "unadjusted": 0.2})
  assert list(comparison["difference"]) == ["mean", "ci95", "p", "wins", "n", "values",
                                            "p_holm"]


def test_holm_runs_over_every_preset_and_strength():
  config = study.StudyConfig(strengths=(1.0, 10.0), seeds=3)
  noise = {0: 0.0, 1: 0.004, 2: -0.003}
  effect = {("configs2", 1.0): 0.01, ("configs2", 10.0): 0.02, ("configs3", 1.0): 0.004,
            ("configs3", 10.0): 0.03}

  def accuracy(preset):
    return lambda adjusted, strength, seed: 0.8 + adjusted * (
        effect[(preset, strength)] + noise[seed] * (1 + strength / 10))

  results = {p: _result(config, p, accuracy(p), lambda adjusted: 0.1) for p in config.presets}
  comparisons = study.summarize(config, results)["comparisons"]
  p = np.array([c["difference"]["p"] for c in comparisons])
  for c in comparisons:   # each p is the paired t-test of its cell's three differences
    d = effect[(c["preset"], c["strength"])] + np.array(list(noise.values())) * (
        1 + c["strength"] / 10)
    assert c["difference"]["p"] == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
  # Holm by hand over the family of m = 4: sorted ascending, (4 - i) p_(i), running maximum.
  order = np.argsort(p)
  expected = np.empty(4)
  running = 0.0
  for i, k in enumerate(order):
    running = max(running, min(1.0, (4 - i) * p[k]))
    expected[k] = running
  np.testing.assert_allclose([c["difference"]["p_holm"] for c in comparisons], expected,
                             rtol=1e-12)


def test_the_committed_runs_give_the_committed_summary():
  # The harness port reads the committed run folders (the 104-minute study) into the same
  # comparisons, Holm included, that the study's first version wrote.
  config = study.StudyConfig()
  committed = io.read_json(os.path.join(COMMITTED, study.SUMMARY))
  results = {p: harness.SweepResult(study.sweep_config(config, p),
                                    io.read_json(os.path.join(COMMITTED, p, "metrics.json")))
             for p in config.presets}
  summary = json.loads(json.dumps(study.summarize(config, results)))
  assert summary["comparisons"] == committed["comparisons"]


@pytest.mark.slow
def test_quick_run_writes_the_summary_and_refuses_to_run_into_it(tmp_path):
  summary = study.run(study.StudyConfig.quick(presets=("configs3",)), str(tmp_path))
  assert (tmp_path / "summary.json").exists() and (tmp_path / "seed_claim_binding.png").exists()
  assert sorted(os.listdir(tmp_path)) == ["configs3", "pilot_configs3", "seed_claim_binding.png",
                                          "summary.json"]
  assert [c["strength"] for c in summary["comparisons"]] == [1.0, 10.0]
  (pilot,) = summary["pilot"]
  assert [row["strength"] for row in pilot["strengths"]] == [0.1, 1.0]
  assert all(len(row["max_abs_s_over_g_minus_1"]) == 1 for row in pilot["strengths"])
  for c in summary["comparisons"]:
    assert np.isfinite(c["max_abs_s_over_g_minus_1"]["adjusted"])
    assert 0 <= c["difference"]["p_holm"] <= 1 or np.isnan(c["difference"]["p_holm"])
  assert io.read_json(str(tmp_path / "summary.json")) == json.loads(json.dumps(summary))
  with pytest.raises(train.SetupError, match="finished study"):
    study.run(study.StudyConfig.quick(presets=("configs3",)), str(tmp_path))


def _parse(*argv):
  return study_cli.parse(study.StudyConfig, argv)[0]


def test_the_script_flags_build_the_config():
  parse = _parse
  assert parse() == study.StudyConfig()
  assert parse("--quick", "--seeds=3") == study.StudyConfig.quick(seeds=3)
  assert parse("--quick").synthetic and parse("--quick", "--synthetic=false").synthetic is False
  with pytest.raises(ValueError, match="^--presets: unknown presets entry 'configs9'"):
    parse("--presets=configs9")


def test_the_script_rejects_a_bad_flag_with_one_line_and_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "seed_claim_binding.py"),
                         "--seeds=1", f"--out_dir={tmp_path / 'out'}"],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--seeds must be >= 2" in lines[0], proc.stderr
  assert not (tmp_path / "out").exists()
