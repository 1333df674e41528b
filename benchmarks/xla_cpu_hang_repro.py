#!/usr/bin/env python3
"""Standalone repro: a batched LAPACK call deadlocks XLA:CPU when every intra-op thread waits.

Needs only jax and numpy. Each case runs in a fresh process under a hard timeout (a deadlocked
XLA program cannot be interrupted from Python) and prints FINISHED or HUNG:

  python benchmarks/xla_cpu_hang_repro.py              # devices = usable cores (at least 2)
  python benchmarks/xla_cpu_hang_repro.py --devices 4 --timeout 60

The program: with --xla_force_host_platform_device_count=D, one jit over a 1-d mesh computes,
per device, the singular values of 4 matrices of size n x n (a vmapped jnp.linalg.svd, which
lowers to one lapack_sgesdd_ffi call on a (4, n, n) batch) beside 8 independent 256 x 256
matmuls. The partitioned program has no collectives.

Cases (measured on jax/jaxlib 0.10.2, 2 cores, 2 devices):
  batched     n = 32: HUNG (every run; with --devices 4, in one run of two).
  below       n = 18: FINISHED. jaxlib's chunk heuristic runs this batch inline.
  one_matrix  n = 32, lax.map over the 4 matrices (one matrix per LAPACK call): FINISHED.
  one_device  n = 32, one device holding all matrices: FINISHED.

Why (jaxlib/cpu/lapack_kernels.cc at jax-v0.10.2, `GetLapackBatchChunkSize` and
`ParallelBatchMap`): a batched LAPACK kernel whose batch costs >= 2e5 flops (10 n^3 per matrix
for the SVD) is cut into at most one chunk per pool thread (and chunks of >= 2e5 flops); the
chunks are scheduled on the FFI thread pool, which is XLA:CPU's intra-op pool (one thread per
core), and the calling thread blocks on an absl::BlockingCounter until they finish. XLA's thunk
executor runs a program of more than 8 thunks on that same pool (it offloads the tail of its
ready queue; the matmuls put the SVD there). Once every pool thread is such a waiter -- D
devices, each in its own batched SVD, on a D-thread pool -- the chunks have no thread left and
the program never returns. gdb on a hung process shows both tf_XLAEigen threads in
jax::SingularValueDecompositionKernel -> jax::ParallelBatchMap -> absl::BlockingCounter::Wait,
and every other thread idle. For n = 18, ceil(2e5 / (10 * 18^3)) = 4 >= the batch, so the call
runs inline; for n = 19 it is 3 and the call splits (and hangs). A call on one matrix never
splits. Neither --xla_cpu_multi_thread_eigen=false nor shard_map (the same per-device program)
removes the blocking wait; they only change which thread gets the call, so the hang comes and
goes with the schedule.

Versions: jax 0.9.0 has no parallel LAPACK path (batched and below: FINISHED, run here).
jax 0.9.1 and 0.9.2 parallelize the SVD alone (jax-ml/jax commit 460d6b5c3f), one task per
matrix for any batch > 1 of matrices >= 8 x 8, with the same blocking wait (0.9.2 run here:
batched and below both HUNG). jax 0.10.0 to 0.11.0 use ParallelBatchMap for every LAPACK kernel
(SVD, QR, LU, Cholesky, eigh, triangular solve, ...). Commit 859992407d ("Don't try to
parallelize LAPACK kernels in opensource builds") compiles it out of open-source builds after
v0.11.0.

Exit status: 1 if the batched case hung (the defect is present), else 0.
"""
import argparse
import os
import subprocess
import sys
import time

CASES = {
    # name: (matrix size n, per-device batch via lax.map?, use one device?)
    "batched": (32, False, False),
    "below": (18, False, False),
    "one_matrix": (32, True, False),
    "one_device": (32, False, True),
}
PER_DEVICE = 4  # matrices per device
INDEPENDENT_MATMULS = 8


def _child(case: str, devices: int) -> None:
  n, one_matrix, one_device = CASES[case]
  count = 1 if one_device else devices
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={count}")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel

  mesh = Mesh(np.array(jax.devices()), ("d",))
  sharded = NamedSharding(mesh, PartitionSpec("d"))
  rng = np.random.RandomState(0)
  w = jax.device_put(rng.randn(devices * PER_DEVICE, n, n).astype(np.float32), sharded)
  xs = [jnp.asarray(rng.randn(256, 256).astype(np.float32)) for _ in range(INDEPENDENT_MATMULS)]

  def singular_values(m):
    return jnp.linalg.svd(m, compute_uv=False)

  def program(xs, w):
    other = jnp.stack([jnp.sum(x @ x) for x in xs])
    spectra = jax.lax.map(singular_values, w) if one_matrix else jax.vmap(singular_values)(w)
    return other, spectra

  f = jax.jit(program, out_shardings=(NamedSharding(mesh, PartitionSpec()), sharded))
  for i in range(3):
    jax.block_until_ready(f(xs, w + i))
  print("finished", flush=True)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int,
                      default=max(2, len(os.sched_getaffinity(0))),
                      help="forced CPU devices (default: usable cores, at least 2)")
  parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
  parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.child, args.devices)
    return 0

  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"{len(os.sched_getaffinity(0))} usable cores, {args.devices} devices, "
        f"{PER_DEVICE} matrices per device, timeout {args.timeout:g} s per case")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  hung = {}
  for case in args.cases.split(","):
    start = time.perf_counter()
    try:
      result = subprocess.run(
          [sys.executable, __file__, "--child", case, "--devices", str(args.devices)],
          env=env, capture_output=True, text=True, timeout=args.timeout)
      seconds = time.perf_counter() - start
      if result.returncode == 0 and "finished" in result.stdout:
        verdict = f"FINISHED in {seconds:.1f} s"
      else:
        verdict = f"FAILED (exit {result.returncode}): {result.stderr.strip()[-300:]}"
      hung[case] = False
    except subprocess.TimeoutExpired:
      # subprocess.run kills the child on timeout.
      verdict = f"HUNG (no result after {args.timeout:g} s; killed)"
      hung[case] = True
    n, one_matrix, one_device = CASES[case]
    print(f"{case:<11} n={n:<3} {'lax.map' if one_matrix else 'vmap':<8} "
          f"{1 if one_device else args.devices} device(s): {verdict}", flush=True)
  return 1 if hung.get("batched") else 0


if __name__ == "__main__":
  sys.exit(main())
