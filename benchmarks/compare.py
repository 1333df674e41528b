#!/usr/bin/env python3
"""Train-step time of the library's RNN against torch.nn.RNN, interleaved in one run.

Row by row (28 steps of 28 pixels) and pixel by pixel (784 steps of 1 pixel), hidden 128, batch
128, the same model, loss and optimizer on both sides (benchmarks/rnn_step.py and
benchmarks/torch_rnn.py). Each side runs in its own worker process, built (compiled, warmed up)
once; then the repeats alternate ours/torch in ABBA order, so that both see the same machine
load. A step's time differs between processes more than within one, so this is done with
--processes fresh pairs in turn and the medians are taken over all their samples (each pair's
medians are kept as well). The same run measures jax's 128x128 and 2048x2048 float32 matmul
rates, against which the analytic matmul FLOPs of a step (common.rnn_step_flops) put the
achieved rate. Writes results/benchmarks/rnn_step.json.

  python benchmarks/compare.py                      # the defaults below
  python benchmarks/compare.py --processes 1 --repeats 3 --pixel_repeats 2 --out /tmp/x.json

Needs the `bench` extra (torch).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
# Switching sides: let the idle side's spinning threads (OpenMP, Eigen) go to sleep first.
SETTLE_S = 0.3


class Worker:
  """A `_worker.py` process for one impl and config."""

  def __init__(self, impl: str, kwargs: dict):
    self.impl = impl
    self.process = subprocess.Popen(
        [sys.executable, WORKER, impl, json.dumps(kwargs)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    self.setup_s = self._read()["setup_s"]

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.impl} worker exited with status {self.process.wait()}")
    return json.loads(line)

  def time(self) -> dict:
    self.process.stdin.write("time\n")
    self.process.stdin.flush()
    return self._read()

  def close(self):
    if self.process.poll() is None:
      self.process.stdin.write("quit\n")
      self.process.stdin.flush()
      self.process.wait(timeout=60)


def _interleaved_pair(kwargs: dict, repeats: int, threads: int) -> tuple:
  """One fresh pair of workers, timed alternately (ABBA): (samples per impl, loads, setup)."""
  workers = {}
  try:
    # One at a time, so that one side's compilation does not load the other's warm-up.
    workers["ours"] = Worker("ours", {**kwargs, "threads": threads})
    workers["torch"] = Worker("torch", {**kwargs, "threads": threads})
    samples = {"ours": [], "torch": []}
    loads = []
    for r in range(repeats):
      order = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
      for impl in order:
        time.sleep(SETTLE_S)
        samples[impl].append(workers[impl].time())
      loads.append(common.load_average()["1min"])
  finally:
    for worker in workers.values():
      worker.close()
  return samples, loads, {impl: round(w.setup_s, 2) for impl, w in workers.items()}


def _step_s(samples: dict, iters: int) -> dict:
  """Median seconds per step. Ours: median epoch minus median measurement, so that a load
  spike in one sample shifts a median by little (per-sample subtraction would shift it fully)."""
  return {"ours": (statistics.median(s["epoch_s"] for s in samples["ours"])
                   - statistics.median(s["measure_s"] for s in samples["ours"])) / iters,
          "torch": statistics.median(s["step_s"] for s in samples["torch"])}


def interleaved(kwargs: dict, repeats: int, threads: int, processes: int) -> dict:
  """`processes` fresh worker pairs one after the other, each timed `repeats` times per side.

  A step's time varies between processes more than within one (thread placement, memory
  layout), so the samples of all pairs are pooled; each pair's medians are kept too.
  """
  iters = kwargs["iters"]
  pooled = {"ours": [], "torch": []}
  per_process, loads, setups = [], [], []
  for _ in range(processes):
    samples, pair_loads, setup = _interleaved_pair(kwargs, repeats, threads)
    for impl in pooled:
      pooled[impl].extend(samples[impl])
    step = _step_s(samples, iters)
    per_process.append({impl: round(v * 1e3, 3) for impl, v in step.items()})
    loads.extend(pair_loads)
    setups.append(setup)
  medians = _step_s(pooled, iters)
  return {
      "step_ms": {impl: round(m * 1e3, 3) for impl, m in medians.items()},
      "speedup": round(medians["torch"] / medians["ours"], 3),
      "per_process_step_ms": per_process,
      "per_process_speedup": [round(p["torch"] / p["ours"], 3) for p in per_process],
      "samples_ms": {impl: [round(s["step_s"] * 1e3, 3) for s in pooled[impl]]
                     for impl in pooled},
      # Process CPU time per step (all threads, spinning included): less inflated than wall
      # time by a busy machine. Ours includes the end-of-epoch measurement.
      "cpu_ms_per_step": {
          "ours": round(statistics.median(s["epoch_cpu_s"] for s in pooled["ours"])
                        / iters * 1e3, 3),
          "torch": round(statistics.median(s["cpu_s"] for s in pooled["torch"]) * 1e3, 3)},
      "ours_epoch_ms_per_step": [round(s["epoch_s"] / iters * 1e3, 3) for s in pooled["ours"]],
      "ours_measure_ms": [round(s["measure_s"] * 1e3, 3) for s in pooled["ours"]],
      "setup_s": setups,
      "load_1min_during": loads,
      "iters_per_repeat": iters, "repeats_per_process": repeats, "processes": processes,
  }


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--gain", type=float, default=1.0)
  p.add_argument("--lam", type=float, default=0.1)
  p.add_argument("--row_iters", type=int, default=50, help="steps per row repeat")
  p.add_argument("--repeats", type=int, default=5, help="row repeats per side and process")
  p.add_argument("--pixel_iters", type=int, default=4, help="steps per pixel repeat")
  p.add_argument("--pixel_repeats", type=int, default=3,
                 help="pixel repeats per side and process")
  p.add_argument("--processes", type=int, default=3,
                 help="fresh worker pairs per task, run one after the other; samples are pooled")
  p.add_argument("--threads", type=int, default=0,
                 help="CPUs per side (torch threads, XLA's pinned CPUs); 0: the defaults")
  p.add_argument("--max_load", type=float, default=2.0,
                 help="wait (at most --wait_s) for the 1-minute load average to drop below this")
  p.add_argument("--wait_s", type=float, default=0.0)
  p.add_argument("--out", default=os.path.join(common.RESULTS, "rnn_step.json"))
  a = p.parse_args(argv)
  for name in ("hidden", "batch", "row_iters", "repeats", "pixel_iters", "pixel_repeats",
               "processes"):
    if getattr(a, name) < 1:
      p.error(f"--{name} must be >= 1")
  return a


def main(argv=None) -> dict:
  a = parse_args(argv)
  try:
    import torch  # pylint: disable=unused-import
  except ImportError:
    sys.exit("compare.py needs torch: pip install -e '.[bench]'")
  from isometry.results import io
  quiet = common.wait_for_quiet(a.max_load, a.wait_s)
  common.set_cpu_threads(a.threads)  # Before jax starts its CPU backend (machine_info).
  result = {"benchmark": "RNN train step, isometry.engine.train vs torch.nn.RNN",
            "machine": common.machine_info(), "torch": torch.__version__,
            "load_at_start": quiet["load"], "quiet_at_start": quiet["quiet"],
            "max_load": a.max_load,
            "settings": {"hidden": a.hidden, "batch": a.batch, "gain": a.gain, "lam": a.lam,
                         "optimizer": "adam, lr 1e-3", "threads": a.threads or "default"}}
  result["matmul_rates"] = common.matmul_rates()
  matmul_128 = result["matmul_rates"]["128x128"]["gflops"]
  result["tasks"] = {}
  for task, steps, iters, repeats in (("row", 28, a.row_iters, a.repeats),
                                      ("pixel", 784, a.pixel_iters, a.pixel_repeats)):
    kwargs = {"steps_per_seq": steps, "hidden": a.hidden, "batch": a.batch, "gain": a.gain,
              "lam": a.lam, "iters": iters}
    print(f"{task}: {a.processes} x (build, then {repeats} repeats of {iters} steps per side)",
          file=sys.stderr, flush=True)
    entry = interleaved(kwargs, repeats, a.threads, a.processes)
    flops = common.rnn_step_flops(steps, a.hidden, a.batch)
    entry["matmul_flops_per_step"] = flops
    entry["gflops"] = {impl: round(flops["total"] / (ms * 1e-3) / 1e9, 2)
                       for impl, ms in entry["step_ms"].items()}
    entry["fraction_of_matmul_128"] = {impl: round(g / matmul_128, 3)
                                       for impl, g in entry["gflops"].items()}
    # The recurrence is T dependent (B, H) x (H, H) products forward and 2T backward: at the
    # 128x128 chained rate that alone takes this long.
    entry["recurrence_bound_ms"] = round(
        6 * steps * a.batch * a.hidden**2 / (matmul_128 * 1e9) * 1e3, 2)
    result["tasks"][task] = entry
    print(f"{task}: ours {entry['step_ms']['ours']} ms, torch {entry['step_ms']['torch']} ms, "
          f"speedup {entry['speedup']}x", file=sys.stderr, flush=True)
  result["load_at_end"] = common.load_average()
  result["matmul_rates_at_end"] = common.matmul_rates(sizes=(128,))
  io.write_json(a.out, result)
  print(json.dumps({task: {"ours_ms": e["step_ms"]["ours"], "torch_ms": e["step_ms"]["torch"],
                           "speedup": e["speedup"]} for task, e in result["tasks"].items()}))
  return result


if __name__ == "__main__":
  main()
