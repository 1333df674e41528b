"""The study harness on a tiny sweep: results keyed by member fields, interruption and resume, a
finished sweep read back, a finished study never run into unasked; its paired comparison and
config checks against hand computations; and the study scripts' flags, parsed in-process."""
import dataclasses
import os
import shutil
from typing import Tuple

import numpy as np
import pytest
from scipy import stats as scipy_stats

from isometry import data
from isometry.results import io
from isometry.engine import train
from isometry.studies import cli as study_cli
from isometry.studies import harness

_IMAGES = harness.Synthetic(64, 16, 16, side=6, learnable=True)


def _sweep(epochs: int = 2) -> train.TrainConfig:
  """gains x penalty strengths x 2 seeds: 8 members of a 4-unit RNN on 6 x 6 images."""
  return train.TrainConfig(
      members=train.product_members(gains=(1.0, 1.3), reg_strengths=(0.0, 0.5), lrs=(0.01,),
                                    seeds=2),
      hidden=4, batch_size=16, epochs=epochs, unroll=1, val_size=16, eval_batch_size=16,
      monitor_probes=0, **harness.data_fields("fashion_mnist", None, synthetic=True))


@pytest.fixture(scope="module")
def images():
  return harness.load_images("fashion_mnist", None, synthetic=_IMAGES)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, images):
  """The sweep trained to the end in out_dir/tiny (one compiled program for every test here)."""
  out_dir = str(tmp_path_factory.mktemp("study"))
  return out_dir, harness.run_sweeps({"tiny": _sweep()}, out_dir, dataset=images)["tiny"]


def test_synthetic_images_are_the_data_modules():
  images = harness.load_images("mnist", None, synthetic=_IMAGES)
  expected = data.synthetic_dataset(64, 16, 16, side=6, learnable=True)
  for got, want in zip(images, expected):
    np.testing.assert_array_equal(got, want)
  assert harness.data_fields("mnist", "", synthetic=False) == {"dataset": "mnist",
                                                               "data_dir": None}


def test_results_are_arrays_over_seeds_keyed_by_member_fields(finished):
  _, result = finished
  assert result.status["status"] == "done" and result.num_seeds == 2
  members = result.metrics["members"]
  chosen = result.select(gain=1.3, reg_strength=0.5)
  assert [(members[i]["config"]["gain"], members[i]["config"]["reg_strength"], seed)
          for seed, i in sorted(chosen.items())] == [(1.3, 0.5, 0), (1.3, 0.5, 1)]
  test = result.per_seed("test_accuracy", gain=1.3, reg_strength=0.5)
  np.testing.assert_array_equal(test, [members[chosen[s]]["test_accuracy"] for s in (0, 1)])
  curves = result.history("val_accuracy", gain=1.3, reg_strength=0.5)
  assert curves.shape == (2, 3)   # seeds x (init + 2 epochs)
  np.testing.assert_array_equal(curves[:, 0], [members[chosen[s]]["initial"]["val_accuracy"]
                                               for s in (0, 1)])
  np.testing.assert_array_equal(result.per_seed("best_val_accuracy", gain=1.3, reg_strength=0.5),
                                curves[:, 1:].max(axis=1))
  # The JSON summary of the singular values is the largest of the saved spectrum (float32 both).
  top = result.history("singular_values.max", gain=1.3, reg_strength=0.5)
  spectra = result.spectra("recurrent", gain=1.3, reg_strength=0.5)
  assert spectra.shape == (2, 3, 4)
  np.testing.assert_array_equal(top, spectra.max(axis=-1))
  # An orthogonal init at gain g has every singular value g (float32 QR: ~1e-7 relative).
  np.testing.assert_allclose(spectra[:, 0], 1.3, rtol=1e-5)
  assert result.history("grad_norm_through_time", gain=1.0, reg_strength=0.0).shape == (2, 3, 6)
  assert not result.diverged(gain=1.0, reg_strength=0.0).any()


def test_initial_params_are_what_the_sweep_starts_from(finished, images):
  _, result = finished
  params = train.initial_params(_sweep(), images)
  assert params["recurrent"].shape == (8, 4, 4)
  # The singular values train recorded at init (its own SVD, in float32) are those of W.
  recorded = result.spectra("recurrent", gain=1.3, reg_strength=0.5)[:, 0]
  chosen = result.select(gain=1.3, reg_strength=0.5)
  drawn = np.stack([np.linalg.svd(params["recurrent"][chosen[s]], compute_uv=False)
                    for s in (0, 1)])
  np.testing.assert_allclose(drawn, recorded, rtol=1e-5)
  # Members of one seed share their input kernel whatever their gain or penalty.
  members = _sweep().members
  assert (members[0].seed, members[4].seed) == (0, 0) and members[0].gain != members[4].gain
  np.testing.assert_array_equal(params["input"][0], params["input"][4])
  np.testing.assert_array_equal(params["input"][0], params["input"][2])


@pytest.mark.parametrize("fields, message", [
    (dict(gain=1.3), "two members with seed 0"),
    (dict(gain=1.25, reg_strength=0.0), "no member"),
    (dict(width=3), "no field 'width'"),
])
def test_selections_must_name_one_member_per_seed(finished, fields, message):
  with pytest.raises(ValueError, match=message):
    finished[1].select(**fields)


def test_diverged_and_missing_members_read_as_nan():
  config = train.TrainConfig(members=(train.Member("a", seed=0), train.Member("a", seed=2),
                                      train.Member("b", seed=1)))

  def member(m, status, vals, test):
    return {"config": {"label": m.label, "seed": m.seed}, "status": status,
            "initial": {"val_accuracy": 0.1}, "epochs": [{"val_accuracy": v} for v in vals],
            "test_accuracy": test}
  metrics = {"members": [member(config.members[0], "diverged", [0.3, 0.6], None),
                         member(config.members[1], "done", [0.5, None], 0.45),
                         member(config.members[2], "done", [0.2, 0.2], 0.2)]}
  result = harness.SweepResult(config, metrics)
  np.testing.assert_array_equal(result.per_seed("test_accuracy", label="a"), [np.nan, np.nan, 0.45])
  np.testing.assert_array_equal(result.per_seed("best_val_accuracy", label="a"),
                                [np.nan, np.nan, 0.5])
  # A diverged member keeps its curve (train freezes its last finite parameters).
  np.testing.assert_array_equal(result.history("val_accuracy", label="a"),
                                [[0.1, 0.3, 0.6], [np.nan] * 3, [0.1, 0.5, np.nan]])
  np.testing.assert_array_equal(result.diverged(label="a"), [True, False, False])
  with pytest.raises(ValueError, match="not the config's members"):
    harness.SweepResult(config, {"members": metrics["members"][::-1]})


def test_an_interrupted_sweep_gives_none_and_resumes_to_the_same_result(tmp_path, images,
                                                                       finished):
  stop_after_first_epoch = lambda epoch, outputs: epoch == 1
  assert harness.run_sweeps({"tiny": _sweep()}, str(tmp_path), dataset=images,
                            callback=stop_after_first_epoch) is None
  assert train.read_status(str(tmp_path / "tiny"))["status"] == "interrupted"
  resumed = harness.run_sweeps({"tiny": _sweep()}, str(tmp_path), dataset=images)["tiny"]
  assert resumed.status["status"] == "done" and resumed.status["epochs_done"] == 2
  for m, n in zip(resumed.metrics["members"], finished[1].metrics["members"]):
    assert m["test_accuracy"] == n["test_accuracy"] and m["epochs"] == n["epochs"]


def test_a_finished_sweep_is_read_back_not_retrained(finished, images, monkeypatch, tmp_path):
  out_dir, result = finished
  shutil.copytree(os.path.join(out_dir, "tiny"), tmp_path / "tiny")
  os.remove(tmp_path / "tiny" / train.CHECKPOINT)   # as in the committed results/ folders

  def no_training(*args, **kwargs):
    raise AssertionError("a finished sweep was trained again")
  with monkeypatch.context() as patch:
    patch.setattr(train, "run", no_training)
    again = harness.run_sweeps({"tiny": _sweep()}, str(tmp_path), dataset=images)["tiny"]
  assert again.metrics == result.metrics and again.status == result.status
  # Another config (more epochs) cannot resume without the checkpoint: the message names the
  # way out; with overwrite it retrains.
  with pytest.raises(train.SetupError, match="--overwrite"):
    harness.run_sweeps({"tiny": _sweep(epochs=3)}, str(tmp_path), dataset=images)
  longer = harness.run_sweeps({"tiny": _sweep(epochs=3)}, str(tmp_path), dataset=images,
                              overwrite=True, keep_checkpoints=False)["tiny"]
  assert longer.status["epochs_done"] == 3
  assert not (tmp_path / "tiny" / train.CHECKPOINT).exists()


def test_a_finished_study_is_not_run_into_without_overwrite(tmp_path):
  harness.check_out_dir(str(tmp_path / "new"), "study.json", overwrite=False)
  assert not (tmp_path / "new").exists()   # checking creates nothing
  harness.save(str(tmp_path), "study.json", {"answer": 1})
  with pytest.raises(train.SetupError, match="finished study.*--overwrite"):
    harness.check_out_dir(str(tmp_path), "study.json", overwrite=False)
  harness.check_out_dir(str(tmp_path), "study.json", overwrite=True)
  assert io.read_json(tmp_path / "study.json") == {"answer": 1}
  with pytest.raises(train.SetupError, match="is a file"):
    harness.check_out_dir(str(tmp_path / "study.json"), "study.json", overwrite=True)


def test_start_refuses_then_loads_and_overwrite_removes_the_old_summary(tmp_path):
  harness.save(str(tmp_path), "study.json", {"answer": 1})
  loads = []
  load = lambda: loads.append(1) or "images"
  with pytest.raises(train.SetupError, match="--overwrite"):
    harness.start(str(tmp_path), "study.json", False, load)
  assert not loads and (tmp_path / "study.json").exists()   # refused before loading

  def unavailable():
    raise data.DataUnavailableError("no IDX files")
  with pytest.raises(data.DataUnavailableError):
    harness.start(str(tmp_path), "study.json", True, unavailable)
  assert (tmp_path / "study.json").exists()   # nothing replaced while the data is missing
  assert harness.start(str(tmp_path), "study.json", True, load, dataset="given") == "given"
  assert not (tmp_path / "study.json").exists() and not loads
  assert harness.start(str(tmp_path / "new"), "study.json", False, load) == "images"


def test_overwrite_trains_a_finished_sweep_afresh(finished, images, tmp_path):
  out_dir, result = finished
  shutil.copytree(os.path.join(out_dir, "tiny"), tmp_path / "tiny")
  trained = []
  again = harness.run_sweeps({"tiny": _sweep()}, str(tmp_path), dataset=images, overwrite=True,
                             callback=lambda epoch, outputs: trained.append(epoch))["tiny"]
  assert trained == [1, 2]
  # Training is deterministic: the same numbers as the first time.
  for m, n in zip(again.metrics["members"], result.metrics["members"]):
    assert m["test_accuracy"] == n["test_accuracy"] and m["epochs"] == n["epochs"]


def test_compare_matches_hand_computation():
  arm = np.array([0.80, 0.82, 0.81, np.nan, 0.83])
  none = np.array([0.79, 0.80, 0.81, 0.70, 0.80])
  d = np.array([0.01, 0.02, 0.0, 0.03])  # the NaN seed is dropped with its partner.
  result = harness.compare(arm, none)
  assert result["n_pairs"] == 4 and result["wins"] == 3
  assert result["mean_difference"] == pytest.approx(0.015, abs=1e-12)
  # t_{0.975, 3} = 3.182446305284263; paired t = 0.015 / (0.0129099 / 2) = 2.3238, p = 0.1028.
  assert result["ci95"] == pytest.approx(3.182446305284263 * np.std(d, ddof=1) / 2, rel=1e-9)
  assert result["p_value"] == pytest.approx(0.1028, abs=2e-4)
  assert result["verdict"] == "no difference resolved"
  assert harness.compare(arm - 0.1, none)["verdict"] == "worse"
  assert harness.compare(arm + 0.1, none)["verdict"] == "better"
  assert harness.compare(arm + 0.1, none, words=("yes", "no", "open"))["verdict"] == "yes"
  assert harness.compare([0.5, np.nan], [0.4, 0.4])["verdict"] == "undetermined"


def test_compare_matches_scipy_and_ignores_missing_seeds():
  a = np.array([0.81, 0.83, 0.80, np.nan, 0.84])
  b = np.array([0.80, 0.80, 0.81, 0.79, 0.82])
  d = harness.compare(a, b)
  diff = np.array([0.01, 0.03, -0.01, 0.02])
  assert d["n_pairs"] == 4 and d["wins"] == 3
  assert d["mean_difference"] == pytest.approx(diff.mean())
  half = scipy_stats.t.ppf(0.975, 3) * diff.std(ddof=1) / 2
  assert d["ci95"] == pytest.approx(half)
  assert d["p_value"] == pytest.approx(scipy_stats.ttest_1samp(diff, 0.0).pvalue)


def test_compare_family_adds_holm_by_hand():
  # Paired differences with t-test p-values of clearly different sizes, and one constant
  # difference (no p-value: left NaN and out of the family, so m = 3).
  base = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
  pairs = {"strong": (base + [0.05, 0.06, 0.05, 0.07, 0.06], base),
           "none": (base + 0.01, base),
           "weak": (base + [0.01, -0.02, 0.03, 0.00, 0.01], base),
           "medium": (base + [0.02, 0.00, 0.03, 0.01, 0.02], base)}
  family = harness.compare_family(pairs)
  p = {key: harness.compare(a, b)["p_value"] for key, (a, b) in pairs.items()}
  assert np.isnan(p["none"]) and p["strong"] < p["medium"] < p["weak"]
  # Holm with m = 3: 3 p_(1), max(that, 2 p_(2)), max(that, 1 p_(3)), capped at 1.
  strong = min(1.0, 3 * p["strong"])
  medium = max(strong, min(1.0, 2 * p["medium"]))
  weak = max(medium, min(1.0, p["weak"]))
  assert family["strong"]["p_holm"] == pytest.approx(strong, rel=1e-12)
  assert family["medium"]["p_holm"] == pytest.approx(medium, rel=1e-12)
  assert family["weak"]["p_holm"] == pytest.approx(weak, rel=1e-12)
  assert np.isnan(family["none"]["p_holm"])
  assert {r["family_size"] for r in family.values()} == {3}
  # The rest of each record is `compare`'s, with p_holm right after p_value.
  for key, (a, b) in pairs.items():
    record = {k: v for k, v in family[key].items() if k not in ("p_holm", "family_size")}
    np.testing.assert_equal(record, harness.compare(a, b))
    keys = list(family[key])
    assert keys[keys.index("p_value") + 1:keys.index("p_value") + 3] == ["p_holm", "family_size"]
  assert list(family) == list(pairs)


def test_resummarize_rewrites_only_what_the_update_adds(tmp_path):
  old = {"config": {"seeds": 2}, "paired": {"mean": 0.5, "p_value": 0.02, "wins": 2},
         "seconds": 3.0}
  io.write_json(str(tmp_path / "study.json"), old)

  def update(summary):
    paired = {"wins": 2, "p_value": 0.02, "p_holm": 0.04, "mean": 0.5}   # another key order
    return {"seconds": 3.0, "paired": paired, "config": summary["config"], "family": "m = 2"}

  new = harness.resummarize(str(tmp_path), "study.json", update)
  assert new == io.read_json(str(tmp_path / "study.json"))
  # The old key order, each new key after the one that precedes it in the update's output.
  assert list(new) == ["config", "family", "paired", "seconds"]
  assert list(new["paired"]) == ["mean", "p_value", "p_holm", "wins"]
  with pytest.raises(FileNotFoundError):
    harness.resummarize(str(tmp_path / "missing"), "study.json", update)


@dataclasses.dataclass(frozen=True)
class _Config:
  """A study config.

  Attributes:
    depths: layer counts.
    seeds: seeds per depth.
    dataset, data_dir: images.
    synthetic: synthetic images.
  """
  depths: Tuple[int, ...] = (2, 8)
  seeds: int = 5
  dataset: str = "fashion_mnist"
  data_dir: str = None
  synthetic: bool = False

  def __post_init__(self):
    harness.check_seeds(self)
    harness.check_data(self, ("mnist", "fashion_mnist"), "28 x 28")

  @classmethod
  def quick(cls, **overrides):
    return cls(**{"depths": (1,), "seeds": 2, "synthetic": True, **overrides})


def _config(*argv):
  return study_cli.parse(_Config, argv, out_dir="results/X")


def test_script_flags_build_the_config_and_quick_yields_to_explicit_flags():
  config, values = _config()
  assert config == _Config() and values["out_dir"].value == "results/X"
  assert not values["overwrite"].value
  assert _config("--quick")[0] == _Config.quick()
  assert _config("--quick", "--seeds=3", "--depths=4,16")[0] == _Config(
      depths=(4, 16), seeds=3, synthetic=True)
  assert _config("--seeds=3")[0] == _Config(seeds=3)


@pytest.mark.parametrize("argv, message", [
    (["--seeds=1"], "--seeds must be >= 2 for a confidence interval, got 1"),
    (["--quick", "--seeds=1"], "--seeds must be >= 2"),
    (["--depths=2,x"], "--depths must be comma-separated integers, got 'x'"),
    (["--dataset=cifar10"], "--dataset: unknown dataset 'cifar10'; choose one of mnist, "
                            "fashion_mnist (28 x 28)"),
    (["--data_dir=/no/such/folder"], "--data_dir '/no/such/folder' is not a directory"),
])
def test_bad_flags_are_one_line_naming_the_flag(argv, message):
  with pytest.raises(ValueError) as info:
    _config(*argv)
  assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_config_checks_word_each_mistake_once():
  @dataclasses.dataclass(frozen=True)
  class C:
    arms: Tuple[str, ...] = ("a",)
    lr: float = 0.1
    epochs: int = 1
    max_train_examples: int = 64
    batch_size: int = 16
  harness.check_choices(C(), "arms", ("a", "b"))
  for config, check, message in [
      (C(arms=("c",)), lambda c: harness.check_choices(c, "arms", ("a", "b")),
       "unknown arms entry 'c'; choose from a, b"),
      (C(arms=("a", "a")), lambda c: harness.check_choices(c, "arms", ("a", "b")), "arms repeat"),
      (C(arms=()), lambda c: harness.check_choices(c, "arms", ("a",), allow_empty=False),
       "arms is empty"),
      (C(lr=float("inf")), lambda c: harness.check_positive(c, ("lr",)), "lr must be > 0"),
      (C(epochs=0), lambda c: harness.check_at_least(c, ("epochs",)), "epochs must be >= 1"),
      (C(max_train_examples=8),
       lambda c: harness.check_examples(c, "max_train_examples", "batch_size"),
       r"max_train_examples \(8\) must be >= batch_size \(16\)")]:
    with pytest.raises(ValueError, match=message):
      check(config)
