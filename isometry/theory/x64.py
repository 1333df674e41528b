"""How the theory's functions take and give numbers: float64 inside `jax.enable_x64`, numpy
float64 for concrete results, argument checks that pass tracers through (under `jit`/`vmap` there
is nothing to check, and the functions return nan or inf where an answer does not exist)."""
import jax
import jax.numpy as jnp
import numpy as np


def concrete(x):
  """x as a float64 numpy array when it has a value now; None under tracing."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x, dtype=np.float64)


def check_scales(sigma_w, sigma_b):
  sw, sb = concrete(sigma_w), concrete(sigma_b)
  if sw is not None and not np.all(sw > 0):
    raise ValueError(f"sigma_w must be > 0, got {sigma_w}")
  if sb is not None and not np.all(sb >= 0):
    raise ValueError(f"sigma_b must be >= 0, got {sigma_b}")


def check_q(q, name="q"):
  qc = concrete(q)
  if qc is not None and not np.all(qc >= 0):
    raise ValueError(f"{name} must be >= 0, got {q}")


def f64(x):
  return jnp.asarray(x, dtype=jnp.float64)


def finish(result):
  """numpy float64 for concrete results (so arithmetic outside enable_x64 keeps float64),
  unchanged under tracing."""
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(result)):
    return result
  return jax.tree.map(lambda x: np.asarray(x)[()], result)
