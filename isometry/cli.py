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
