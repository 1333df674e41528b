"""Study A's core functions against closed forms, and the script in --quick mode.

Closed forms used: in a linear network with orthogonal weights ||dL/dh_l||^2 / ||dL/dh_L||^2 is
exactly sigma_w^(2 (L - l)); with Gaussian weights each layer multiplies it by an independent
sigma_w^2 chi^2_N / N (mean sigma_w^2, log-variance trigamma(N / 2)); relu halves the mean
(chi = sigma_w^2 / 2); and an explicit backward recursion gives the same norms as autodiff.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from isometry import data
from isometry.results import io
from isometry.theory import meanfield
from isometry.studies import gradients as gs
from isometry.studies import gradients_rnn
from isometry.studies import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _norms(key, act, weights, sigma_w, sigma_b=0.0, q0=None, depth=6, width=16, batch=3, num=2):
  sigma_w = np.atleast_1d(np.asarray(sigma_w, np.float64))
  q0 = np.ones_like(sigma_w) if q0 is None else np.atleast_1d(q0)
  out = gs.layer_gradient_norms(key, (act,), (weights,), sigma_w[None], np.array([sigma_b]),
                                q0[None], depth, width, batch, num)
  return out[0, 0]  # (num, S, L, B)


def test_norms_match_explicit_backward_recursion(key):
  """Autodiff through the scan against g_{l-1} = D_{l-1} (sigma_w W_l g_l) written by hand."""
  depth, width, batch, sw, sb, q = 5, 8, 3, 1.3, 0.2, 0.7
  got = _norms(key, "tanh", "gaussian", sw, sb, q, depth, width, batch, num=1)[0, 0]
  # Rebuild the network from the documented key use.
  with jax.enable_x64(True):
    k_net = jax.random.split(key, 1)[0]
    k_w, k_b, k_x, k_u = jax.random.split(k_net, 4)
    w = jax.vmap(lambda k: gs.initializers.get_initializer("gaussian", 1.0)(
        k, (width, width), jnp.float64))(jax.random.split(k_w, depth))
    b = jax.random.normal(k_b, (depth, width), jnp.float64)
    z = jax.random.normal(k_x, (batch, width), jnp.float64)
    u = jax.random.normal(k_u, (batch, width), jnp.float64)
    w, b, z, u = (np.asarray(v) for v in (w, b, z, u))
  x = np.tanh(np.sqrt(q) * z)
  hs = []
  for l in range(depth):
    h = sw * x @ w[l] + sb * b[l]
    hs.append(h)
    x = np.tanh(h)
  g = (1 - np.tanh(hs[-1])**2) * u
  expected = [None] * depth
  expected[-1] = np.sum(g**2, -1)
  for l in range(depth - 1, 0, -1):
    g = (1 - np.tanh(hs[l - 1])**2) * (sw * g @ w[l].T)
    expected[l - 1] = np.sum(g**2, -1)
  np.testing.assert_allclose(got, np.stack(expected), rtol=1e-12)


def test_linear_orthogonal_is_exactly_sigma_w_power(key):
  sigma_w = np.array([0.8, 1.0, 1.3])
  norms = _norms(key, "linear", "orthogonal", sigma_w, depth=7)
  summary = gs.summarize_norms(norms)
  expected = (6 - np.arange(7))[None, :] * 2 * np.log(sigma_w)[:, None]   # log sigma_w^(2(L-l))
  # float64 QR: orthogonal to ~1e-15 per layer.
  np.testing.assert_allclose(summary["log_ratio"], np.broadcast_to(expected, (2, 3, 7)),
                             atol=1e-12)
  np.testing.assert_allclose(summary["slope"], np.broadcast_to(2 * np.log(sigma_w), (2, 3)),
                             atol=1e-12)
  np.testing.assert_allclose(summary["log_gain"], 2 * 6 * np.log(sigma_w)[None, :, None]
                             * np.ones((2, 3, 3)), atol=1e-12)


def test_linear_gaussian_per_layer_factors_are_scaled_chi_square(key):
  """Per-layer factors ||g_{l-1}||^2 / ||g_l||^2 ~ sigma_w^2 chi^2_N / N.

  1200 factors (20 networks x 10 layers x 6 inputs; inputs of one network share weights, so
  they are weakly correlated). Mean: sigma_w^2 = 1.21, factor std sqrt(2/N) * 1.21 = 0.30, so
  the mean's standard error is ~0.01 (0.02 allowing for the correlation): rtol 0.05 is > 2.5
  of those. Log-variance: trigamma(N/2) = 0.0645 for N = 32; a variance estimate from ~1200
  samples has relative error ~sqrt(2 / 1200) = 4% (doubled for correlation): rtol 0.2.
  """
  width, sigma_w = 32, 1.1
  norms = _norms(key, "linear", "gaussian", sigma_w, depth=11, width=width, batch=6, num=20)
  factors = (norms[:, 0, :-1, :] / norms[:, 0, 1:, :]).ravel()
  assert factors.mean() == pytest.approx(sigma_w**2, rel=0.05)
  assert np.var(np.log(factors)) == pytest.approx(special.polygamma(1, width / 2), rel=0.2)
  mean, std = gs.linear_gaussian_log_gain(sigma_w, width, 1)
  # Standard error ~0.01 measured over 5 other keys: abs 0.04 is 4 of those.
  assert np.mean(np.log(factors)) == pytest.approx(mean, abs=0.04)
  assert std**2 == pytest.approx(special.polygamma(1, width / 2), rel=1e-12)


def test_linear_gaussian_log_gain_closed_form():
  mean, std = gs.linear_gaussian_log_gain(1.0, 256, 63)
  # digamma(128) + log(2 / 256) = -1/256 - 1/(12 128^2) + ... per layer.
  assert mean == pytest.approx(63 * (-1 / 256 - 1 / (12 * 128**2)), rel=1e-4)
  assert std == pytest.approx(np.sqrt(63 * (1 / 128 + 1 / (2 * 128**2))), rel=1e-4)


def test_relu_and_tanh_slopes_follow_log_chi(key):
  """Monte-Carlo at width 256: fitted slopes within 0.04 of log chi.

  Measured over 5 other keys, the relu slope averaged over 4 networks of depth 12 deviates from
  log chi by 0.009 rms (relu's 0/1 derivatives fluctuate more than tanh's), so 0.04 is > 4 of
  those, while the sigma_w values here differ in log chi by >= 0.2.
  """
  sigma_w = np.array([1.2, np.sqrt(2), 1.6])
  slopes = gs.summarize_norms(_norms(key, "relu", "orthogonal", sigma_w, depth=12, width=256,
                                     batch=8, num=4))["slope"].mean(axis=0)
  np.testing.assert_allclose(slopes, np.log(sigma_w**2 / 2), atol=0.04)
  sw_c = meanfield.critical_sigma_w("tanh", 0.05)
  sigma_w = sw_c * np.array([0.8, 1.0, 1.3])
  q0 = np.array([float(meanfield.input_variance("tanh", s, 0.05)) for s in sigma_w])
  slopes = gs.summarize_norms(_norms(key, "tanh", "orthogonal", sigma_w, 0.05, q0, depth=12,
                                     width=256, batch=8, num=4))["slope"].mean(axis=0)
  log_chi = np.log([float(meanfield.chi("tanh", s, 0.05)) for s in sigma_w])
  np.testing.assert_allclose(slopes, log_chi, atol=0.04)


def test_log_slope_recovers_a_line():
  depth = 9
  l = np.arange(1, depth + 1)
  log_ratio = np.stack([0.3 * (depth - l), -0.1 * (depth - l) + 2.0])
  np.testing.assert_allclose(gs.log_slope(log_ratio), [0.3, -0.1], rtol=1e-12)


def test_slope_tests_count_each_distinct_test_once_with_holm():
  # Two activations, two sigma_w: tanh's slopes differ per sigma_w (two tests per weights),
  # relu's are the same at both (one test), and linear-like exact slopes are not tested.
  log_chi = [-0.1, 0.2]
  offsets = np.array([0.004, 0.006, 0.005, 0.007])
  tanh = {"orthogonal": np.stack([-0.1 + offsets, 0.2 + offsets / 100], axis=1),
          "gaussian": np.stack([-0.1 - offsets / 2, 0.2 + np.array([0.01, -0.02, 0.0, 0.01])], axis=1)}
  relu = {"orthogonal": np.stack([-0.1 + offsets[::-1] * 2, 0.2 + offsets[::-1] * 2], axis=1),
          "gaussian": np.stack([np.full(4, -0.1), np.full(4, 0.2)], axis=1) + 1e-16}
  mlp = {"cases": [{"activation": a, "log_chi": log_chi,
                    "weights": {w: {"slope_per_seed": slopes.tolist()}
                                for w, slopes in weights.items()}}
                   for a, weights in (("tanh", tanh), ("relu", relu))], "seconds": 1.0}
  tests = {(c["activation"], w): e["slope_vs_log_chi"]
           for c in gs.with_slope_tests(mlp)["cases"] for w, e in c["weights"].items()}
  assert [t["verdict"] for t in tests[("relu", "gaussian")]] == ["exact", "exact"]
  assert tests[("relu", "orthogonal")][0] == tests[("relu", "orthogonal")][1]
  assert tests[("tanh", "orthogonal")][0]["mean_difference"] == pytest.approx(0.0055)
  p = np.array([tests[k][j]["p_value"] for k in (("tanh", "orthogonal"), ("tanh", "gaussian"))
                for j in (0, 1)] + [tests[("relu", "orthogonal")][0]["p_value"]])
  holm = np.array([tests[k][j]["p_holm"] for k in (("tanh", "orthogonal"), ("tanh", "gaussian"))
                   for j in (0, 1)] + [tests[("relu", "orthogonal")][0]["p_holm"]])
  # Holm by hand, m = 5.
  expected, running = np.empty(5), 0.0
  for i, k in enumerate(np.argsort(p)):
    running = max(running, min(1.0, (5 - i) * p[k]))
    expected[k] = running
  np.testing.assert_allclose(holm, expected, rtol=1e-12)
  assert tests[("tanh", "gaussian")][0]["family_size"] == 5


def test_summarize_rnn_by_hand():
  def member(label, seed, init, last, acc):
    return {"config": {"label": label, "seed": seed}, "status": "done",
            "initial": {"grad_norm_through_time": init},
            "epochs": [{"grad_norm_through_time": last}], "test_accuracy": acc}
  config = gs.StudyConfig(rnn_gains=(1.0,), rnn_seeds=2)
  sweep = gradients_rnn.rnn_train_config(config)
  label = sweep.members[0].label
  metrics = {"members": [member(label, 0, [0.01, 1.0], [1.0, 1.0], 0.5),
                         member(label, 1, [0.001, 1.0], [10.0, 1.0], 0.7)],
             "grad_norm_time_steps": [0, 1]}
  summary = gradients_rnn.summarize_rnn(harness.SweepResult(sweep, metrics), config.rnn_gains)
  assert summary["time_steps"] == [0, 1]
  (entry,) = summary["gains"]
  assert entry["gain"] == 1.0 and entry["seeds"] == 2
  assert entry["initial"]["log10_first_over_last_mean"] == pytest.approx(-2.5)
  assert entry["trained"]["log10_first_over_last_mean"] == pytest.approx(0.5)
  # n = 2: half-width = t_{0.975,1} |a - b| / 2 = 12.706 * 0.5.
  assert entry["initial"]["log10_first_over_last_ci95"] == pytest.approx(12.70620474 * 0.5,
                                                                          rel=1e-8)
  assert entry["test_accuracy_mean"] == pytest.approx(0.6)


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="one value per activation"):
    gs.StudyConfig(sigma_b=(0.1,))
  with pytest.raises(ValueError, match="seeds must be >= 2"):
    gs.StudyConfig(seeds=1)
  with pytest.raises(ValueError, match="unknown activation"):
    gs.StudyConfig(activations=("swish",), sigma_b=(0.0,))


def test_data_dir_resolution(tmp_path):
  assert data.resolve_data_dir("mnist", None) is None    # MNIST goes through TFDS...
  assert data.resolve_data_dir("mnist", str(tmp_path)) == str(tmp_path)   # ...unless given.
  offline = data.OFFLINE_DIRS["fashion_mnist"]
  expected = offline if os.path.isdir(offline) else None
  assert data.resolve_data_dir("fashion_mnist", None) == expected


def _script(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "study_gradients.py"),
                         *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_script_quick_mode(tmp_path):
  out = tmp_path / "a"
  result = _script("--quick", f"--out_dir={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  saved = io.read_json(out / "gradients.json")
  assert [c["activation"] for c in saved["mlp"]["cases"]] == ["tanh", "linear", "relu"]
  linear = saved["mlp"]["cases"][1]
  # Exact for linear orthogonal networks (float64): slope = log chi, no per-input spread.
  np.testing.assert_allclose(linear["weights"]["orthogonal"]["slope_mean"], linear["log_chi"],
                             atol=1e-10)
  assert max(linear["weights"]["orthogonal"]["log_gain_std"]) < 1e-10
  assert min(linear["weights"]["gaussian"]["log_gain_std"]) > 0.1
  assert saved["rnn"]["dataset"] == "synthetic"
  assert [g["gain"] for g in saved["rnn"]["gains"]] == [1.0, 1.25]
  for name in ("A1_layer_norms.png", "A2_log_slopes.png", "A3_rnn_through_time.png",
               "rnn/metrics.json"):
    assert (out / name).stat().st_size > 1000
  assert not (out / "rnn" / "checkpoint.npz").exists()
