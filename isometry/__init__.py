"""isometry: dynamical isometry of deep tanh networks and RNNs in JAX."""
import importlib.metadata
import os

# XLA's CPU backend in jaxlib 0.10 hands dot and elementwise fusions to YNNPACK by default. For the
# small (128 x 128) products of a recurrent step that path is slower: measured here with jax 0.10.2
# on 2 cores, a chain of 28 dependent 128x128 matmuls takes 1.33 ms without it vs 1.86 ms with it,
# and a row-MNIST RNN train step 7.6 vs 10.1 ms. An empty fusion type turns it off. The flag must
# be in XLA_FLAGS before the first computation initializes the backend, and an unknown flag aborts
# the process, so it is set only for the jaxlib versions that have it and only where the user has
# not set it themselves.
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _jaxlib_version() -> tuple:
  try:
    return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return (0, 0)


if _jaxlib_version() >= (0, 10) and _YNN_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN_FLAG}=".strip()
