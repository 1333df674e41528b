import zlib

# The runtime settings of the project's programs (one OpenBLAS thread, YNNPACK off), before
# numpy or jax load.
from isometry import runtime  # noqa: F401

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key(request):
  """A fresh PRNG key per test, derived from the test's name so reruns are reproducible."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))
