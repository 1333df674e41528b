"""Each activation's derivative against jax.grad of its function; names resolve or fail clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.theory.activations import ACTIVATIONS, Activation, get_activation


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_grad(key, name):
  act = get_activation(name)
  assert isinstance(act, Activation) and act.name == name
  with jax.enable_x64(True):
    h = 3.0 * jax.random.normal(key, (2000,), jnp.float64)
    # Stay 1e-3 away from the kinks of relu (0) and hard_tanh (+-1), where grad picks a side.
    h = h[jnp.min(jnp.abs(h[:, None] - jnp.array([-1.0, 0.0, 1.0])[None, :]), axis=1) > 1e-3]
    expected = jax.vmap(jax.grad(act.fn))(h)
    np.testing.assert_allclose(act.derivative(h), expected, rtol=1e-12, atol=1e-15)
    assert act.fn(h).shape == h.shape and act.derivative(h).shape == h.shape


@pytest.mark.parametrize("name,bernoulli", [("relu", True), ("hard_tanh", True), ("tanh", False),
                                            ("erf", False), ("linear", False)])
def test_bernoulli_flag_means_zero_one_derivative(key, name, bernoulli):
  act = get_activation(name)
  assert act.bernoulli_derivative == bernoulli
  values = np.unique(np.asarray(act.derivative(3.0 * jax.random.normal(key, (1000,)))))
  if bernoulli:
    np.testing.assert_array_equal(values, [0.0, 1.0])
  else:
    assert len(values) > 2 or name == "linear"


def test_derivative_keeps_dtype():
  for name in ACTIVATIONS:
    assert get_activation(name).derivative(jnp.ones(3, jnp.float32)).dtype == jnp.float32


def test_unknown_name_raises():
  with pytest.raises(ValueError, match="unknown activation 'sigmoid'.*tanh"):
    get_activation("sigmoid")
