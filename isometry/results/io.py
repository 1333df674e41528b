"""Atomic result files: a reader never sees a half-written JSON, PNG or checkpoint.

Each writer writes to a temporary file in the destination's folder and renames it over the
destination (`os.replace` is atomic on POSIX), so an interrupted run leaves either the previous
complete file or the new complete file.
"""
import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; on success renames it to `path`, else removes it."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  # mkstemp makes the file private (0600); results are ordinary files, readable as umask allows.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def prepare_out_dir(path: str, outputs: Sequence[str] = (), *, overwrite: bool = False) -> None:
  """Makes `path` ready to receive a run's result files, before the run does any work.

  Args:
    path: the results folder (created if missing).
    outputs: names of the files the run writes there; finding one means an earlier run's
      results are there.
    overwrite: replace an earlier run's results instead of refusing.

  Raises:
    ValueError: `path` is a file, holds an earlier run's results without `overwrite`, or
      cannot be created or written to (one line, naming the folder).
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"out_dir {path!r} is a file, not a folder")
  found = [name for name in outputs if os.path.exists(os.path.join(path, name))]
  if found and not overwrite:
    raise ValueError(f"out_dir {path!r} already holds an earlier run's {found[0]}: choose "
                     f"another out_dir, or replace that run with --overwrite")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ValueError(f"out_dir {path!r} cannot be written: {e.strerror or e}") from None


def _to_builtin(value: Any) -> Any:
  if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  raise TypeError(f"cannot write {type(value).__name__} as JSON")


# A list of numbers only (no nested list or object), as json.dump(indent=...) lays it out.
_NUMBER_LIST = re.compile(
    r"\[\s*(-?[\d.eE+-]+|NaN|-?Infinity)(\s*,\s*(-?[\d.eE+-]+|NaN|-?Infinity))*\s*\]")


def write_json(path: str, data: Any) -> None:
  """Writes `data` as JSON, atomically, converting numpy and jax arrays to lists.

  Objects are indented for reading; lists of numbers stay on one line each, so a grid of
  thousands of values costs one line, not thousands.
  """
  text = json.dumps(data, indent=1, default=_to_builtin, allow_nan=True)
  text = _NUMBER_LIST.sub(lambda match: re.sub(r"\s+", "", match.group(0)), text)
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def save_figure(fig, path: str, dpi: int = 120) -> None:
  """Saves a matplotlib figure as PNG atomically and closes it."""
  import matplotlib.pyplot as plt
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  plt.close(fig)
