"""Shared pieces of the benchmarks: machine state, analytic FLOP counts, measured matmul rates.

The machine these run on is shared, so every result file records the load average next to the
numbers; `wait_for_quiet` lets a run start when the 1-minute load has dropped.
"""
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

# The project's runtime settings (one OpenBLAS thread, YNNPACK off) before anything loads jax:
# the benchmarks time the library as its scripts run it.
from isometry import runtime  # noqa: F401  pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "results", "benchmarks")
NUM_CLASSES = 10
PIXELS = 784  # An MNIST image, read as steps_per_seq steps of 784 / steps_per_seq pixels.


def load_average() -> dict:
  one, five, fifteen = os.getloadavg()
  return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 10.0) -> dict:
  """Waits until the 1-minute load average is below `max_load`, at most `timeout_s` seconds.

  Returns:
    {"waited_s", "quiet": whether the threshold was met, "load": load_average() at the end}.
  """
  start = time.monotonic()
  while True:
    load = load_average()
    waited = time.monotonic() - start
    if load["1min"] < max_load or waited >= timeout_s:
      return {"waited_s": round(waited, 1), "quiet": load["1min"] < max_load, "load": load}
    print(f"load {load['1min']} >= {max_load}; waiting", file=sys.stderr, flush=True)
    time.sleep(min(poll_s, max(timeout_s - waited, 0.1)))


def set_cpu_threads(threads: int) -> int:
  """Pins this process to its first `threads` allowed CPUs (0: leave it); returns the CPU count.

  XLA sizes its CPU thread pool from the process's CPU affinity when the backend starts, so this
  must run before jax's first computation to limit jax's threads.
  """
  allowed = sorted(os.sched_getaffinity(0))
  if threads < 0:
    raise ValueError(f"threads must be >= 0, got {threads}")
  if threads:
    os.sched_setaffinity(0, allowed[:threads])
  return len(os.sched_getaffinity(0))


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def machine_info() -> dict:
  import jax
  return {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
          "cpus_allowed": len(os.sched_getaffinity(0)), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jax_backend": jax.default_backend()}


def rnn_step_flops(steps_per_seq: int, hidden: int, batch: int,
                   num_classes: int = NUM_CLASSES) -> dict:
  """Matrix-product FLOPs (2 per multiply-add) of one RNN train step, forward and backward.

  Model: h_t = tanh(x_t U + h_{t-1} W + b) for t < T, logits = h_{T-1} V + c, penalty on W^T W.
  Forward: the input projection (B T, D) x (D, H), T recurrent (B, H) x (H, H), the read-out
  (B, H) x (H, C), the Gram matrix W^T W. Backward, as reverse-mode autodiff computes it: per
  time step dL/dh_{t-1} = dz_t W^T and dL/dW += h_{t-1}^T dz_t (two products of the forward's
  size); dL/dU = x^T dz (no gradient w.r.t. the data); dL/dV and dL/dh_{T-1}; the penalty's
  W Gbar and W Gbar^T (two H^3 products, Gbar the cotangent of the Gram matrix).
  Elementwise work (tanh, Adam) is not counted.
  """
  t, h, b, c = steps_per_seq, hidden, batch, num_classes
  d = PIXELS // steps_per_seq
  forward = {"input": 2 * b * t * d * h, "recurrent": 2 * t * b * h * h, "readout": 2 * b * h * c,
             "penalty": 2 * h ** 3}
  backward = {"input": 2 * b * t * d * h, "recurrent": 4 * t * b * h * h,
              "readout": 4 * b * h * c, "penalty": 4 * h ** 3}
  return {"forward": sum(forward.values()), "backward": sum(backward.values()),
          "total": sum(forward.values()) + sum(backward.values()),
          "recurrent_share": (forward["recurrent"] + backward["recurrent"])
          / (sum(forward.values()) + sum(backward.values()))}


def median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (which must block until its result is ready) over `repeats`."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_rates(sizes: Sequence[int] = (128, 2048), chain: int = 2000, repeats: int = 5,
                 dtype: Optional[str] = "float32") -> dict:
  """Measured jax matmul rates on this machine, GFLOP/s (2 n^3 FLOPs per n x n product).

  n <= 256: a `lax.fori_loop` of `chain` dependent products h <- h @ W with W orthogonal (so h
  stays bounded), which is the shape of the RNN's recurrence: each product waits for the last,
  and no per-call dispatch is timed. Larger n: one jitted a @ b per call.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  rates = {}
  rng = np.random.default_rng(0)
  for n in sizes:
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    if n <= 256:
      w = jnp.asarray(np.linalg.qr(rng.standard_normal((n, n)))[0], dtype)
      run = jax.jit(lambda h, w: jax.lax.fori_loop(0, chain, lambda i, h: h @ w, h))
      run(a, w).block_until_ready()
      seconds = median_time(lambda: run(a, w).block_until_ready(), repeats) / chain
      kind = f"chain of {chain} dependent products"
    else:
      b = jnp.asarray(rng.standard_normal((n, n)), dtype)
      run = jax.jit(jnp.matmul)
      run(a, b).block_until_ready()
      seconds = median_time(lambda: run(a, b).block_until_ready(), repeats)
      kind = "one product per call"
    rates[f"{n}x{n}"] = {"gflops": round(2 * n ** 3 / seconds / 1e9, 2),
                         "us_per_product": round(seconds * 1e6, 2), "how": kind,
                         "dtype": dtype}
  return rates


def device_info() -> dict:
  """What jax runs on: backend, devices and their kind, jax and jaxlib versions, and the default
  matmul precision (None: the backend's own default, which on recent NVIDIA GPUs may use TF32
  for float32 products)."""
  import jax
  import jaxlib
  devices = jax.devices()
  return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "devices": [str(d) for d in devices],
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "matmul_precision": jax.config.jax_default_matmul_precision}
