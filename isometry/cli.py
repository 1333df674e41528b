"""What every command-line script shares: flags, and one-line errors with exit code 2.

A script's settings are declared once, as the fields of its config dataclass: `define_flags`
makes one absl flag per field (same name, the field's default, help from the class docstring's
"Attributes:" section, comma-separated lists for tuple fields) and `config_from_flags` builds the
config from the flags the user set. Bad values end in one line naming the flag.

absl's own flag errors (an unparsable value, an enum outside its choices) print a usage dump and
exit 1; `run` routes them through `fail` too, so a script rejects any bad flag the same way,
before any work. `--help` prints the script's docstring and flags and exits 0.
"""
import dataclasses
import os
import re
import sys
import time
import typing
from typing import Any, Dict, Optional

# First, before numpy and jax load: the runtime settings (one OpenBLAS thread, YNNPACK off).
from isometry import runtime  # noqa: F401  pylint: disable=unused-import

from absl import app, flags  # noqa: E402

from isometry import processes  # noqa: E402


def fail(message) -> None:
  """Prints `<script>: error: <message>` on one line to stderr and exits with code 2."""
  print(f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(message).split())}",
        file=sys.stderr)
  sys.exit(2)


def call(fn, *args, errors=(ValueError,), **kwargs):
  """Returns fn(*args, **kwargs); an exception of a type in `errors` becomes `fail(message)`.

  Scripts build their config and start their run through this, so bad settings and missing
  data end in one line and exit code 2 while any other exception keeps its traceback.
  """
  try:
    return fn(*args, **kwargs)
  except errors as e:
    fail(e)


def given_flags(names, numeric_lists=None) -> dict:
  """{name: value} of the flags in `names` that the user set, for a config's overrides.

  Args:
    names: flag names (the config's field names).
    numeric_lists: {name: int or float} for list flags whose items convert to that type.

  Raises:
    ValueError: a list item that does not convert (one line, naming the flag).
  """
  numeric_lists = numeric_lists or {}
  overrides = {}
  for name in names:
    if not flags.FLAGS[name].present:
      continue
    value = flags.FLAGS[name].value
    if name in numeric_lists:
      kind = numeric_lists[name]
      try:
        value = tuple(kind(v) for v in value)
      except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(f"--{name} must be comma-separated {noun}, got "
                         f"{','.join(value)!r}") from None
    overrides[name] = value
  return overrides


_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


def new_run_dir(name: str) -> str:
  """runs/<name>/<date-time>: a fresh default results folder (runs/ is git-ignored), so that
  running a script twice keeps both runs."""
  return os.path.join("runs", name, time.strftime("%Y%m%d-%H%M%S"))


def _parse_flags(argv):
  # absl exits with status 1 after --help; asking for help is not an error, so print the
  # script's docstring and flags ourselves and exit 0.
  if any(arg in _HELP for arg in argv[1:]):
    app.usage(shorthelp="--helpfull" not in argv[1:], writeto_stdout=True)
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(e)


def run(main) -> None:
  """`absl.app.run(main)` with one-line flag errors and no stray positional arguments."""
  def checked_main(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    return main(argv)
  app.run(checked_main, flags_parser=_parse_flags)


def define_run_flags(resume_help: str = "Continue the run in --out_dir from its checkpoint."
                     ) -> None:
  """--out_dir (required), --resume and --overwrite: the flags of a script that trains one run;
  and the process flags (`define_process_flags`). All listed by the script's --help."""
  # absl's --help lists a script's own flags by the module that defined them: the caller.
  caller = sys._getframe(1).f_globals.get("__name__")  # pylint: disable=protected-access
  module = sys.argv[0] if caller == "__main__" else caller
  flags.DEFINE_string("out_dir", None, "Results folder.", module_name=module)
  flags.DEFINE_boolean("resume", False, resume_help, module_name=module)
  flags.DEFINE_boolean("overwrite", False, "Replace the run in --out_dir.", module_name=module)
  flags.mark_flag_as_required("out_dir")
  define_process_flags(module_name=module)


# The flags of a run across processes: the arguments of `jax.distributed.initialize`.
PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id", "initialization_timeout")


def define_process_flags(*, flag_values=flags.FLAGS, module_name: Optional[str] = None) -> None:
  """--coordinator_address, --num_processes, --process_id, --initialization_timeout: one
  program over several processes (`isometry.processes`); none of the first three: one process."""
  define = dict(flag_values=flag_values, module_name=module_name)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, reachable from "
                      "every process (e.g. 127.0.0.1:12355 on one machine); with "
                      "--num_processes and --process_id the sweep's members spread over every "
                      "process's devices. Absent: one process.", **define)
  flags.DEFINE_integer("num_processes", None, "How many processes run this command (same flags "
                       "but --process_id).", **define)
  flags.DEFINE_integer("process_id", None, "This process's number, 0 .. --num_processes - 1; "
                       "process 0 coordinates and alone writes --out_dir.", **define)
  flags.DEFINE_float("initialization_timeout", processes.DEFAULT_TIMEOUT,
                     "Seconds a process waits for the others to start; then it ends with "
                     "exit code 2.", **define)


def initialize_processes(*, flag_values=flags.FLAGS) -> None:
  """Joins the processes the process flags name (nothing without them), comparing the flags
  each was given (all but --process_id must be equal). Call it first in main: before any jax
  computation, the config's included (a study's config may solve for its operating point). A
  failure ends in one line naming the flag and exit code 2."""
  given = {name: flag_values[name].value for name in flag_values
           if flag_values[name].present and name != "process_id"}
  try:
    processes.initialize(flag_values["coordinator_address"].value,
                         flag_values["num_processes"].value, flag_values["process_id"].value,
                         timeout=flag_values["initialization_timeout"].value, settings=given)
  except processes.ProcessesError as e:
    fail(name_the_flag(str(e), PROCESS_FLAGS))


def run_main(make_config, run_fn, errors=()):
  """The absl main of a training script: run_fn(make_config(), --out_dir, resume=, overwrite=),
  with a ValueError from the config, or one of `errors` from the run, ending in one line and
  exit code 2. With the process flags the processes meet first, comparing their flags."""
  def main(argv):
    del argv
    initialize_processes()
    config = call(make_config)
    values = flags.FLAGS
    call(run_fn, config, values.out_dir, resume=values.resume, overwrite=values.overwrite,
         errors=tuple(errors))
  return main


# ------------------------------------------------------------------- flags from a config class

def _field_help(cls) -> Dict[str, str]:
  """{field: help} from the "Attributes:" section of a Google-style class docstring.

  An entry is `name: text` (or `a, b: text` for several fields), continued on lines indented
  deeper than the name.
  """
  lines = (cls.__doc__ or "").splitlines()
  helps, current, indent, inside = {}, [], None, False
  for line in lines:
    stripped = line.strip()
    if stripped == "Attributes:":
      inside = True
      continue
    if not inside:
      continue
    if not stripped:
      continue
    depth = len(line) - len(line.lstrip())
    match = re.match(r"^([A-Za-z_][\w, ]*):\s*(.*)$", stripped)
    if match and (indent is None or depth <= indent):
      indent = depth
      current = [name.strip() for name in match.group(1).split(",")]
      for name in current:
        helps[name] = match.group(2)
    elif indent is not None and depth > indent:
      for name in current:
        helps[name] += " " + stripped
    else:
      break
  return helps


def _unwrap(annotation):
  """(item type, is_tuple) of int, float, str, bool, Optional[...] and Tuple[X, ...] fields."""
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin is typing.Union:
    inner = [a for a in args if a is not type(None)]
    if len(inner) == 1:
      return _unwrap(inner[0])
    if set(inner) == {int, float}:
      return float, False
  if origin in (tuple, typing.Tuple):
    return args[0], True
  return annotation, False


def _flag_value(value, is_tuple):
  if value is None:
    return None
  if is_tuple:
    return [str(v) for v in value]
  return value


def define_flags(cls, *, skip=(), aliases: Optional[Dict[str, str]] = None,
                 defaults: Optional[Dict[str, Any]] = None, flag_values=flags.FLAGS) -> None:
  """Defines one absl flag per field of the dataclass `cls` (but `skip`).

  Flags carry the field's name and default (or the script's own, from `defaults`); tuple
  fields are comma-separated lists. `aliases` maps extra flag names to fields (old names that
  scripts keep accepting).
  """
  helps = _field_help(cls)
  hints = typing.get_type_hints(cls)
  # absl lists a script's own flags under --help by the module that defined them: the caller.
  caller = sys._getframe(1).f_globals.get("__name__")  # pylint: disable=protected-access
  module = sys.argv[0] if caller == "__main__" else caller
  define = dict(flag_values=flag_values, module_name=module)
  for field in dataclasses.fields(cls):
    if field.name in skip or not field.init:
      continue
    kind, is_tuple = _unwrap(hints[field.name])
    default = field.default if field.default is not dataclasses.MISSING else None
    default = (defaults or {}).get(field.name, default)
    help_text = helps.get(field.name, field.name.replace("_", " ")) or field.name
    value = _flag_value(default, is_tuple)
    if is_tuple:
      flags.DEFINE_list(field.name, value, help_text, **define)
    elif kind is bool:
      flags.DEFINE_boolean(field.name, value, help_text, **define)
    elif kind is int:
      flags.DEFINE_integer(field.name, value, help_text, **define)
    elif kind is float:
      flags.DEFINE_float(field.name, value, help_text, **define)
    else:
      flags.DEFINE_string(field.name, value, help_text, **define)
  for alias, name in (aliases or {}).items():
    flags.DEFINE_alias(alias, name, flag_values=flag_values)


def _parse_item(name: str, kind, text: str):
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    return kind(text)
  except ValueError:
    noun = {int: "integers", float: "numbers", bool: "booleans"}.get(kind, "values")
    raise ValueError(f"--{name} must be comma-separated {noun}, got {text!r}") from None


def flag_overrides(cls, *, skip=(), flag_values=flags.FLAGS, present_only: bool = True
                   ) -> Dict[str, Any]:
  """{field: value} for the fields of `cls` with a flag, converted to the fields' types: those
  the user set (or with `present_only=False` every flag, at its default where not set).

  Raises:
    ValueError: a list item that does not convert (one line, naming the flag).
  """
  hints = typing.get_type_hints(cls)
  overrides = {}
  for field in dataclasses.fields(cls):
    if field.name in skip or field.name not in flag_values:
      continue
    if present_only and not flag_values[field.name].present:
      continue
    kind, is_tuple = _unwrap(hints[field.name])
    value = flag_values[field.name].value
    if is_tuple and value is not None:
      value = tuple(_parse_item(field.name, kind, item) for item in value)
    overrides[field.name] = value
  return overrides


def name_the_flag(message: str, names) -> str:
  """The message of an error raised by a config, naming the flag: "width must be > 0" ->
  "--width must be > 0", "unknown weights 'x'" -> "--weights: unknown weights 'x'" (the first
  flag name the message mentions)."""
  for name in names:
    if re.match(rf"^{re.escape(name)}\b", message):
      return "--" + message
  found = [(m.start(), name) for name in names
           for m in [re.search(rf"(?<![\w-]){re.escape(name)}\b", message)] if m]
  return f"--{min(found)[1]}: {message}" if found else message


def config_from_flags(cls, *, skip=(), flag_values=flags.FLAGS, **fixed):
  """The config the command line asks for: every field with a flag from it (at the flag's
  default where the user did not set it: the field's, or the script's own), `fixed` for the
  others; a flag the user set wins over `fixed`.

  Raises:
    ValueError: a bad value, one line naming its flag.
  """
  every = flag_overrides(cls, skip=skip, flag_values=flag_values, present_only=False)
  given = flag_overrides(cls, skip=skip, flag_values=flag_values)
  try:
    return cls(**{**every, **fixed, **given})
  except ValueError as e:
    raise ValueError(name_the_flag(str(e), [f.name for f in dataclasses.fields(cls)])) from None
