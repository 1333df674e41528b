import os
import zlib

# The tests compile hundreds of small programs whose run time is negligible next to XLA's
# compile time, so they skip LLVM's expensive optimization passes: the programs compute the same
# functions, and the suite takes about a third less CPU time. Set in the environment, before jax
# loads, so that the scripts the tests start as subprocesses inherit it. Two kinds of test run
# with XLA's default pipeline, so that optimized programs are checked as well: those marked
# `compute_bound` (large Monte-Carlo draws, three times slower unoptimized) and the end-to-end
# determinism test of scripts/train_rnn.py.
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"

# The runtime settings of the project's programs (one OpenBLAS thread, YNNPACK off), before
# numpy or jax load.
from isometry import runtime  # noqa: E402,F401

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _xla_pipeline(request):
  """XLA's default (optimizing) pipeline for a test marked `compute_bound`."""
  if request.node.get_closest_marker("compute_bound") is None:
    yield
    return
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key(request):
  """A fresh PRNG key per test, derived from the test's name so reruns are reproducible."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))
