"""Initializers by name: orthogonality, variance, identity, delta-orthogonal, and bad arguments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.theory.initializers import NAMES, get_initializer


@pytest.mark.parametrize("gain", [0.5, 1.0, 1.3])
@pytest.mark.parametrize("shape", [(64, 64), (96, 32)])
def test_orthogonal_columns(key, gain, shape):
  w = get_initializer("orthogonal", gain)(key, shape, jnp.float32)
  assert w.shape == shape and w.dtype == jnp.float32
  # float32 rounding of a 64-96 term inner product: ~1e-6 relative; 1e-5 leaves room.
  np.testing.assert_allclose(w.T @ w, gain**2 * np.eye(shape[1]), atol=1e-5 * gain**2)


def test_orthogonal_is_not_a_fixed_matrix(key):
  k1, k2 = jax.random.split(key)
  init = get_initializer("orthogonal")
  assert not np.allclose(init(k1, (16, 16)), init(k2, (16, 16)))


@pytest.mark.parametrize("gain", [0.7, 1.5])
def test_gaussian_variance(key, gain):
  fan_in, fan_out = 500, 400
  w = np.asarray(get_initializer("gaussian", gain)(key, (fan_in, fan_out), jnp.float32))
  expected = gain**2 / fan_in
  # The sample variance of n = 200,000 Gaussians has relative std sqrt(2 / n) = 0.32%: 2% is 6
  # sigma, and still catches a fan_out or fan_avg scaling (20% and 11% off here).
  np.testing.assert_allclose(np.var(w), expected, rtol=0.02)
  assert abs(np.mean(w)) < 5 * np.sqrt(expected / w.size)


def test_glorot_variance(key):
  w = np.asarray(get_initializer("glorot_normal", 2.0)(key, (300, 500), jnp.float32))
  # Variance gain^2 * 2 / (fan_in + fan_out); 150,000 draws: relative std 0.37%.
  np.testing.assert_allclose(np.var(w), 4.0 * 2 / 800, rtol=0.03)


def test_identity(key):
  w = get_initializer("identity", 0.9)(key, (5, 5), jnp.float32)
  np.testing.assert_array_equal(w, 0.9 * np.eye(5, dtype=np.float32))
  with pytest.raises(ValueError, match="2-d"):
    get_initializer("identity")(key, (3, 3, 3))


def test_delta_orthogonal(key):
  kernel = np.asarray(get_initializer("delta_orthogonal", 1.2)(key, (3, 3, 16, 16), jnp.float32))
  centre = kernel[1, 1]
  np.testing.assert_allclose(centre.T @ centre, 1.44 * np.eye(16), atol=1e-5)
  off_centre = kernel.copy()
  off_centre[1, 1] = 0
  assert np.all(off_centre == 0)


def test_bad_name_and_gain():
  with pytest.raises(ValueError, match="unknown initializer 'he'"):
    get_initializer("he")
  for gain in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="gain"):
      get_initializer("orthogonal", gain)
  assert set(NAMES) == {"orthogonal", "gaussian", "glorot_uniform", "glorot_normal", "identity",
                        "delta_orthogonal"}
