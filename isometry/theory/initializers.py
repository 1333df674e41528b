"""Weight initializers `f(key, shape, dtype)` with a gain, selectable by name.

Every initializer here returns a matrix (or conv kernel) whose typical singular value is `gain`
in the sense used by the dynamical-isometry papers:
  - orthogonal: gain * Haar-orthogonal (W^T W = gain^2 I for square W). jax's initializer draws
    Q from the QR decomposition of a Gaussian matrix with the sign fix Q <- Q diag(sign(diag R)),
    which makes Q Haar distributed (Mezzadri 2007).
  - gaussian: i.i.d. N(0, gain^2 / fan_in) (Poole et al. 2016's sigma_w = gain).
  - glorot_uniform / glorot_normal: Glorot & Bengio 2010 (variance 2 / (fan_in + fan_out)), times
    gain^2 in variance.
  - identity: gain * I (Le et al. 2015's IRNN).
  - delta_orthogonal: conv kernel zero except an orthogonal matrix at the spatial centre
    (Xiao et al. 2018).
Shapes follow jax's convention: a dense kernel is (fan_in, fan_out); the model computes x @ W.
"""
from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]


def _identity(gain: float) -> Initializer:
  def init(key, shape, dtype=jnp.float32):
    del key
    if len(shape) != 2:
      raise ValueError(f"identity init needs a 2-d shape, got {shape}")
    return gain * jnp.eye(*shape, dtype=dtype)
  return init


_FACTORIES = {
    "orthogonal": lambda gain: jax.nn.initializers.orthogonal(scale=gain),
    "gaussian": lambda gain: jax.nn.initializers.variance_scaling(
        gain**2, "fan_in", "normal"),
    "glorot_uniform": lambda gain: jax.nn.initializers.variance_scaling(
        gain**2, "fan_avg", "uniform"),
    "glorot_normal": lambda gain: jax.nn.initializers.variance_scaling(
        gain**2, "fan_avg", "truncated_normal"),
    "identity": _identity,
    "delta_orthogonal": lambda gain: jax.nn.initializers.delta_orthogonal(scale=gain),
}

NAMES = tuple(sorted(_FACTORIES))


def get_initializer(name: str, gain: float = 1.0) -> Initializer:
  """Returns the initializer `name` scaled by `gain` (> 0).

  Raises:
    ValueError: for an unknown name or a non-positive gain.
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown initializer {name!r}; choose one of {', '.join(NAMES)}")
  if not gain > 0:
    raise ValueError(f"gain must be > 0, got {gain}")
  return _FACTORIES[name](gain)
