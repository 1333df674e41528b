import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isometry.theory import jacobian
from isometry.studies import spectra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_writes_json_and_png_and_theory_matches_small_networks(tmp_path):
  config = spectra.SpectraConfig(depths=(3,), width=64, num_networks=2, grid_points=200)
  result = spectra.run(config, str(tmp_path))
  saved = json.loads((tmp_path / "spectra.json").read_text())
  assert (tmp_path / "spectra.png").stat().st_size > 10_000
  assert [(c["weights"], c["depth"]) for c in saved["cases"]] == [("orthogonal", 3), ("gaussian", 3)]
  for case in result["cases"]:
    assert case["chi"] == pytest.approx(1.0, abs=1e-9)
    assert case["theory"]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert len(case["theory"]["density"]) == len(case["theory"]["lambdas"]) >= 190
    # 128 eigenvalues from width-64 networks: the KS statistic of an i.i.d. sample of that size
    # exceeds 0.15 with probability < 2%, and Jacobian eigenvalues are more regular than i.i.d.;
    # the finite-width bias at N = 64, L = 3 is a few percent (THEORY.md: <= 0.02 at N = 1000).
    assert case["ks_distance"] < 0.15
    assert set(case["empirical"]) >= {"mean", "variance", "mean_standard_error",
                                      "variance_standard_error", "mean_z_score"}


@pytest.mark.parametrize("flags, message", [
    (["--activation=swish"], "unknown activation"),
    (["--depths=0"], "depths"),
    (["--sigma_w=-1", "--sigma_b=0"], "sigma_w"),
    (["--sigma_w=1"], "both sigma_w and sigma_b"),
    (["--q_star=-1"], "q_star"),
    (["--width=abc"], "width"),
    (["--weights=uniform"], "--weights"),
    (["--depths=2,x"], "--depths must be comma-separated integers"),
    (["--samples=0"], "--num_networks must be >= 2"),
])
def test_script_rejects_bad_input_with_one_line_and_exit_2(flags, message, tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "spectra.py"),
                         f"--out_dir={tmp_path}", *flags], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if "error" in line]
  assert len(errors) == 1 and message in errors[0], proc.stderr
  assert not os.listdir(tmp_path)


def test_script_never_overwrites_a_run(tmp_path):
  (tmp_path / "spectra.json").write_text("{}")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "spectra.py"),
                         f"--out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "--overwrite" in proc.stderr.splitlines()[-1]
  assert (tmp_path / "spectra.json").read_text() == "{}"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "spectra.py"),
                         f"--out_dir={tmp_path / 'spectra.json'}"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and "is a file" in proc.stderr.splitlines()[-1]


def test_each_depth_is_the_prefix_of_the_deepest_network(key):
  """The comparison's samples come from one chain per network (`depth` as a sequence)."""
  prefix = jacobian.jacobian_squared_singular_values(key, "tanh", "orthogonal", 1.2, 0.1,
                                                     (1, 3), 6, 2)
  for i, depth in enumerate((1, 3)):
    alone = jacobian.jacobian_squared_singular_values(key, "tanh", "orthogonal", 1.2, 0.1,
                                                      depth, 6, 2)
    np.testing.assert_allclose(prefix[i], alone, rtol=1e-12, atol=1e-14)
