"""Linear algebra that stays safe under `vmap` on XLA:CPU: one matrix per LAPACK call.

jaxlib 0.9.1 to 0.11.0 split a batched CPU LAPACK call into chunks on XLA's intra-op thread pool
and block the calling pool thread until they finish, which deadlocks once every pool thread
waits so (see `one_matrix_per_call`; `benchmarks/xla_cpu_hang_repro.py` reproduces it). Every
part of the package that batches SVDs, QRs or solves under vmap goes through this module.
"""
from typing import Callable, Sequence

import jax


def one_matrix_per_call(fn: Callable) -> Callable:
  """fn(*arrays), batched by a loop: under vmap every LAPACK call inside fn gets one matrix.

  Works around a deadlock in jaxlib's CPU LAPACK kernels (jax 0.9.1 to at least 0.11.0: the SVD
  alone in 0.9.x, every kernel through `ParallelBatchMap` in jaxlib/cpu/lapack_kernels.cc from
  0.10, whose numbers follow). A batched call (SVD, QR, LU, triangular solve, ...) whose batch
  is estimated at >= 2e5 flops is cut into chunks that are scheduled on XLA:CPU's intra-op
  thread pool, one thread per core, and the calling thread then blocks on an
  absl::BlockingCounter until they are done. XLA's thunk executor runs kernels on threads of
  that same pool, and once every pool thread is such a waiter -- two devices each in its own
  batched SVD on a 2-core machine (and in principle two independent batched calls of one
  program) -- nobody is left to run the chunks and the program never returns. A call on one
  matrix never takes that path. Upstream stopped parallelizing LAPACK over the batch in
  open-source builds after jax-v0.11.0 (jax-ml/jax commit 859992407d), so there the loop costs
  nothing that the kernel would not; benchmarks/xla_cpu_hang_repro.py reproduces the deadlock
  with jax and numpy only.

  The loop is jax.custom_batching.sequential_vmap, which has no reverse-mode rule of its own;
  the custom_vjp below gives it one that loops as well, so a looped fn can sit in a loss.
  """
  looped = jax.custom_batching.sequential_vmap(fn)
  looped_vjp = jax.custom_batching.sequential_vmap(
      lambda *args_and_ct: jax.vjp(fn, *args_and_ct[:-1])[1](args_and_ct[-1]))

  @jax.custom_vjp
  def call(*args):
    return looped(*args)

  def call_fwd(*args):
    return looped(*args), args

  def call_bwd(args, ct):
    return looped_vjp(*args, ct)

  call.defvjp(call_fwd, call_bwd)
  return call


def loops_linalg(devices: Sequence) -> bool:
  """Whether programs on `devices` need `one_matrix_per_call`: on CPU only (GPUs batch
  linear algebra in cuSOLVER, where a loop would only cost time)."""
  return all(d.platform == "cpu" for d in devices)
