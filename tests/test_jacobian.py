"""Jacobian spectra against jax.jacfwd of explicit networks, exact linear cases and Fuss-Catalan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.theory import jacobian as jac
from isometry.theory import meanfield as mf
from isometry.theory.activations import get_activation


def _explicit_network(activation, network):
  phi = get_activation(activation).fn

  def forward(x):
    for w, b in zip(network.weights, network.biases):
      x = phi(w @ x + b)
    return x

  return forward


def _explicit_rnn(activation, rnn):
  phi = get_activation(activation).fn

  def forward(h):
    for drive in rnn.drive:
      h = phi(rnn.weights @ h + drive + rnn.bias)
    return h

  return forward


def _jacfwd_spectrum(forward, x0):
  with jax.enable_x64(True):
    jacobian = jax.jacfwd(forward)(jnp.asarray(x0))
    return np.sort(np.linalg.svd(np.asarray(jacobian), compute_uv=False)**2)


@pytest.mark.parametrize("activation,weights,sigma_w,sigma_b", [
    ("tanh", "orthogonal", 1.3, 0.3),
    ("erf", "gaussian", 1.1, 0.2),
    ("hard_tanh", "orthogonal", 1.2, 0.1),
    ("relu", "gaussian", 1.3, 0.2),
])
def test_matches_jacfwd_of_explicit_network(key, activation, weights, sigma_w, sigma_b):
  width, depth, num = 8, 3, 2
  spectra = jac.jacobian_squared_singular_values(
      key, activation, weights, sigma_w, sigma_b, depth, width, num)
  assert spectra.shape == (num, width) and spectra.dtype == np.float64
  assert np.all(np.diff(spectra, axis=1) >= 0)
  for i, k in enumerate(jax.random.split(key, num)):
    network = jac.sample_network(k, activation, weights, sigma_w, sigma_b, depth, width)
    expected = _jacfwd_spectrum(_explicit_network(activation, network), network.x0)
    # Same float64 matrices multiplied in another order: agreement to rounding, relative to the
    # largest singular value.
    np.testing.assert_allclose(spectra[i], expected, rtol=1e-10, atol=1e-12 * expected[-1])
  assert not np.allclose(spectra[0], spectra[1])    # the networks are independent draws


def test_network_input_sits_at_q_star(key):
  # x0 = phi(h0) with var(h0) = q*, so layer 1's pre-activations have variance q_map(q*) = q*.
  # A mean of N = 1000 squared Gaussians has relative std sqrt(2 / N) = 4.5%; 20% is 4.4 sigma
  # (starting from var(h0) = 1 would give 1.25 q* in layer 1: a wrong start is caught).
  sigma_w, sigma_b = 1.3, 0.3
  q = mf.q_star("tanh", sigma_w, sigma_b)
  network = jac.sample_network(key, "tanh", "gaussian", sigma_w, sigma_b, 1, 1000)
  h1 = network.weights[0] @ network.x0 + network.biases[0]
  np.testing.assert_allclose(np.mean(np.arctanh(network.x0)**2), q, rtol=0.2)
  np.testing.assert_allclose(np.mean(h1**2), q, rtol=0.2)


def test_linear_orthogonal_is_exact(key):
  # J = sigma_w^L Q_L ... Q_1, so J J^T = sigma_w^(2L) I exactly. q* is infinite at sigma_w > 1
  # with a bias, so q0 is passed (the linear Jacobian does not depend on the input).
  sigma_w, depth = 1.1, 5
  spectra = jac.jacobian_squared_singular_values(
      key, "linear", "orthogonal", sigma_w, 0.3, depth, 16, 3, q0=1.0)
  np.testing.assert_allclose(spectra, sigma_w**(2 * depth), rtol=1e-12)


def test_linear_gaussian_fuss_catalan(key):
  """Product of L Ginibre matrices (entries variance 1/N): m_1 = 1, m_2 = L + 1 at large N.

  At finite N, E[m_2] = sum_{k=0}^{L} (1 + 1/N)^k up to O(L/N^2) (one Wick contraction per layer
  adds tr(A^2)/N^2), 5.050 for N = 200, L = 4, and E[m_1] = 1 exactly. Over 30 seeds of this call
  (8 networks) the estimates had std 0.0074 (m_1) and 0.106 (m_2): the tolerances are 4 sigma.
  """
  width, depth = 200, 4
  spectra = jac.jacobian_squared_singular_values(key, "linear", "gaussian", 1.0, 0.0, depth,
                                                 width, 8)
  m2_expected = sum((1 + 1 / width)**k for k in range(depth + 1))
  np.testing.assert_allclose(np.mean(spectra), 1.0, atol=0.03)
  np.testing.assert_allclose(np.mean(spectra**2), m2_expected, atol=0.45)


def test_gain_sweep_uses_common_random_numbers(key):
  sigma_w = np.array([0.9, 1.2, 1.5])
  swept = jac.jacobian_squared_singular_values(key, "tanh", "orthogonal", sigma_w, 0.2, 3, 8, 2)
  assert swept.shape == (3, 2, 8)
  for g, s in enumerate(sigma_w):
    single = jac.jacobian_squared_singular_values(key, "tanh", "orthogonal", s, 0.2, 3, 8, 2)
    np.testing.assert_allclose(swept[g], single, rtol=1e-12)


def test_critical_relu_without_bias_uses_unit_input(key):
  # q* is not unique at sigma_w^2 = 2, sigma_b = 0; relu' depends on signs only, so q0 is moot.
  a = jac.jacobian_squared_singular_values(key, "relu", "orthogonal", np.sqrt(2), 0.0, 4, 8, 1)
  b = jac.jacobian_squared_singular_values(key, "relu", "orthogonal", np.sqrt(2), 0.0, 4, 8, 1,
                                           q0=7.0)
  np.testing.assert_allclose(a, b, rtol=1e-12)
  assert np.max(a) > 0


@pytest.mark.parametrize("weights", ["orthogonal", "gaussian"])
def test_rnn_matches_jacfwd_of_explicit_loop(key, weights):
  width, steps, num = 8, 5, 2
  args = ("tanh", weights, 1.2, 0.3, 0.1)
  spectra = jac.rnn_jacobian_squared_singular_values(key, *args, steps, width, num)
  assert spectra.shape == (num, width)
  for i, k in enumerate(jax.random.split(key, num)):
    rnn = jac.sample_rnn(k, *args, steps, width)
    assert rnn.drive.shape == (steps, width)
    expected = _jacfwd_spectrum(_explicit_rnn("tanh", rnn), rnn.h0)
    np.testing.assert_allclose(spectra[i], expected, rtol=1e-10, atol=1e-12 * expected[-1])


def test_rnn_linear_orthogonal_and_sweep(key):
  gains = np.array([0.9, 1.05])
  spectra = jac.rnn_jacobian_squared_singular_values(key, "linear", "orthogonal", gains, 0.5, 0.0,
                                                     6, 8, 2, q0=1.0)
  assert spectra.shape == (2, 2, 8)
  np.testing.assert_allclose(spectra, (gains**12)[:, None, None] * np.ones((2, 2, 8)),
                             rtol=1e-12)


def test_orthogonal_beats_gaussian_at_criticality(key):
  """tanh at the critical point q* = 0.5, N = 200, L = 6, 4 networks.

  Theory (THEORY.md): m_1 = chi^L = 1 and var = L (mu_2 / mu_1^2 - 1 - s_1), s_1 = 0 (orthogonal),
  -1 (Gaussian): 1.79 vs 7.79 here. At L <= 8 the raw moments are usable; with this size the
  relative spread of the variance was ~10% (orthogonal) and ~15% (Gaussian) in trial runs at
  N = 400, L = 8, larger at N = 200; 40% still separates the two by a wide margin.
  """
  q, depth = 0.5, 6
  sw, sb = mf.critical_point("tanh", q)
  ratio = mf.mu("tanh", q, 2) / mf.mu("tanh", q, 1)**2
  for weights, s1 in (("orthogonal", 0.0), ("gaussian", -1.0)):
    spectra = jac.jacobian_squared_singular_values(key, "tanh", weights, sw, sb, depth, 200, 4)
    np.testing.assert_allclose(np.mean(spectra), 1.0, atol=0.15)
    np.testing.assert_allclose(np.var(spectra), depth * (ratio - 1 - s1), rtol=0.4)


def test_bad_arguments_raise(key):
  call = jac.jacobian_squared_singular_values
  with pytest.raises(ValueError, match="unknown weights"):
    call(key, "tanh", "delta_orthogonal", 1.0, 0.1, 2, 4, 1)
  with pytest.raises(ValueError, match="unknown activation"):
    call(key, "sigmoidish", "orthogonal", 1.0, 0.1, 2, 4, 1)
  with pytest.raises(ValueError, match="depth"):
    call(key, "tanh", "orthogonal", 1.0, 0.1, 0, 4, 1)
  with pytest.raises(ValueError, match="width"):
    call(key, "tanh", "orthogonal", 1.0, 0.1, 2, 4.0, 1)
  with pytest.raises(ValueError, match="sigma_w"):
    call(key, "tanh", "orthogonal", 0.0, 0.1, 2, 4, 1)
  with pytest.raises(ValueError, match="pass q0"):
    call(key, "relu", "gaussian", 1.6, 0.1, 2, 4, 1)
  with pytest.raises(ValueError, match="equal lengths"):
    call(key, "tanh", "orthogonal", np.array([1.0, 1.1]), np.array([0.1, 0.2, 0.3]), 2, 4, 1)
  with pytest.raises(ValueError, match="input_std"):
    jac.rnn_jacobian_squared_singular_values(key, "tanh", "orthogonal", 1.0, -0.1, 0.0, 3, 4, 1)
