"""The scripts' shared command line: flags derived from a config class, one-line errors that
name the flag, --help with exit status 0."""
import dataclasses
import os
import subprocess
import sys
from typing import Optional, Tuple

import pytest
from absl import flags

from isometry import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class _Config:
  """A config as the scripts have them.

  Attributes:
    width: units per layer; a help text that goes on
      over two lines.
    depths: layer counts.
    rate: a rate, or None.
    name: a name.
    fast: a switch.
  """
  width: int = 8
  depths: Tuple[int, ...] = (2, 4)
  rate: Optional[float] = None
  name: str = "tanh"
  fast: bool = False

  def __post_init__(self):
    if self.width < 1:
      raise ValueError(f"width must be >= 1, got {self.width}")
    if self.name not in ("tanh", "relu"):
      raise ValueError(f"unknown name {self.name!r}")


def _parse(argv):
  values = flags.FlagValues()
  cli.define_flags(_Config, flag_values=values, aliases={"layers": "depths"})
  values(["prog"] + argv)
  return values


def test_flags_carry_the_fields_defaults_and_help():
  values = _parse([])
  assert values["width"].default == 8 and values["depths"].default == ["2", "4"]
  assert values["rate"].default is None and values["fast"].default is False
  assert values["width"].help == "units per layer; a help text that goes on over two lines."
  assert cli.config_from_flags(_Config, flag_values=values) == _Config()


def test_only_the_flags_given_override_the_config():
  values = _parse(["--depths=3,5,7", "--rate=0.5", "--fast"])
  assert cli.config_from_flags(_Config, flag_values=values) == _Config(
      depths=(3, 5, 7), rate=0.5, fast=True)
  values = _parse(["--layers=9"])
  assert cli.config_from_flags(_Config, flag_values=values).depths == (9,)


@pytest.mark.parametrize("argv, message", [
    (["--depths=2,x"], "--depths must be comma-separated integers, got 'x'"),
    (["--width=0"], "--width must be >= 1, got 0"),
    (["--name=swish"], "--name: unknown name 'swish'"),
])
def test_bad_values_name_their_flag(argv, message):
  values = _parse(argv)
  with pytest.raises(ValueError) as info:
    cli.config_from_flags(_Config, flag_values=values)
  assert str(info.value) == message


def test_new_run_dirs_live_under_runs():
  path = cli.new_run_dir("spectra")
  parts = path.split(os.sep)
  assert parts[:2] == ["runs", "spectra"] and len(parts[2]) == len("20261203-081500")


def test_help_exits_0_and_lists_the_scripts_flags():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "spectra.py"), "--help"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "--num_networks" in proc.stdout and "--out_dir" in proc.stdout
  assert "Free probability" in proc.stdout
