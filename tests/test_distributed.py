"""A sweep across processes (`isometry.processes`): two processes of two CPU devices each give
exactly the per-member metrics of one process of four devices, also when the run is stopped after
an epoch and resumed; only process 0 writes; processes that cannot meet, or that were started
with other flags, end in one line and exit code 2 within their timeout.

Each process is a child started here on 127.0.0.1 (a free port), killed if it outlives its
timeout. Equality is exact: both layouts run the same per-device program on the same four
members (three and one padding), so there is no tolerance to choose.
"""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from isometry import processes
from isometry.results import io

import small_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run in one child process. argv: process id, number of processes, port, dataset .npz,
# config.json, out_dir, then the epochs after which the last process asks to stop (each stop
# ends a leg; every leg but the first resumes in the same process, without compiling again).
# A process other than 0 that writes into out_dir, or takes its lock, fails; a SetupError ends
# the process as in a script (one line, exit code 2). Each leg's status and epoch count go to
# <out_dir>.process<id>.legs (not stdout, where gloo prints too).
_DRIVER = """
import sys
from isometry import cli
import numpy as np
from isometry import data, processes
from isometry.results import io
from isometry.engine import train
from isometry.engine.train import records
process_id, num_processes, port = map(int, sys.argv[1:4])
data_path, config_path, out_dir = sys.argv[4:7]
stops = [int(e) for e in sys.argv[7:]]
if num_processes > 1:
  # The config is left out of the flags compared here: `train.run` compares it.
  processes.initialize(f"127.0.0.1:{port}", num_processes, process_id, timeout=30,
                       settings=[data_path, out_dir, stops])
if process_id > 0:
  def forbidden(*args, **kwargs):
    raise AssertionError(f"process {process_id} writes into out_dir")
  io.atomic_path = forbidden
  records.RunLock.__enter__ = forbidden
arrays = np.load(data_path)
dataset = data.Dataset(*(arrays[k] for k in data.Dataset._fields))
config = train.TrainConfig.from_dict(io.read_json(config_path))
for stop in stops + [None]:
  ask = lambda epoch, _: process_id == num_processes - 1 and epoch == stop
  result = cli.call(train.run, config, out_dir, dataset=dataset, plots=False, resume=True,
                    callback=ask, errors=(train.SetupError,))
  with open(f"{out_dir}.process{process_id}.legs", "a") as legs:
    legs.write(f"{result.status} {len(result.metrics['members'][0]['epochs'])}\\n")
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def _finish(children, timeout: float):
  """(returncode, stdout, stderr) of each child; every one is killed at the end, so nothing
  outlives the test."""
  deadline = time.monotonic() + timeout
  results = []
  try:
    for child in children:
      try:
        out, err = child.communicate(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        pytest.fail(f"a child did not finish in {timeout} s: {child.args}")
      results.append((child.returncode, out, err))
  finally:
    for child in children:
      child.kill()
      child.wait()
  return results


def _start(args, devices: int):
  return subprocess.Popen([sys.executable] + args, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO)


def _inputs(tmp_path, name="config", **overrides):
  """(dataset .npz, <name>.json) of a small sweep: three members on a synthetic task."""
  config = small_sweep.config(**overrides)
  dataset = small_sweep.dataset()
  data_path = str(tmp_path / "data.npz")
  config_path = str(tmp_path / f"{name}.json")
  np.savez(data_path, **dataset._asdict())
  io.write_json(config_path, config.to_dict())
  return data_path, config_path


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_of_four_and_resume(tmp_path):
  data_path, config_path = _inputs(tmp_path)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  port = str(_free_port())
  children = [_start(["-c", _DRIVER, "0", "1", "0", data_path, config_path, one], 4)]
  children += [_start(["-c", _DRIVER, str(i), "2", port, data_path, config_path, two, "1"], 2)
               for i in range(2)]
  for code, _, err in _finish(children, timeout=300):
    assert code == 0, err[-3000:]

  def legs(out_dir, process_id):
    with open(f"{out_dir}.process{process_id}.legs") as f:
      return f.read().splitlines()
  assert legs(one, 0) == ["done 2"]
  for process_id in (0, 1):
    # Stopped by process 1 after epoch 1 on both processes, then resumed to the end.
    assert legs(two, process_id) == ["interrupted 1", "done 2"]
  status = io.read_json(os.path.join(two, "status.json"))
  assert (status["num_processes"], status["num_devices"], status["status"]) == (2, 4, "done")
  assert io.read_json(os.path.join(one, "status.json"))["num_devices"] == 4
  want = io.read_json(os.path.join(one, "metrics.json"))
  got = io.read_json(os.path.join(two, "metrics.json"))
  assert [m["status"] for m in got["members"]] == ["done", "done", "diverged"]
  assert got["members"] == want["members"]
  assert got["configs"] == want["configs"]
  with np.load(os.path.join(one, "spectra.npz")) as a, np.load(os.path.join(two, "spectra.npz")) \
      as b:
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name])


def _script(process_id: int, port: int, *flags):
  return ["scripts/train_rnn.py", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", f"--process_id={process_id}", "--initialization_timeout=3",
          "--out_dir=/nonexistent/never/written"] + list(flags)


def _one_line(err: str, script: str = "train_rnn.py") -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), err[-2000:]
  return lines[0]


def test_a_process_that_meets_no_peer_ends_in_one_line():
  """Process 1 with no coordinator listening, and process 0 whose peer never comes: each ends
  with exit code 2 and one line within its 3 s timeout (plus the interpreter's start)."""
  start = time.monotonic()
  lone_peer, lone_coordinator = _free_port(), _free_port()
  results = _finish([_start(_script(1, lone_peer), 1), _start(_script(0, lone_coordinator), 1)],
                    timeout=60)
  assert time.monotonic() - start < 20
  (code_peer, _, err_peer), (code_coordinator, _, err_coordinator) = results
  assert code_peer == 2 and code_coordinator == 2
  assert (f"cannot reach the coordinator at 127.0.0.1:{lone_peer} within 3 s"
          in _one_line(err_peer))
  assert "process(es) 1 of 2 did not reach the coordinator" in _one_line(err_coordinator)


def test_processes_started_with_other_flags_end_in_one_line():
  start = time.monotonic()
  port = _free_port()
  results = _finish([_start(_script(0, port, "--hidden=8"), 1),
                     _start(_script(1, port, "--hidden=16"), 1)], timeout=60)
  assert time.monotonic() - start < 20
  for code, _, err in results:
    assert code == 2
    assert "process 1 was started with other settings than process 0" in _one_line(err)


def test_processes_given_other_train_configs_stop_before_any_work(tmp_path):
  """Through the library (no flags to compare): `train.run` compares a hash of the TrainConfig
  across processes, and every process ends in one line before out_dir is created."""
  data_path, config_path = _inputs(tmp_path)
  _, other_config_path = _inputs(tmp_path, "other", hidden=16)
  out_dir = str(tmp_path / "never")
  port = str(_free_port())
  start = time.monotonic()
  results = _finish([_start(["-c", _DRIVER, str(i), "2", port, data_path, path, out_dir], 1)
                     for i, path in enumerate((config_path, other_config_path))], timeout=60)
  assert time.monotonic() - start < 30
  for code, _, err in results:
    assert code == 2, err[-3000:]
    line = _one_line(err, "-c")
    assert "processes disagree on the sweep (a hash of its TrainConfig): process(es) 1" in line
  assert not os.path.exists(out_dir)


def test_a_study_script_names_a_missing_process_flag():
  results = _finish([_start(["scripts/study_accuracy.py", "--quick", "--num_processes=2",
                             "--process_id=1", "--out_dir=/nonexistent/never/written"], 1)],
                    timeout=60)
  code, _, err = results[0]
  assert code == 2
  assert _one_line(err, "study_accuracy.py").endswith(
      "--coordinator_address is needed too, where num_processes and process_id are given")


def test_process_flags_are_checked_before_anything_starts():
  with pytest.raises(processes.ProcessesError, match="process_id is needed too"):
    processes.check_settings("127.0.0.1:1234", 2, None, 10)
  with pytest.raises(processes.ProcessesError, match="host:port"):
    processes.check_settings("127.0.0.1", 2, 0, 10)
  with pytest.raises(processes.ProcessesError, match=r"process_id must be in \[0, 2\)"):
    processes.check_settings("127.0.0.1:1234", 2, 2, 10)
  assert not processes.check_settings(None, None, None, 10)
  assert processes.check_settings("h:1", 2, 1, 10)
  # Absent settings: one process, and nothing is started.
  assert not processes.initialize()


def test_disagreement_names_the_processes_that_differ():
  assert processes.disagreement(["a", "a", "a"], "the config") is None
  message = processes.disagreement(["a", "b", "a", "c"], "the config")
  assert message.startswith("processes disagree on the config: process(es) 1, 3 differ")
  assert "'b' against 'a'" in message
  assert processes.fingerprint({"x": (1, 2), "y": 1}) == processes.fingerprint({"y": 1,
                                                                                "x": [1, 2]})
  assert processes.fingerprint({"x": 1}) != processes.fingerprint({"x": 2})


def test_one_process_gathers_and_agrees_by_itself():
  assert processes.count() == 1 and processes.is_writer()
  assert processes.allgather_text("ünïcode") == ["ünïcode"]
  assert processes.any_process(True) and not processes.any_process(False)
  processes.barrier("nothing to wait for")
