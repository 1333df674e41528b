#!/usr/bin/env python3
"""Train-step time of the library's vanilla tanh RNN classifier on sequential-MNIST shapes.

What is timed is what users run: `isometry.engine.train.make_train(config, arrays).run_epoch` for a
one-member sweep (orthogonal recurrent init with gain g, linear read-out of the last hidden state,
cross-entropy plus lam * mean((W^T W / g^2 - I)^2), Adam at 1e-3, the config's scan unroll), on
random inputs. The library has no single-step function: a step is one iteration of the epoch's
`lax.scan`, so the program is built for an epoch of exactly `--iters` steps, and

    step_ms = (time of one run_epoch - time of the end-of-epoch measurement) / iters,

where the measurement (validation loss, singular values, gradient norms on the probe batch) is
timed separately with the program's own `measure` on the same state (the fastest of 3). `epoch_ms_per_step` is the
raw epoch time / iters.

Flags and output fields match /work/shared/bench/torch_rnn_baseline.py (and
benchmarks/torch_rnn.py), so the two can be run side by side:

  python benchmarks/rnn_step.py --steps_per_seq 28 --hidden 128 --batch 128
  python benchmarks/rnn_step.py --steps_per_seq 784 --iters 5

The library's tasks are row (28 steps) and pixel (784 steps) sequences, so --steps_per_seq must be
28 or 784. Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common

TASKS = {28: "row", 784: "pixel"}
LEARNING_RATE = 1e-3  # The torch baseline's Adam learning rate.
EVAL_EXAMPLES = 16    # Validation/test examples: the end-of-epoch evaluation is kept small.
MEASURE_REPEATS = 3


class LibraryStep:
  """The library's RNN train step, timed through a one-member sweep's `run_epoch`.

  Attributes:
    iters: steps per timed epoch.
    compile_s: seconds of the first `run_epoch` call (compilation plus one epoch).
  """

  def __init__(self, steps_per_seq: int, hidden: int, batch: int, gain: float = 1.0,
               lam: float = 0.1, iters: int = 50, unroll: int = None, seed: int = 0):
    import jax
    import numpy as np
    from isometry import data
    from isometry.engine import train

    if steps_per_seq not in TASKS:
      raise ValueError(f"steps_per_seq must be one of {sorted(TASKS)} (the library's row and "
                       f"pixel tasks), got {steps_per_seq}")
    for name, value in (("hidden", hidden), ("batch", batch), ("iters", iters)):
      if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    self.iters = iters
    rng = np.random.default_rng(seed)
    side = int(round(common.PIXELS ** 0.5))

    def split(n):
      return (rng.random((n, side, side), dtype=np.float32),
              rng.integers(0, common.NUM_CLASSES, n).astype(np.int32))

    dataset = data.Dataset(*split(iters * batch), *split(EVAL_EXAMPLES), *split(EVAL_EXAMPLES))
    # "so" is the sum ||W^T W / g^2 - I||_F^2; dividing lam by H^2 makes it the mean.
    member = train.Member("bench", "orthogonal", gain, lam / hidden**2, True, LEARNING_RATE, seed)
    settings = dict(members=(member,), model="rnn", task=TASKS[steps_per_seq], hidden=hidden,
                    regularizer="so", optimizer="adam", batch_size=batch, epochs=1,
                    val_size=EVAL_EXAMPLES, eval_batch_size=EVAL_EXAMPLES)
    if unroll is not None:
      settings["unroll"] = unroll
    self.config = train.TrainConfig(**settings)
    host = train.prepare_arrays(self.config, dataset)
    self.program = train.make_train(self.config, host)
    hparams = train.hparams_of([member], ("orthogonal",))
    self.arrays = jax.device_put(host, self.program.replicated)
    self.states = self.program.init(jax.device_put(hparams, self.program.member_sharding))
    # The divergence rule's reference: never reached here (ln 10 x 10).
    self._initial_loss = jax.device_put(np.full(1, np.log(10.0), np.float32),
                                        self.program.member_sharding)
    self._epoch = 0
    self._block = jax.block_until_ready
    start = time.perf_counter()
    self._run_epoch()
    self._measure()
    self.compile_s = time.perf_counter() - start

  def _run_epoch(self):
    import numpy as np
    self.states, out = self.program.run_epoch(self.states, self._initial_loss, self.arrays,
                                              np.int32(self._epoch))
    self._epoch += 1
    self._block((self.states, out))

  def _measure(self):
    self._block(self.program.measure(self.states, self.arrays.val, self.arrays.probe_x,
                                     self.arrays.probe_y))

  def time(self) -> dict:
    """One timed epoch: {"step_s", "epoch_s", "measure_s", "epoch_cpu_s"}.

    step_s excludes the measurement; epoch_cpu_s is the process's CPU time over the epoch (all
    threads), which a busy machine inflates less than wall time.
    """
    start, cpu = time.perf_counter(), time.process_time()
    self._run_epoch()
    epoch, epoch_cpu = time.perf_counter() - start, time.process_time() - cpu
    # Noise only adds time, so the fastest of a few measurements estimates the fixed cost
    # (and errs towards a longer step, never a shorter one).
    measure = min(common.median_time(self._measure, 1) for _ in range(MEASURE_REPEATS))
    return {"step_s": (epoch - measure) / self.iters, "epoch_s": epoch, "measure_s": measure,
            "epoch_cpu_s": epoch_cpu}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps_per_seq", type=int, default=28, help="28: row by row, 784: pixel by pixel")
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--gain", type=float, default=1.0)
  p.add_argument("--lam", type=float, default=0.1)
  p.add_argument("--iters", type=int, default=50, help="timed steps (one epoch), after a warm-up "
                 "epoch that also compiles")
  p.add_argument("--threads", type=int, default=0,
                 help="CPUs for XLA's thread pool (pins the process); 0 leaves the default")
  p.add_argument("--unroll", type=int, default=None,
                 help="lax.scan unroll over time; default: TrainConfig's")
  a = p.parse_args(argv)
  if a.steps_per_seq not in TASKS:
    p.error(f"--steps_per_seq must be one of {sorted(TASKS)}, got {a.steps_per_seq}")
  for name in ("hidden", "batch", "iters"):
    if getattr(a, name) < 1:
      p.error(f"--{name} must be >= 1")
  if a.threads < 0 or (a.unroll is not None and a.unroll < 1):
    p.error("--threads must be >= 0 and --unroll >= 1")
  if not a.gain > 0:
    p.error("--gain must be > 0")
  return a


def main(argv=None) -> dict:
  """Runs the benchmark, prints its JSON line and returns it as a dict."""
  a = parse_args(argv)
  threads = common.set_cpu_threads(a.threads)
  import jax
  step = LibraryStep(a.steps_per_seq, a.hidden, a.batch, a.gain, a.lam, a.iters, a.unroll)
  timing = step.time()
  dt = timing["step_s"]
  result = {"impl": "isometry.engine.train", "jax": jax.__version__, "threads": threads,
            "steps_per_seq": a.steps_per_seq, "hidden": a.hidden, "batch": a.batch,
            "step_ms": round(dt * 1e3, 3), "sequences_per_s": round(a.batch / dt, 1),
            "epoch_ms_per_step": round(timing["epoch_s"] / a.iters * 1e3, 3),
            "measure_ms": round(timing["measure_s"] * 1e3, 3), "iters": a.iters,
            "unroll": step.config.unroll, "compile_s": round(step.compile_s, 2),
            "load_1min": common.load_average()["1min"]}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
