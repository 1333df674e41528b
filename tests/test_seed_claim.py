"""The seed-claim study: its sweeps, its statistics against hand computations, and a quick run
in-process."""
import os

import numpy as np
import pytest

from isometry.results import io
from isometry.engine import presets
from isometry.engine import regularizers
from isometry.studies import seed_claim


def test_sweeps_hold_the_presets_and_scale_the_paper_penalty_to_a_mean(key):
  notebook = seed_claim.sweep_members("configs3", "notebook", seeds=5, hidden=128, lr=1e-4)
  paper = seed_claim.sweep_members("configs3", "paper", seeds=5, hidden=128, lr=1e-4)
  assert len(notebook) == 7 * 5  # configs3: four regularized configs and three baselines.
  assert len(paper) == 4 * 5 and all(m.reg_strength > 0 for m in paper)
  by_label = {m.label: m for m in notebook}
  for m in paper:
    assert m.reg_strength == pytest.approx(by_label[m.label].reg_strength / 128**2)
  # At strength reg / H^2 the paper's sum is the mean of the squared entries of W^T W/g^2 - I.
  import jax
  w = jax.random.normal(key, (16, 16))
  so = regularizers.get_regularizer("so")(w, 1.1)
  gram = np.asarray(w).T @ np.asarray(w) / 1.1**2 - np.eye(16)
  assert float(so) / 16**2 == pytest.approx(np.mean(gram**2), rel=1e-5)


def test_paired_comparison_matches_hand_computation():
  adjusted = np.array([0.80, 0.82, 0.81, np.nan, 0.83])
  unadjusted = np.array([0.79, 0.80, 0.81, 0.70, 0.80])
  result = seed_claim.compare_family({"cell": (adjusted, unadjusted)})["cell"]
  d = np.array([0.01, 0.02, 0.0, 0.03])  # the NaN seed is dropped with its partner.
  # t_{0.975, 3} = 3.182446305284263 (scipy.stats.t.ppf), s = std(d, ddof=1).
  half = 3.182446305284263 * np.std(d, ddof=1) / 2.0
  assert result["n_pairs"] == 4 and result["adjusted_wins"] == 3
  assert result["mean_difference"] == pytest.approx(0.015, abs=1e-12)
  assert result["ci95"] == pytest.approx(half, rel=1e-9)
  # Paired t statistic mean / (s / sqrt(n)) = 0.015 / (0.0129099 / 2) = 2.3238, two-sided p.
  assert result["p_value"] == pytest.approx(0.1028, abs=2e-4)
  assert result["verdict"] == "not supported"  # 0.015 - 0.0205 < 0.
  assert result["p_holm"] == result["p_value"]   # a family of one
  family = seed_claim.compare_family({"up": (adjusted + 0.1, unadjusted),
                                      "down": (adjusted - 0.1, unadjusted)})
  assert family["up"]["verdict"] == "confirmed" and family["down"]["verdict"] == "refuted"


def test_comparisons_are_recomputed_from_the_stored_seeds_with_holm():
  # One formula, one preset (configs3: two strengths), two metrics: a family of 4 cells; the
  # pooled family has 2 (one formula x two metrics).
  base = np.array([0.80, 0.81, 0.79, 0.82])
  shift = {"Orthogonal_Gain1.25_adj_Reg1": [0.010, 0.012, 0.009, 0.011],
           "Orthogonal_Gain1.25_adj_Reg0.5": [0.001, -0.002, 0.003, 0.000]}
  labels = [p.label for p in presets.get_preset("configs3")]
  runs = {label: {m: {"values": list(base + np.asarray(shift.get(label, 0.0)))}
                  for m in seed_claim.METRICS} for label in labels}
  summary = {"config": {"formulas": ["notebook"], "presets": ["configs3"]},
             "runs": {"configs3_notebook": runs}, "comparisons": [], "pooled": {}}
  new = seed_claim.with_comparisons(summary)
  assert [(c["reg_strength"], c["adjusted"]) for c in new["comparisons"]] == [
      (1.0, "Orthogonal_Gain1.25_adj_Reg1"), (0.5, "Orthogonal_Gain1.25_adj_Reg0.5")]
  strong, weak = (new["comparisons"][i]["test_accuracy"] for i in (0, 1))
  assert strong["p_value"] < weak["p_value"]
  # Holm, m = 4 (equal p in both metrics): 4 p_s, then max(4 p_s, 2 p_w), capped at 1.
  for metric in seed_claim.METRICS:
    assert new["comparisons"][0][metric]["p_holm"] == pytest.approx(4 * strong["p_value"])
    assert new["comparisons"][1][metric]["p_holm"] == pytest.approx(
        min(1.0, max(4 * strong["p_value"], 2 * weak["p_value"])))
    pooled = new["pooled"]["notebook"][metric]
    assert pooled["family_size"] == 2 and pooled["p_holm"] == pytest.approx(
        min(1.0, 2 * pooled["p_value"]))
    np.testing.assert_allclose(pooled["differences"],
                               (np.asarray(shift["Orthogonal_Gain1.25_adj_Reg1"]) +
                                shift["Orthogonal_Gain1.25_adj_Reg0.5"]) / 2, atol=1e-12)


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="formula"):
    seed_claim.StudyConfig(formulas=("eq11",))
  with pytest.raises(ValueError, match="seeds"):
    seed_claim.StudyConfig(seeds=1)


@pytest.mark.slow
def test_quick_run_writes_summary_and_figure(tmp_path):
  out = tmp_path / "claim"
  seed_claim.run(seed_claim.StudyConfig.quick(presets=("configs2",)), str(out))
  summary = io.read_json(out / "summary.json")
  assert set(summary["runs"]) == {"configs2_notebook", "configs2_paper"}
  # configs2 has two strengths; both formulas compare adjusted with unadjusted at each.
  assert len(summary["comparisons"]) == 4
  for formula in ("notebook", "paper"):
    for metric in seed_claim.METRICS:
      assert summary["pooled"][formula][metric]["n_pairs"] == 2
  assert os.path.getsize(out / "seed_claim.png") > 10_000
