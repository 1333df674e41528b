import json
import os

import numpy as np
import pytest

from isometry.results import io


def test_write_json_round_trips_arrays_and_keeps_number_lists_on_one_line(tmp_path):
  path = tmp_path / "a.json"
  data = {"grid": np.linspace(0, 1, 1000), "nested": {"x": [1, [2, 3]], "bad": [np.nan, -np.inf]}}
  io.write_json(str(path), data)
  back = io.read_json(str(path))
  np.testing.assert_array_equal(back["grid"], data["grid"])
  assert back["nested"]["x"] == [1, [2, 3]] and np.isnan(back["nested"]["bad"][0])
  assert len(path.read_text().splitlines()) < 20


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
  path = tmp_path / "a.json"
  io.write_json(str(path), {"epoch": 1})
  with pytest.raises(TypeError):
    io.write_json(str(path), {"epoch": 2, "oops": object()})
  assert json.loads(path.read_text()) == {"epoch": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_get_ordinary_permissions(tmp_path):
  path = tmp_path / "a.json"
  io.write_json(str(path), {})
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_prepare_out_dir_refuses_files_and_earlier_runs(tmp_path):
  file = tmp_path / "file"
  file.write_text("")
  with pytest.raises(ValueError, match="is a file"):
    io.prepare_out_dir(str(file), ("a.json",))
  run = tmp_path / "run"
  io.prepare_out_dir(str(run), ("a.json",))          # Created, empty: fine.
  (run / "a.json").write_text("{}")
  with pytest.raises(ValueError, match="earlier run's a.json.*--overwrite"):
    io.prepare_out_dir(str(run), ("a.json", "b.png"))
  io.prepare_out_dir(str(run), ("a.json",), overwrite=True)
  assert (run / "a.json").read_text() == "{}"     # Replaced by the run, not by the check.


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_out_dir_refuses_a_folder_it_cannot_write(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  with pytest.raises(ValueError, match="cannot be written"):
    io.prepare_out_dir(str(locked))
