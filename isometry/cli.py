"""What every command-line script shares: bad input ends in one line on stderr and exit code 2.

absl's own flag errors (an unparsable value, an enum outside its choices) print a usage dump and
exit 1; `run` routes them through `fail` too, so a script rejects any bad flag the same way,
before any work.
"""
import os
import sys

from absl import app, flags


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


def _parse_flags(argv):
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
