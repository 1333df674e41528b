#!/usr/bin/env python3
"""Throughput of K vmapped sweep members against K separate runs, through isometry.engine.train.

For K in --ks, one `make_train` program trains K RNN members (row-by-row sequences, hidden 128,
batch 128, orthogonal init, soft-orthogonality penalty, Adam; members differ in gain, learning rate
and seed) per `run_epoch`. The separate runs use the one-member program of the same config
(compiled once) called K times, once per member's hyperparameters: the cost of K runs after
compilation. Both are timed alternately (ABBA) in the same process. As in rnn_step.py, the
end-of-epoch measurement is timed separately with the program's `measure`; train time is the
median epoch minus the median measurement. Throughput per configuration = members * steps /
train seconds; the ratio is vmapped / separate (> 1: the sweep trains its members faster than
running them one by one). Compilation is excluded from throughput and reported on its own
(separate processes would pay it K times). Writes results/benchmarks/sweep_scaling.json.

  python benchmarks/sweep_scaling.py
  python benchmarks/sweep_scaling.py --ks 1,2 --iters 5 --repeats 2 --out /tmp/sweep.json
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common
from benchmarks import rnn_step


def members_of(k: int, hidden: int, lam: float):
  from isometry.engine import train
  return tuple(train.Member(f"m{i}", "orthogonal", 1.0 + 0.01 * i, lam / hidden**2, True,
                            1e-3 * (1.0 + 0.1 * i), seed=i) for i in range(k))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ks", default="1,2,4,8,16", help="comma-separated sweep sizes K")
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--lam", type=float, default=0.1)
  p.add_argument("--iters", type=int, default=20, help="steps per epoch (per timed repeat)")
  p.add_argument("--repeats", type=int, default=4, help="timed repeats per side and K")
  p.add_argument("--max_load", type=float, default=2.0)
  p.add_argument("--wait_s", type=float, default=0.0,
                 help="wait at most this long for the load to drop below --max_load")
  p.add_argument("--out", default=os.path.join(common.RESULTS, "sweep_scaling.json"))
  a = p.parse_args(argv)
  try:
    a.ks = [int(k) for k in a.ks.split(",")]
  except ValueError:
    p.error(f"--ks must be comma-separated integers, got {a.ks!r}")
  if min(a.ks) < 1 or min(a.hidden, a.batch, a.iters, a.repeats) < 1:
    p.error("--ks, --hidden, --batch, --iters and --repeats must be >= 1")
  return a


def main(argv=None) -> dict:
  a = parse_args(argv)
  quiet = common.wait_for_quiet(a.max_load, a.wait_s)
  import jax
  import numpy as np
  from isometry import data
  from isometry.results import io
  from isometry.engine import train

  rng = np.random.default_rng(0)
  n_eval = rnn_step.EVAL_EXAMPLES

  def split(n):
    return (rng.random((n, 28, 28), dtype=np.float32),
            rng.integers(0, common.NUM_CLASSES, n).astype(np.int32))

  dataset = data.Dataset(*split(a.iters * a.batch), *split(n_eval), *split(n_eval))

  def build(members):
    config = train.TrainConfig(members=members, model="rnn", task="row", hidden=a.hidden,
                               regularizer="so", optimizer="adam", batch_size=a.batch,
                               epochs=1, val_size=n_eval, eval_batch_size=n_eval)
    host = train.prepare_arrays(config, dataset)
    program = train.make_train(config, host)
    arrays = jax.device_put(host, program.replicated)
    hparams = jax.device_put(train.hparams_of(members, ("orthogonal",)), program.member_sharding)
    return program, arrays, program.init(hparams)

  def timed_epoch(program, arrays, states, epoch):
    """(new states, epoch seconds, seconds of the fastest of 3 end-of-epoch measurements)."""
    # The divergence rule's reference: ln 10 per member (a threshold no run reaches here).
    initial_loss = jax.device_put(np.full(states["hp"]["seed"].shape, np.log(10.0), np.float32),
                                  program.member_sharding)
    start = time.perf_counter()
    states, out = program.run_epoch(states, initial_loss, arrays, np.int32(epoch))
    jax.block_until_ready((states, out))
    seconds = time.perf_counter() - start
    measure = min(common.median_time(lambda: jax.block_until_ready(program.measure(
        states, arrays.val, arrays.probe_x, arrays.probe_y)), 1) for _ in range(3))
    return states, seconds, measure

  def compile_s(program, arrays, states):
    start = time.perf_counter()
    states, _, _ = timed_epoch(program, arrays, states, 0)
    return states, time.perf_counter() - start

  all_members = members_of(max(a.ks), a.hidden, a.lam)
  single, single_arrays, _ = build(all_members[:1])
  # Every member's own one-member state, for the separate runs.
  single_states = []
  for m in all_members:
    hparams = jax.device_put(train.hparams_of([m], ("orthogonal",)), single.member_sharding)
    single_states.append(single.init(hparams))
  single_states[0], single_compile = compile_s(single, single_arrays, single_states[0])

  rows = []
  for k in a.ks:
    program, arrays, states = build(all_members[:k])
    states, vmapped_compile = compile_s(program, arrays, states)
    # Per repeat: epoch seconds and measurement seconds, vmapped and summed over the K runs.
    times = {side: {"epoch": [], "measure": []} for side in ("vmapped", "separate")}
    loads = []
    for r in range(a.repeats):
      for side in (("vmapped", "separate") if r % 2 == 0 else ("separate", "vmapped")):
        if side == "vmapped":
          states, epoch_s, measure_s = timed_epoch(program, arrays, states, r + 1)
        else:
          epoch_s = measure_s = 0.0
          for i in range(k):
            single_states[i], e, m = timed_epoch(single, single_arrays, single_states[i], r + 1)
            epoch_s += e
            measure_s += m
        times[side]["epoch"].append(epoch_s)
        times[side]["measure"].append(measure_s)
      loads.append(common.load_average()["1min"])
    # Train seconds: median epoch minus median measurement (robust to a spike in one sample).
    train_s = {side: statistics.median(t["epoch"]) - statistics.median(t["measure"])
               for side, t in times.items()}
    raw_s = {side: statistics.median(t["epoch"]) for side, t in times.items()}
    steps = k * a.iters
    row = {
        "K": k,
        "vmapped_steps_per_s": round(steps / train_s["vmapped"], 1),
        "separate_steps_per_s": round(steps / train_s["separate"], 1),
        "ratio": round(train_s["separate"] / train_s["vmapped"], 3),
        "ratio_with_measurement": round(raw_s["separate"] / raw_s["vmapped"], 3),
        "vmapped_ms_per_member_step": round(train_s["vmapped"] / steps * 1e3, 3),
        "separate_ms_per_member_step": round(train_s["separate"] / steps * 1e3, 3),
        "vmapped_compile_s": round(vmapped_compile, 2),
        "samples_s": {side: {kind: [round(v, 4) for v in values] for kind, values in t.items()}
                      for side, t in times.items()},
        "load_1min_during": loads,
    }
    rows.append(row)
    print(json.dumps({key: row[key] for key in ("K", "vmapped_steps_per_s",
                                                 "separate_steps_per_s", "ratio")}),
          file=sys.stderr, flush=True)
    del program, arrays, states
  result = {"benchmark": "sweep throughput per configuration, K vmapped members vs K runs",
            "machine": common.machine_info(), "load_at_start": quiet["load"],
            "quiet_at_start": quiet["quiet"], "max_load": a.max_load,
            "settings": {"model": "rnn", "task": "row", "hidden": a.hidden, "batch": a.batch,
                         "lam": a.lam, "steps_per_epoch": a.iters, "repeats": a.repeats,
                         "unroll": train.TrainConfig(members=all_members[:1]).unroll},
            "single_compile_s": round(single_compile, 2), "rows": rows,
            "load_at_end": common.load_average()}
  io.write_json(a.out, result)
  print(json.dumps({"K": [r["K"] for r in rows], "ratio": [r["ratio"] for r in rows]}))
  return result


if __name__ == "__main__":
  main()
