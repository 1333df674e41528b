"""Elementwise nonlinearities by name, each with its derivative.

The mean-field and free-probability modules need phi and phi' as plain functions of the
pre-activation; models need phi alone. `get_activation(name)` is the one place names are resolved,
so flags, configs and theory all agree on what "hard_tanh" means.
"""
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp


class Activation(NamedTuple):
  """A nonlinearity phi and its derivative phi', both elementwise on arrays of any shape.

  Attributes:
    name: the name `get_activation` knows it by.
    fn: phi.
    derivative: phi'.
    bernoulli_derivative: phi' takes only the values 0 and 1 (relu, hard_tanh), so D^2 =
      phi'(h)^2 is a 0/1 variable; the free-probability code treats its law as an atom.
    homogeneous: phi(c h) = c phi(h) for every c > 0 (relu, linear): the law of phi'(h) does not
      depend on the scale of h, and the variance map q -> sigma_w^2 E[phi(h)^2] + sigma_b^2 is
      linear in q.
  """
  name: str
  fn: Callable[[jax.Array], jax.Array]
  derivative: Callable[[jax.Array], jax.Array]
  bernoulli_derivative: bool
  homogeneous: bool = False


def _hard_tanh(h):
  return jnp.clip(h, -1.0, 1.0)


def _hard_tanh_derivative(h):
  return (jnp.abs(h) < 1.0).astype(h.dtype)


def _relu_derivative(h):
  return (h > 0).astype(h.dtype)


def _erf_derivative(h):
  return 2.0 / jnp.sqrt(jnp.pi) * jnp.exp(-jnp.square(h))


def _tanh_derivative(h):
  return 1.0 - jnp.square(jnp.tanh(h))


ACTIVATIONS = {
    "tanh": Activation("tanh", jnp.tanh, _tanh_derivative, False),
    "hard_tanh": Activation("hard_tanh", _hard_tanh, _hard_tanh_derivative, True),
    "relu": Activation("relu", jax.nn.relu, _relu_derivative, True, homogeneous=True),
    "erf": Activation("erf", jax.scipy.special.erf, _erf_derivative, False),
    "linear": Activation("linear", lambda h: h, jnp.ones_like, False, homogeneous=True),
}


def get_activation(name: str) -> Activation:
  """Returns the activation called `name`; raises ValueError naming the known ones otherwise."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
    ) from None


def resolve(activation: Union[str, Activation]) -> Activation:
  """An `Activation` from itself or its name; ValueError for anything else."""
  if isinstance(activation, Activation):
    return activation
  if isinstance(activation, str):
    return get_activation(activation)
  raise ValueError(f"activation must be a name or an Activation, got {type(activation).__name__}")
