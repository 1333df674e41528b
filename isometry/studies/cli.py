"""The study scripts' command line, declared once for all of them.

A study script is its docstring and four statements:

    cli.define_flags(accuracy.StudyConfig)          # one flag per config field (isometry.cli)
    main = study_cli.main(accuracy.StudyConfig, accuracy.run, "results/C_accuracy")
    if __name__ == "__main__":
      cli.run(main)

`main` adds --quick (the config's `quick()`, which the flags given explicitly still override),
--out_dir (the study's results folder by default; running again into it continues an interrupted
study) and --overwrite (replace a finished study there), and returns the absl main: bad flags end
in one line naming the flag and exit code 2 before any work, as do missing data and a folder that
holds a finished study.
"""
import dataclasses
import sys
from typing import Callable, Optional

from absl import flags

from isometry import cli
from isometry import data
from isometry.engine import train


def define_script_flags(out_dir: str, *, flag_values=flags.FLAGS,
                        module_name: Optional[str] = None) -> None:
  """--quick, --out_dir (default `out_dir`) and --overwrite; and the process flags
  (`isometry.cli.define_process_flags`)."""
  define = dict(flag_values=flag_values, module_name=module_name)
  flags.DEFINE_boolean("quick", False, "A smoke run in seconds (the config's quick() settings, "
                       "often on synthetic images); flags given explicitly still override it.",
                       **define)
  flags.DEFINE_string("out_dir", out_dir, "Results folder; running the same command again "
                      "continues an interrupted study there.", **define)
  flags.DEFINE_boolean("overwrite", False, "Replace the finished study found in --out_dir, "
                       "training every sweep afresh (without it the script stops there, "
                       "changing nothing).", **define)
  cli.define_process_flags(**define)


def config_from_flags(config_class, *, flag_values=flags.FLAGS):
  """The config the command line asks for: config_class(...) or, with --quick,
  config_class.quick(...), with the flags the user set.

  Raises:
    ValueError: a bad value, one line naming its flag.
  """
  overrides = cli.flag_overrides(config_class, flag_values=flag_values)
  make = config_class.quick if flag_values["quick"].value else config_class
  try:
    return make(**overrides)
  except ValueError as e:
    names = [field.name for field in dataclasses.fields(config_class)]
    raise ValueError(cli.name_the_flag(str(e), names)) from None


def parse(config_class, argv, *, aliases=None, out_dir: str = "out"):
  """(config, flag values) that a script's command line `argv` (without the program name) asks
  for, parsed on fresh flags as the script parses them: how tests and notebooks check a command
  line without starting a process.

  Raises:
    ValueError: a bad value, one line naming its flag (absl's own flags.Error for a value of
      the wrong type).
  """
  values = flags.FlagValues()
  cli.define_flags(config_class, aliases=aliases, flag_values=values)
  define_script_flags(out_dir, flag_values=values)
  values(["script"] + list(argv))
  return config_from_flags(config_class, flag_values=values), values


def main(config_class, run: Callable, out_dir: str) -> Callable[[list], None]:
  """Defines the script flags beside the config's and returns the script's absl main.

  Args:
    config_class: the study's config dataclass, with a `quick(**overrides)` classmethod (its
      flags are defined by `isometry.cli.define_flags`).
    run: the study's run(config, out_dir, overwrite=...).
    out_dir: the default --out_dir.
  """
  # absl's --help lists a script's flags by the module that defined them: the script.
  caller = sys._getframe(1).f_globals.get("__name__")  # pylint: disable=protected-access
  define_script_flags(out_dir, module_name=sys.argv[0] if caller == "__main__" else caller)

  def study_main(argv):
    del argv
    cli.initialize_processes()
    config = cli.call(config_from_flags, config_class)
    # Missing data and a finished study in --out_dir are raised before any work.
    cli.call(run, config, flags.FLAGS.out_dir, overwrite=flags.FLAGS.overwrite,
             errors=(data.DataUnavailableError, train.SetupError))

  return study_main
