import os
import zlib

# One OpenBLAS thread: jax's CPU QR/SVD (LAPACK via OpenBLAS) otherwise fight XLA's threads for
# the two cores and run ~7x slower (see scripts/spectra.py). Set before numpy or jax loads it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key(request):
  """A fresh PRNG key per test, derived from the test's name so reruns are reproducible."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))
