import zlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key(request):
  """A fresh PRNG key per test, derived from the test's name so reruns are reproducible."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))
