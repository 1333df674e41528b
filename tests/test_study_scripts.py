"""Every study script: its flags are its config's fields (parsed in-process, as the script parses
them), a bad value is one line naming its flag, missing data stops a study before it writes a
file, and each script, run as a process, turns a bad command line into one line and exit code 2.
(Study A's script also runs end to end in test_gradient_study.)"""
import os
import subprocess
import sys

import pytest

from isometry import data
from isometry.studies import accuracy
from isometry.studies import benefit
from isometry.studies import cli as study_cli
from isometry.studies import constraints
from isometry.studies import convergence
from isometry.studies import gradients
from isometry.studies import rnn_gain
from isometry.studies import seed_claim
from isometry.studies import seed_claim_binding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = (accuracy, benefit, constraints, convergence, gradients, rnn_gain, seed_claim,
           seed_claim_binding)
# The scripts' extra flag names (scripts/study_rnn_gain.py keeps its old --reg).
ALIASES = {rnn_gain: {"reg": "regularizer"}}


def _parse(study, argv):
  return study_cli.parse(study.StudyConfig, argv, aliases=ALIASES.get(study))[0]


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.__name__.split(".")[-1])
def test_no_flags_give_the_default_config(study):
  assert _parse(study, []) == study.StudyConfig()


@pytest.mark.parametrize("study, argv, expected", [
    (accuracy, ["--quick", "--depths=2,4", "--lr=0.1"],
     accuracy.StudyConfig.quick(depths=(2, 4), lr=0.1)),
    (benefit, ["--max_train_examples=0", "--tasks=", "--depths=2,64"],   # 0: all examples
     benefit.StudyConfig(max_train_examples=None, tasks=(), depths=(2, 64))),
    (constraints, ["--quick", "--margins=", "--arms=none,soft", "--hidden=4"],
     constraints.StudyConfig.quick(margins=(), arms=("none", "soft"), hidden=4)),
    (convergence, ["--quick", "--tanh_depths=1,2", "--synthetic=false"],
     convergence.StudyConfig.quick(tanh_depths=(1, 2), synthetic=False)),
    (gradients, ["--quick", "--rnn_gains=1.5", "--sigma_b=0,0,0.1"],
     gradients.StudyConfig.quick(rnn_gains=(1.5,), sigma_b=(0.0, 0.0, 0.1))),
    (rnn_gain, ["--quick", "--reg=notebook_so", "--seeds=3"],
     rnn_gain.StudyConfig.quick(regularizer="notebook_so", seeds=3)),
    (seed_claim, ["--quick", "--presets=configs2", "--data_dir="],
     seed_claim.StudyConfig.quick(presets=("configs2",), data_dir="")),
], ids=lambda x: x.__name__.split(".")[-1] if hasattr(x, "__name__") else "")
def test_quick_takes_the_flags_given_on_top(study, argv, expected):
  config = _parse(study, argv)
  assert config == expected
  assert config.synthetic == ("--synthetic=false" not in argv and "--quick" in argv)


@pytest.mark.parametrize("study, argv, message", [
    (accuracy, ["--optimizer=lbfgs"], "--optimizer: unknown optimizer 'lbfgs'"),
    (accuracy, ["--seeds=1"], "--seeds must be >= 2 for a confidence interval, got 1"),
    (accuracy, ["--depths=2,2"], "--depths must be distinct"),
    (benefit, ["--tasks=permuted"], "--tasks: unknown tasks entry 'permuted'"),
    (benefit, ["--depths=2,x"], "--depths must be comma-separated integers, got 'x'"),
    (benefit, ["--seeds=1"], "--seeds must be >= 2"),
    (constraints, ["--margins=2"], "--margins must be in [0, 1], got 2"),
    (constraints, ["--arms=none,hard"], "--arms: unknown arms entry 'hard'"),
    (constraints, ["--quick", "--seeds=1"], "--seeds must be >= 2"),
    (constraints, ["--dataset=cifar10"], "--dataset: unknown dataset 'cifar10'"),
    (convergence, ["--linear_out=64"], "--linear_out (64) must be < linear_width (32)"),
    (convergence, ["--tanh_depths=2,x"], "--tanh_depths must be comma-separated integers"),
    (convergence, ["--q_star=-1"], "--q_star must be > 0"),
    (gradients, ["--sigma_b=0.1"], "--sigma_b needs one value per activation (3), got 1"),
    (gradients, ["--sigma_w_factors=1,x"], "--sigma_w_factors must be comma-separated numbers"),
    (gradients, ["--depth=1"], "--depth must be >= 2 to fit a slope"),
    (rnn_gain, ["--seeds=1"], "--seeds must be >= 2"),
    (rnn_gain, ["--hand_gains=1,abc"], "--hand_gains must be comma-separated numbers"),
    (rnn_gain, ["--dataset=cifar10"], "--dataset: unknown dataset 'cifar10'; choose one of "
                                      "mnist, fashion_mnist (28 x 28"),
    (rnn_gain, ["--reg_strength=0"], "--reg_strength must be > 0"),
    (rnn_gain, ["--reg=l3"], "--regularizer: unknown regularizer 'l3'"),
    (rnn_gain, ["--data_dir=/no/such/folder"], "--data_dir '/no/such/folder' is not a directory"),
    (seed_claim, ["--presets=configs9"], "--presets: unknown presets entry 'configs9'"),
    (seed_claim, ["--formulas="], "--formulas is empty"),
])
def test_a_bad_value_is_one_line_naming_its_flag(study, argv, message):
  with pytest.raises(ValueError) as info:
    _parse(study, argv)
  assert str(info.value).startswith(message), str(info.value)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.__name__.split(".")[-1])
def test_missing_data_stops_the_study_before_any_file(study, tmp_path):
  empty, out = tmp_path / "empty", tmp_path / "out"
  empty.mkdir()
  with pytest.raises(data.DataUnavailableError, match="IDX"):
    study.run(study.StudyConfig(data_dir=str(empty)), str(out))
  assert not out.exists()


def _script(name, *argv):
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *argv],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("script, argv, word", [
    ("study_accuracy.py", ["--seeds=1"], "seeds must be >= 2"),
    ("study_benefit.py", ["--tasks=permuted"], "permuted"),
    ("study_constraints.py", ["--margins=2"], "margins"),
    ("study_convergence.py", ["--data_dir={tmp}"], "IDX"),     # data read, then refused
    ("study_rnn_gain.py", ["stray"], "unexpected arguments"),
    ("seed_claim.py", ["--presets=configs9"], "configs9"),
    ("seed_claim_binding.py", ["--strengths=1,-1"], "strengths must be > 0"),
])
def test_a_script_rejects_a_bad_command_line_with_one_line_and_exit_2(tmp_path, script, argv,
                                                                      word):
  out = tmp_path / "out"
  proc = _script(script, *[a.format(tmp=tmp_path) for a in argv], f"--out_dir={out}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and word in lines[0], proc.stderr
  assert not out.exists()


def test_a_script_stops_at_a_finished_study_unless_overwrite(tmp_path):
  (tmp_path / "gradients.json").write_text("{}")
  proc = _script("study_gradients.py", "--quick", f"--out_dir={tmp_path}")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "finished study" in lines[0] and "--overwrite" in lines[0]
  assert os.listdir(tmp_path) == ["gradients.json"]
