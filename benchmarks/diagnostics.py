#!/usr/bin/env python3
"""Time and memory of the matrix-free Jacobian moments (`isometry.theory.diagnostics.spectral_moments`)
on a wide, deep network.

Network: a Gaussian tanh MLP x_l = tanh(x_{l-1} W_l + b_l), width 8192, depth 32, W_l entries
N(0, sigma_w**2 / N), b_l ~ N(0, sigma_b**2), on the critical line (chi = 1) at q* = 1
(`meanfield.critical_point`), input x_0 = tanh(h_0), h_0 ~ N(0, q*). The weights (32 x 8192 x
8192 float32 = 8.6 GB) are drawn one layer at a time into one donated buffer, so the peak is the
weights plus one layer.

The moments: one `jax.linearize` of the network at x_0 (a forward pass that keeps the L x N
derivatives), then all 32 Rademacher probes at once (vmap): one transposed pass J^T U and one
forward-mode pass J (J^T U), each a chain of (32, N) x (N, N) products. Memory beyond the
weights is O(N x probes + N x L): the probe block and the linearization's residuals.

Writes results/benchmarks/diagnostics.json: times (first call = compile + run, then the calls
after it), the resident memory the moments add to the weights', the estimates against the theory
(freeprob.jacobian_moments; one network at L = 32 is heavy-tailed, see THEORY.md, so these are
reported, not judged), the jax version and the machine's load average.

  nice -n 5 python benchmarks/diagnostics.py
  python benchmarks/diagnostics.py --width 512 --depth 4 --repeats 1 --out /tmp/diag.json
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--width", type=int, default=8192)
  p.add_argument("--depth", type=int, default=32)
  p.add_argument("--probes", type=int, default=32)
  p.add_argument("--q_star", type=float, default=1.0, help="the critical point's fixed point")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_load", type=float, default=2.5)
  p.add_argument("--wait_s", type=float, default=0.0)
  p.add_argument("--target_s", type=float, default=30.0)
  p.add_argument("--out", default=os.path.join(common.RESULTS, "diagnostics.json"))
  a = p.parse_args(argv)
  if min(a.width, a.depth, a.repeats) < 1 or a.probes < 2 or not a.q_star > 0:
    p.error("sizes must be >= 1, --probes >= 2, --q_star > 0")
  return a


def _status_gib(field: str) -> float:
  """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: its peak), in GiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 2**20   # kB
  raise KeyError(field)


def _reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux clear_refs "5"); False where not permitted."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def main(argv=None) -> dict:
  a = parse_args(argv)
  quiet = common.wait_for_quiet(a.max_load, a.wait_s)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from isometry.theory import diagnostics
  from isometry.theory import freeprob
  from isometry.theory import meanfield

  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", a.q_star))
  n, depth = a.width, a.depth
  key = jax.random.key(a.seed)
  k_w, k_b, k_x, k_probe = jax.random.split(key, 4)

  @functools.partial(jax.jit, donate_argnums=0)
  def fill(stack, layer):
    w = jax.random.normal(jax.random.fold_in(k_w, layer), (n, n), jnp.float32)
    return jax.lax.dynamic_update_index_in_dim(stack, w * (sigma_w / np.sqrt(n)), layer, 0)

  rss_start = _status_gib("VmRSS")
  start = time.perf_counter()
  weights = jnp.zeros((depth, n, n), jnp.float32)
  for layer in range(depth):
    weights = fill(weights, layer)
  weights.block_until_ready()
  weights_s = time.perf_counter() - start
  biases = sigma_b * jax.random.normal(k_b, (depth, n), jnp.float32)
  x0 = jnp.tanh(np.sqrt(a.q_star) * jax.random.normal(k_x, (n,), jnp.float32))
  peak_drawing = _status_gib("VmHWM")

  def mlp(weights, biases, x):
    def layer(h, wb):
      w, b = wb
      return jnp.tanh(h @ w + b), None
    return jax.lax.scan(layer, x, (weights, biases))[0]

  @jax.jit
  def moments(weights, biases, x, key):
    return diagnostics.spectral_moments(lambda x: mlp(weights, biases, x), x, key, a.probes)

  def call(i):
    out = moments(weights, biases, x0, jax.random.fold_in(k_probe, i))
    jax.block_until_ready(out)
    return out

  # Memory of the moments alone: the resident set before them, and its peak while they run
  # (compilation included), after resetting the high-water mark left by the weights' drawing.
  rss_before = _status_gib("VmRSS")
  peak_reset = _reset_peak()
  load_before = common.load_average()
  start = time.perf_counter()
  first = call(0)
  first_s = time.perf_counter() - start
  calls, results = [], [first]
  for i in range(1, a.repeats + 1):
    start = time.perf_counter()
    results.append(call(i))
    calls.append(time.perf_counter() - start)
  load_after = common.load_average()
  peak_moments = _status_gib("VmHWM")

  # Matrix products per call: the primal pass (1 vector), J^T U and J (J^T U) (P vectors each).
  flops = 2.0 * depth * n * n * (1 + 2 * a.probes)
  p_mean, p_var = freeprob.jacobian_moments("tanh", sigma_w, sigma_b, depth, "gaussian")
  estimates = [{k: float(v) for k, v in r._asdict().items()} for r in results]
  result = {
      "benchmark": "matrix-free Jacobian moments (diagnostics.spectral_moments)",
      "machine": common.machine_info(),
      "load_at_start": quiet["load"], "quiet_at_start": quiet["quiet"], "max_load": a.max_load,
      "load_before_timing": load_before, "load_after_timing": load_after,
      "settings": {"width": n, "depth": depth, "probes": a.probes, "probe": "rademacher",
                   "network": "tanh MLP, Gaussian weights, critical line",
                   "q_star": a.q_star, "sigma_w": sigma_w, "sigma_b": sigma_b,
                   "dtype": "float32",
                   "probe_processing": "all probes in one vmap (one pass each way)"},
      "weights_gib": depth * n * n * 4 / 2**30,
      "weights_draw_s": round(weights_s, 2),
      "first_call_s": round(first_s, 3),
      "calls_s": [round(t, 3) for t in calls],
      "median_s": round(statistics.median(calls), 3),
      "min_s": round(min(calls), 3),
      "target_s": a.target_s,
      "within_target": statistics.median(calls) < a.target_s,
      "gflops_per_s": round(flops / min(calls) / 1e9, 1),
      "memory_gib": {"rss_at_start": round(rss_start, 3),
                     "peak_while_drawing_weights": round(peak_drawing, 3),
                     "rss_before_moments": round(rss_before, 3),
                     "peak_during_moments": round(peak_moments, 3),
                     "moments_added": round(peak_moments - rss_before, 3),
                     "peak_reset": peak_reset,
                     "probe_block": round(a.probes * n * 4 / 2**30, 4),
                     "note": "from /proc/self/status; moments_added = peak during the "
                             "moments' calls (compilation included) minus the resident set "
                             "before them (weights, biases, runtime); valid if peak_reset"},
      "estimates": estimates,
      "theory": {"mean": p_mean, "variance": p_var,
                 "note": "moments of one deep network are heavy-tailed (THEORY.md: +50% in the "
                         "mean at L >= 32 seen): reported, not judged"},
  }
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("first_call_s", "median_s", "weights_draw_s",
                                           "memory_gib", "load_after_timing")}))
  return result


if __name__ == "__main__":
  main()
