"""run() on a tiny grid into tmp_path, and scripts/phase_diagram.py's flags (exit 2 when bad)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from isometry.results import io
from isometry.theory import meanfield
from isometry.studies import phase_diagram

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "phase_diagram.py")


def test_run_smoke(tmp_path):
  config = phase_diagram.PhaseDiagramConfig(grid=5, q_star_marks=(0.25, 1.0, 50.0))
  result = phase_diagram.run(config, str(tmp_path))
  written = io.read_json(tmp_path / "phase_diagram.json")
  assert written["config"]["grid"] == 5 and written["config"]["activation"] == "tanh"
  assert written["sigma_w2"][0] == 0.5 and written["sigma_w2"][-1] == 4.0
  chi = np.array(written["chi"])
  assert chi.shape == (5, 5)
  np.testing.assert_allclose(chi, result["chi"])
  np.testing.assert_allclose(
      chi[2, 3], meanfield.chi("tanh", np.sqrt(written["sigma_w2"][2]),
                               np.sqrt(written["sigma_b2"][3])), rtol=1e-9)  # 10 digits
  for field in ("q_star", "c_star", "xi_q", "xi_c"):
    assert np.array(written[field]).shape == (5, 5)
  # q* = 50 lies outside the window and is dropped; the others are on the line chi = 1.
  assert [p["q_star"] for p in written["critical_points"]] == [0.25, 1.0]
  for point in written["critical_points"]:
    np.testing.assert_allclose(
        meanfield.chi("tanh", np.sqrt(point["sigma_w2"]), np.sqrt(point["sigma_b2"])), 1.0,
        rtol=1e-10)
  with open(tmp_path / "phase_diagram.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_run_relu_writes_infinite_q_star(tmp_path):
  config = phase_diagram.PhaseDiagramConfig(activation="relu", grid=3)
  phase_diagram.run(config, str(tmp_path))
  written = io.read_json(tmp_path / "phase_diagram.json")
  assert np.isinf(written["q_star"][-1][-1])      # sigma_w^2 = 4: q grows without bound
  assert written["chi"][-1][-1] == 2.0


@pytest.mark.parametrize("changes,message", [
    (dict(activation="swish"), "unknown activation"),
    (dict(sigma_w2_max=0.4), "sigma_w2"),
    (dict(sigma_b2_max=0.0), "sigma_b2"),
    (dict(grid=1), "grid"),
])
def test_config_validation(tmp_path, changes, message):
  config = phase_diagram.PhaseDiagramConfig(**changes)
  with pytest.raises(ValueError, match=message):
    phase_diagram.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flag", ["--grid=1", "--activation=swish", "--sigma_w2_max=abc"])
def test_script_bad_flags_exit_2(tmp_path, flag):
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, SCRIPT, flag, f"--out_dir={out}"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "error" in lines[0]
  assert not out.exists()
