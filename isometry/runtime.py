"""The runtime settings of the project's programs, in this one place: import this module before
numpy or jax are loaded (the scripts do, through `isometry.cli`; so do the tests' conftest and the
benchmarks), since both settings must be in the environment by then. Importing `isometry` itself
changes nothing; a setting the user made already wins.

  - One OpenBLAS thread: jax's CPU QR and SVD call OpenBLAS's LAPACK, whose threads fight XLA's
    for the cores: at N = 1000 a QR took 4.4 s with OpenBLAS's default threads and 0.6 s with
    one (2-core machine, loaded).
  - YNNPACK off: XLA's CPU backend in jaxlib 0.10 hands dot and elementwise fusions to YNNPACK by
    default. For the small (128 x 128) products of a recurrent step that path is slower: measured
    with jax 0.10.2 on 2 cores, a chain of 28 dependent 128x128 matmuls takes 1.33 ms without it
    vs 1.86 ms with it, and a row-MNIST RNN train step 7.6 vs 10.1 ms. An empty fusion type
    turns it off. An unknown flag aborts the process, so it is set only for the jaxlib versions
    that have it.
"""
import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _jaxlib_version() -> tuple:
  try:
    return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return (0, 0)


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if _jaxlib_version() >= (0, 10) and YNN_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_FLAG}=".strip()
