"""The finite-width correction against exact finite-N results and small dense Monte-Carlo.

Every Monte-Carlo here is a few thousand draws of matrices of size <= 100 in numpy (no compile);
the one compiled program is the quick run's, which the sampler test reuses (same shapes).
Tolerances are 4 standard errors of the Monte-Carlo (several comparisons per test), plus, where
the theory is leading-order in 1/N, the size of the next order at that width (stated per test).
"""
import json

import jax
import numpy as np
import pytest

from isometry.studies import finite_width as study
from isometry.theory import finite_width as fw
from isometry.theory import meanfield

Q_STAR = 1.0
SIGMA_W, SIGMA_B = (float(v) for v in meanfield.critical_point("tanh", Q_STAR))


def _haar(rng, batch, n):
  z = rng.standard_normal((batch, n, n))
  q, r = np.linalg.qr(z)
  return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def _weights(rng, law, batch, n):
  if law == "orthogonal":
    return SIGMA_W * _haar(rng, batch, n)
  return SIGMA_W / np.sqrt(n) * rng.standard_normal((batch, n, n))


def _moments(jac):
  """Exact per-network m_1, m_2 of J J^T for a (batch, n, n) stack."""
  a = jac @ np.swapaxes(jac, 1, 2)
  n = a.shape[-1]
  return np.trace(a, axis1=1, axis2=2) / n, np.sum(a * a, axis=(1, 2)) / n


def _within(sample, expected, se_factor=4.0, rel=0.0):
  mean, se = np.mean(sample), np.std(sample, ddof=1) / np.sqrt(len(sample))
  assert abs(mean - expected) <= se_factor * se + rel * abs(expected), (mean, se, expected)


# ------------------------------------------------------------------- step 1: exact recursion

@pytest.mark.parametrize("n", [2, 5, 40])
def test_linear_gaussian_one_layer_is_wishart(n):
  # W W^T, W with i.i.d. N(0, 1/N): E[tr(WW^T)^2] / N = 2 + 1/N, E[(tr WW^T / N)^2] = 1 + 2/N^2.
  out = fw.recursion("gaussian", n, [0, 1], r=1.0)
  np.testing.assert_allclose(out["second_moment"], [1.0, 2.0 + 1.0 / n], rtol=1e-14)
  np.testing.assert_allclose(out["mean_square"], [1.0, 1.0 + 2.0 / n**2], rtol=1e-14)
  np.testing.assert_allclose(out["mean"], [1.0, 1.0])


def test_linear_orthogonal_layers_are_isometries():
  out = fw.recursion("orthogonal", 7, [0, 3, 50], r=1.0)
  np.testing.assert_allclose(out["variance"], 0.0, atol=1e-12)
  np.testing.assert_allclose(out["mean_square"], 1.0, rtol=1e-12)


@pytest.mark.parametrize("law, closed_form", [
    ("gaussian", lambda r, n: (3 * r - 1) / n),
    ("orthogonal", lambda r, n: 3 * (r - 1) / (n + 2)),
])
def test_one_layer_factor_variance(law, closed_form):
  """Var ||D W u||^2 for a unit u, from E_u[(u^T A u)^2] = (tr(A)^2 + 2 tr(A^2)) / (N (N + 2))."""
  r, n = 1.5835, 37
  out = fw.recursion(law, n, [1], r=r)
  fourth = n / (n + 2) * (out["mean_square"][0] + 2 * out["second_moment"][0] / n)
  assert fourth - 1.0 == pytest.approx(closed_form(r, n), rel=1e-12)


@pytest.mark.parametrize("law", ["orthogonal", "gaussian"])
def test_recursion_is_exact_for_independent_layers(law):
  """Dense products of D_l W_l with D_l^2 = phi'(h)^2, h ~ N(0, q*) drawn independently."""
  rng = np.random.default_rng(0)
  n, depth, batch = 8, 2, 40000
  jac = np.broadcast_to(np.eye(n), (batch, n, n))
  for _ in range(depth):
    d = 1.0 - np.tanh(np.sqrt(Q_STAR) * rng.standard_normal((batch, n, 1)))**2
    jac = d * (_weights(rng, law, batch, n) @ jac)
  m1, m2 = _moments(jac)
  r = fw.layer_constants("tanh", Q_STAR, law).r
  out = fw.recursion(law, n, [depth], r=r)
  _within(m1, 1.0)
  _within(m1**2, out["mean_square"][0])
  _within(m2, out["second_moment"][0])


@pytest.mark.parametrize("law", ["orthogonal", "gaussian"])
def test_continuum_is_the_large_width_limit_of_the_recursion(law):
  k = fw.layer_constants("tanh", Q_STAR, law)
  n, tau = 20000, 0.4
  depth = int(tau * n)
  for v, c in ((k.r - 1, 0.0), (k.v, k.c)):
    out = fw.recursion(law, n, [depth], r=k.r, v=v, c=c)
    lim = fw.continuum(tau, k.s, v, c)
    assert out["mean_square"][0] == pytest.approx(lim["X"], rel=2e-3)
    assert out["second_moment"][0] / n == pytest.approx(lim["Y"], rel=2e-3)
    assert out["mean"][0] == pytest.approx(lim["mean"], rel=1e-12)


# ------------------------------------------------------ step 3: forward-pass fluctuations

def _forward_statistics(law, n, batch, depth, burn, rng):
  """Per network: means over layers of N (qhat - q*), N (qhat - q*)^2, N cos^2(x, v), and
  N (f - 1 - g) (the alignment term), from a dense forward pass with 32 Jacobian vectors."""
  x = np.tanh(np.sqrt(Q_STAR) * rng.standard_normal((batch, n)))
  v = rng.standard_normal((batch, n, 32))
  rows = []
  for layer in range(depth):
    w = _weights(rng, law, batch, n)
    qhat = SIGMA_W**2 * np.mean(x**2, axis=1) + SIGMA_B**2
    h = np.einsum("bij,bj->bi", w, x) + SIGMA_B * rng.standard_normal((batch, n))
    d2 = (1.0 - np.tanh(h)**2)**2
    wv = w @ v
    f = np.sum(d2[:, :, None] * wv**2, axis=1) / np.sum(v**2, axis=1)
    g = SIGMA_W**2 * np.mean(d2, axis=1) - 1.0
    cos2 = np.einsum("bi,bik->bk", x, v)**2 / (np.sum(x**2, 1)[:, None] * np.sum(v**2, 1))
    if layer >= burn:
      rows.append(np.stack([qhat - Q_STAR, (qhat - Q_STAR)**2, cos2.mean(1),
                            f.mean(1) - 1.0 - g], axis=1))
    x = np.tanh(h)
    v = (1.0 - np.tanh(h)**2)[:, :, None] * wv
    v /= np.sqrt(np.mean(v**2, axis=1, keepdims=True))    # keep directions, avoid drift
  return n * np.mean(rows, axis=0)                         # (batch, 4)


@pytest.mark.parametrize("law", ["orthogonal", "gaussian"])
def test_forward_pass_constants_match_a_dense_network(law):
  """N Var(qhat), rho and the alignment term of step 3 against dense width-100 networks.

  Leading order in 1/N: at N = 100 the next order is a few percent of these O(1) numbers; the
  tolerance adds 5% to 4 standard errors over the 120 networks.
  """
  rng = np.random.default_rng(1)
  k = fw.layer_constants("tanh", Q_STAR, law)
  per_network = _forward_statistics(law, n=100, batch=120, depth=35, burn=10, rng=rng)
  _, mean_q2, rho, alignment = per_network.T
  _within(mean_q2, k.n_var_q + k.n_mean_q**2 / 100, rel=0.05)
  _within(rho, k.rho, rel=0.05)
  _within(alignment, k.alignment, rel=0.05)


def test_constants_are_the_documented_ones():
  """tanh at q* = 1: the numbers quoted in the module docstring and the report."""
  orth = fw.layer_constants("tanh", 1.0, "orthogonal")
  gauss = fw.layer_constants("tanh", 1.0, "gaussian")
  assert (orth.c, orth.v, orth.s) == pytest.approx((0.263, 0.822, 0.5835), abs=1e-3)
  assert (gauss.c, gauss.v, gauss.s) == pytest.approx((0.2325, 1.396, 1.5835), abs=1e-3)
  assert orth.r == gauss.r == pytest.approx(1 + orth.s)


# ------------------------------------------------------------------- sampler and the study

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("finite_width")
  return out, study.run(study.FiniteWidthConfig.quick(), str(out))


def test_quick_run_writes_json_and_figure(quick):
  out, result = quick
  saved = json.loads((out / "finite_width.json").read_text())
  assert (out / "finite_width.png").stat().st_size > 20_000
  config = study.FiniteWidthConfig.quick()
  assert len(saved["cases"]) == len(config.depths) * 2 * 2    # two laws, two models
  for case in saved["cases"]:
    assert case["networks"] == config.num_networks[0]
    assert np.isfinite(case["mean"]["mean"]) and case["mean"]["ci95"] > 0
    assert case["theory"]["infinite_width"]["mean"] == pytest.approx(1.0, abs=1e-9)
  reference = [c for c in saved["cases"] if "pooled_estimate" in c]
  assert len(reference) == 2 and all(c["depth"] == 12 for c in reference)


def test_sampler_matches_dense_networks(quick):
  """The frame-propagation sampler (same shapes as the quick run: no new compile) against dense
  width-24 networks; both are the same model, so only Monte-Carlo error separates them."""
  config = study.FiniteWidthConfig.quick()
  states = [(w, m) for m in fw.MODELS for w in config.weights]
  count = 10 * config.chunk
  samples = fw.sample_moments(jax.random.key(7), "tanh", Q_STAR, 24, config.depths, count,
                              config.num_probes, states, config.chunk)
  rng = np.random.default_rng(2)
  n, depth, batch = 24, config.depths[1], 4000
  for index, law in enumerate(config.weights):
    x = np.tanh(np.sqrt(Q_STAR) * rng.standard_normal((batch, n)))
    jac = np.broadcast_to(np.eye(n), (batch, n, n))
    for _ in range(depth):
      w = _weights(rng, law, batch, n)
      h = np.einsum("bij,bj->bi", w, x) + SIGMA_B * rng.standard_normal((batch, n))
      jac = (1.0 - np.tanh(h)**2)[:, :, None] * (w @ jac)
      x = np.tanh(h)
    m1, m2 = _moments(jac)
    est = samples[index, :, 1]
    for sampled, dense in ((est[:, 0], m1), (est[:, 1] - est[:, 2], m2 - m1**2)):
      se = np.hypot(np.std(sampled) / np.sqrt(count), np.std(dense) / np.sqrt(batch))
      assert abs(np.mean(sampled) - np.mean(dense)) < 4 * se, (law, np.mean(sampled),
                                                                 np.mean(dense), se)


def test_psd_cholesky_and_inverse():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    a = rng.standard_normal((9, 5))
    gram = a @ a.T                                        # rank 5 of 9
    low = np.asarray(fw._psd_cholesky(gram))
    np.testing.assert_allclose(low @ low.T, gram, atol=1e-10)
    assert np.allclose(np.triu(low, 1), 0.0)
    full = rng.standard_normal((6, 6))
    low = np.linalg.cholesky(full @ full.T + np.eye(6))
    np.testing.assert_allclose(np.asarray(fw._lower_inverse(low)) @ low, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(activation="relu"), "activation"),
    (dict(widths=(250, 500), num_networks=(8,)), "one count per width"),
    (dict(num_probes=300), "num_probes"),
    (dict(control_widths=(64,)), "control_widths"),
])
def test_config_rejects(kwargs, message):
  with pytest.raises(ValueError, match=message):
    study.FiniteWidthConfig(**kwargs)
