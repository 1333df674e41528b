"""The gain study: its Jacobians and growth rates against dense references, the training seeds'
input kernels, and its quick run on tiny synthetic data, in-process."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry import data
from isometry.engine import models
from isometry.engine import train
from isometry.theory import rnn_meanfield as rm
from isometry.studies import rnn_gain as study
from isometry.studies import rnn_gain_theory as theory


def _explicit_jacobian(params, x):
  """prod_t D_t W^T by a Python loop over steps: the row-vector RNN h_t = tanh(x_t U + h W)."""
  w, u = np.asarray(params["recurrent"]), np.asarray(params["input"])
  h = np.zeros(w.shape[0])
  jac = np.eye(w.shape[0])
  for x_t in np.asarray(x):
    a = x_t @ u + h @ w
    h = np.tanh(a)
    jac = (1.0 - h**2)[:, None] * (w.T @ jac)
  return jac


def test_data_rnn_jacobian_and_growth_rate_match_the_explicit_product(key):
  k_init, k_x, k_u = jax.random.split(key, 3)
  steps, dim, width = 5, 3, 6
  with jax.enable_x64(True):
    params = theory.init_rnn(k_init, 1.3, dim, width, rm.glorot_variance(dim, width))
    x = jax.random.uniform(k_x, (2, steps, dim), jnp.float64)
    u = jax.random.normal(k_u, (4, 2, width), jnp.float64)
    jac = theory.data_rnn_jacobian(params, x[0])
    q, rate = theory.measure_growth(params, x, u)
  expected = _explicit_jacobian(params, x[0])
  # float64 products of 5 small matrices: agreement to rounding.
  np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.linalg.svd(jac, compute_uv=False),
                             np.linalg.svd(expected, compute_uv=False), rtol=1e-12)
  for b in range(2):
    j = _explicit_jacobian(params, x[b])
    pulled = np.asarray(u[:, b]) @ j          # u^T J = (J^T u)^T
    ratio = np.sum(pulled**2, -1) / np.sum(np.asarray(u[:, b])**2, -1)
    assert rate[b] == pytest.approx(np.log(ratio.mean()) / steps, rel=1e-12)
  w, uk = np.asarray(params["recurrent"]), np.asarray(params["input"])
  h, q_expected = np.zeros(width), []
  for x_t in np.asarray(x[1]):
    a = x_t @ uk + h @ w
    q_expected.append(np.mean(a**2))
    h = np.tanh(a)
  np.testing.assert_allclose(q[:, 1], q_expected, rtol=1e-12)


def test_init_rnn_is_the_keras_model_at_its_width_and_rescales_the_drive_elsewhere(key):
  dim, hidden = 4, 8
  variance = rm.glorot_variance(dim, hidden)
  with jax.enable_x64(True):
    model = theory.init_rnn(key, 1.2, dim, hidden, variance)
    wide = theory.init_rnn(key, 1.2, dim, 32, variance)
    recurrent = jax.nn.initializers.orthogonal()
    keras = models.init_rnn(key, dim, hidden, 10, lambda k, s, d: 1.2 * recurrent(k, s, d),
                                  jnp.float64)
  np.testing.assert_allclose(model["input"], keras["input"], rtol=1e-15)
  np.testing.assert_allclose(model["recurrent"], keras["recurrent"], rtol=1e-14)
  w = np.asarray(model["recurrent"])
  np.testing.assert_allclose(w.T @ w, 1.44 * np.eye(hidden), atol=1e-12)
  # Glorot uniform: |U_ij| <= sqrt(3 variance), after the rescaling at width 32 as well.
  assert np.max(np.abs(wide["input"])) <= np.sqrt(3 * variance) + 1e-12
  assert np.max(np.abs(wide["input"])) > 0.8 * np.sqrt(3 * variance)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """The quick study, run once for the tests of this module: (its folder, study.json content)."""
  out = tmp_path_factory.mktemp("gain")
  return out, study.run(study.StudyConfig.quick(), str(out))


@pytest.mark.slow
def test_seed_input_kernels_are_the_ones_the_training_sweep_draws(quick_run):
  # The quick run's own sweep and images, so that the init it compiled serves here too. U
  # depends on the seed alone: every member (each gain, each penalty) starts from its seed's.
  config = study.StudyConfig.quick()
  dataset = study.load(config)
  kernels = study.seed_input_kernels(config, dataset)
  assert kernels.shape == (config.seeds, 8, config.hidden)
  sweep = study.train_config(config, quick_run[1]["theory"]["g_star"])
  params = train.initial_params(sweep, dataset)
  for i, member in enumerate(sweep.members):
    np.testing.assert_array_equal(params["input"][i], kernels[member.seed])
  assert not np.array_equal(kernels[0], kernels[1])


def test_crossing_interpolates_the_sign_change():
  assert theory._crossing(np.array([1.0, 2.0, 3.0]), np.array([-0.2, 0.2, 0.5])) == \
      pytest.approx(1.5)
  assert theory._crossing(np.array([1.0, 2.0]), np.array([0.1, 0.2])) is None


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="seeds"):
    study.StudyConfig(seeds=1)
  with pytest.raises(ValueError, match="dataset"):
    study.StudyConfig(dataset="cifar10")
  with pytest.raises(ValueError, match="hand_gains"):
    study.StudyConfig(hand_gains=(1.0, -1.0))
  assert data.resolve_data_dir("mnist", None) is None


@pytest.mark.slow
def test_quick_run_writes_every_result(quick_run):
  tmp_path, returned = quick_run
  for name in ("study.json", "meanfield.png", "spectra.png", "accuracy.png"):
    assert (tmp_path / name).stat().st_size > 1000, name
  result = json.loads((tmp_path / "study.json").read_text())
  th = result["theory"]
  assert result["dataset"] == "synthetic"
  assert set(th["critical_gain"]) == set(theory.READINGS)
  assert th["g_star"] == th["critical_gain"]["per_example"]
  # Uniform [0, 1] pixels: E x^2 = 1/3, so q_in = 8 / 3 * 2 / (8 + 16) over the 8-pixel rows
  # (64 images: the sample mean is within a few percent).
  assert th["q_in_mean"] == pytest.approx(8 / 3 * 2 / 24, rel=0.05)
  assert [c["gain"] for c in result["spectra"]][1:] == [1.0, 1.025, 1.25]
  for case in result["spectra"]:
    assert set(case["measured"]) == set(theory.VARIANTS)
  summary = result["training"]["summary"]
  assert returned["training"]["gains"] == result["training"]["gains"]
  assert result["training"]["gains"][0] == round(th["g_star"], 3)
  assert len(summary["results"]) == 8 and len(summary["comparisons"]) == 6
  assert (tmp_path / "training" / "metrics.json").exists()
