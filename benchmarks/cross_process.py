#!/usr/bin/env python3
"""The cost of crossing processes on CPU: one sweep on 1 process x 2 devices against 2 processes
x 1 device (`isometry.processes`, gloo between the processes), both through `train.run`.

The same K members (RNN, row task on synthetic 28 x 28 images, orthogonal init, Adam; members
differ in gain, learning rate and seed) train for --epochs epochs in each layout; each layout is
its own fresh process(es), launched in turn, ABAB... for --rounds rounds. Throughput is member
steps per second = K x steps per epoch / the median of the epoch times `run` records
(status.json: run_epoch plus fetching the epoch's metrics, end-of-epoch measurement included;
epoch 1, which compiles, is left out). The members are independent, so the programs themselves
hold no collective: what crossing processes adds is fetching the sharded results
(`process_allgather` over gloo instead of a local copy) and the per-epoch stop agreement. A third
layout, 1 process x 1 device with K/2 members (what each of the two processes computes), is the
baseline: the 2-process epoch minus it is the time crossing processes adds (on a machine with a
core per process).
Writes results/benchmarks/cross_process.json with the load average before, during and after.

  python benchmarks/cross_process.py
  python benchmarks/cross_process.py --rounds 1 --epochs 3 --out /tmp/cross.json
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common

# name: (processes, devices per process, share of the K members). The third is what each of the
# two processes of the second computes, alone: the baseline that shows what crossing costs.
LAYOUTS = {"1 process x 2 devices": (1, 2, 1.0), "2 processes x 1 device": (2, 1, 1.0),
           "1 process x 1 device, half the members": (1, 1, 0.5)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--members", type=int, default=4, help="K, members of the sweep")
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20, help="steps per epoch")
  p.add_argument("--epochs", type=int, default=5, help="epochs per launch (the first compiles)")
  p.add_argument("--rounds", type=int, default=2, help="launches per layout, alternating")
  p.add_argument("--timeout", type=float, default=900.0, help="seconds per launch")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "cross_process.json"))
  p.add_argument("--child", nargs=4, metavar=("PROCESS_ID", "NUM_PROCESSES", "PORT", "OUT_DIR"),
                 help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if min(a.members, a.hidden, a.batch, a.steps, a.rounds) < 1 or a.epochs < 2:
    p.error("--members, --hidden, --batch, --steps, --rounds must be >= 1, --epochs >= 2")
  return a


def _config(a):
  from isometry.engine import train
  members = tuple(train.Member(f"m{i}", "orthogonal", 1.0 + 0.01 * i, 0.0, True,
                               1e-3 * (1.0 + 0.1 * i), seed=i) for i in range(a.members))
  return train.TrainConfig(members=members, model="rnn", task="row", hidden=a.hidden,
                           regularizer="none", optimizer="adam", batch_size=a.batch,
                           epochs=a.epochs, val_size=256, eval_batch_size=256)


def _child(a) -> None:
  """One process of one layout: trains the sweep into OUT_DIR."""
  process_id, num_processes, port, out_dir = a.child
  process_id, num_processes = int(process_id), int(num_processes)
  from isometry import processes
  if num_processes > 1:
    processes.initialize(f"127.0.0.1:{port}", num_processes, process_id, timeout=60,
                         settings=vars(a) | {"child": None})
  from isometry import data
  from isometry.engine import train
  dataset = data.synthetic_dataset(a.steps * a.batch, 256, 256, side=28)
  train.run(_config(a), out_dir, dataset=dataset, plots=False)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(a, argv, num_processes: int, devices: int, out_dir: str) -> dict:
  """Runs one layout (argv: the benchmark's own flags) to the end; its status.json."""
  port = str(_free_port())
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=common.REPO)
  children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--child",
                                str(i), str(num_processes), port, out_dir], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for i in range(num_processes)]
  try:
    for child in children:
      _, err = child.communicate(timeout=a.timeout)
      if child.returncode != 0:
        raise RuntimeError(f"a {num_processes}-process launch failed:\n{err[-3000:]}")
  finally:
    for child in children:
      child.kill()
      child.wait()
  with open(os.path.join(out_dir, "status.json")) as f:
    return json.load(f)


def main(argv=None) -> dict:
  a = parse_args(argv)
  if a.child:
    _child(a)
    return {}
  argv = [arg for arg in (sys.argv[1:] if argv is None else argv)]
  load_before = common.load_average()
  samples = {name: [] for name in LAYOUTS}
  loads = []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(a.rounds):
      for index, (name, (num_processes, devices, share)) in enumerate(LAYOUTS.items()):
        members = max(int(a.members * share), 1)
        status = _launch(a, argv + ["--members", str(members)], num_processes, devices,
                         os.path.join(tmp, f"{r}-{index}"))
        samples[name].extend((members * a.steps, s) for s in status["epoch_seconds"][1:])
        loads.append(common.load_average()["1min"])
        print(f"{name}: epoch seconds {status['epoch_seconds']}", file=sys.stderr, flush=True)
  rows = {}
  for name, pairs in samples.items():
    seconds = [s for _, s in pairs]
    rows[name] = {"members": pairs[0][0] // a.steps,
                  "member_steps_per_s": round(pairs[0][0] / statistics.median(seconds), 1),
                  "median_epoch_s": round(statistics.median(seconds), 4),
                  "epoch_s": [round(v, 4) for v in seconds]}
  one, two, half = (rows[name] for name in LAYOUTS)
  result = {"benchmark": "member-steps per second, 1 process x 2 devices vs 2 processes x 1 "
                         "device (CPU, gloo), through train.run",
            "machine": common.machine_info(), "load_before": load_before,
            "load_1min_after_each_launch": loads, "load_after": common.load_average(),
            "settings": {"members": a.members, "model": "rnn", "task": "row",
                         "hidden": a.hidden, "batch": a.batch, "steps_per_epoch": a.steps,
                         "epochs": a.epochs, "rounds": a.rounds},
            "layouts": rows,
            "two_processes_over_one": round(two["member_steps_per_s"] /
                                            one["member_steps_per_s"], 3),
            "crossing_adds_s_per_epoch": round(two["median_epoch_s"] - half["median_epoch_s"],
                                               4)}
  from isometry.results import io
  io.write_json(a.out, result)
  print(json.dumps({name: row["member_steps_per_s"] for name, row in rows.items()}))
  return result


if __name__ == "__main__":
  main()
