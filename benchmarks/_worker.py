#!/usr/bin/env python3
"""A timing worker for compare.py: builds one step (ours or torch), then times it on request.

  python benchmarks/_worker.py IMPL JSON_KWARGS

IMPL is "ours" (rnn_step.LibraryStep) or "torch" (torch_rnn.TorchStep). After building (which
compiles / warms up) it writes {"ready": true, "setup_s": ...} to stdout, then answers each
stdin line "time" with one JSON line of `.time()`'s result and exits on "quit" or end of input.
Running each side in its own process keeps one library's thread pool from competing with the
other's while that one is being timed; the parent alternates between them.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common


def main(argv):
  impl, kwargs = argv[1], json.loads(argv[2])
  threads = kwargs.pop("threads", 0)
  start = time.perf_counter()
  if impl == "ours":
    common.set_cpu_threads(threads)
    from benchmarks import rnn_step
    step = rnn_step.LibraryStep(**kwargs)
  elif impl == "torch":
    from benchmarks import torch_rnn
    step = torch_rnn.TorchStep(threads=threads, **kwargs)
  else:
    raise SystemExit(f"unknown impl {impl!r}")
  print(json.dumps({"ready": True, "setup_s": time.perf_counter() - start}), flush=True)
  for line in sys.stdin:
    command = line.strip()
    if command == "quit":
      break
    if command == "time":
      print(json.dumps(step.time()), flush=True)


if __name__ == "__main__":
  main(sys.argv)
