"""Study B's core functions against closed forms, and its quick run in-process.

Closed forms: a one-matrix linear network under gradient descent at rate lr on
1/2 ||W - M||^2 has W_t - M = (1 - lr)^t (W_0 - M), so its relative error decays as
(1 - lr)^(2t) exactly; at an orthogonal init every partial product is an isometry, so one step at
lr0 / D moves the end-to-end map by -lr0 (W - M) up to O(lr0^2) (Saxe et al. 2014).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isometry.results import io
from isometry.theory import meanfield
from isometry.engine import models
from isometry.studies import convergence as cs


def test_masked_product_matches_explicit_product(key):
  params = cs.init_deep_linear(key, 1, 5, 6, 3, inits=("orthogonal", "gaussian"))  # Gaussian
  stack, out = np.asarray(params["stack"], np.float64), np.asarray(params["out"], np.float64)
  for depth in (1, 3, 5):
    expected = np.eye(6)
    for l in range(depth - 1):
      expected = expected @ stack[l]
    expected = expected @ out
    # float32 products of <= 5 matrices with O(1) entries: rounding ~1e-6.
    np.testing.assert_allclose(cs.deep_linear_map(params, depth), expected, atol=1e-5)
  # Traced depth (how the sweep calls it) gives the same.
  np.testing.assert_allclose(jax.jit(cs.deep_linear_map)(params, jnp.int32(3)),
                             cs.deep_linear_map(params, 3), atol=1e-6)


def test_orthogonal_init_is_isometric(key):
  params = cs.init_deep_linear(key, 0, 4, 8, 3)  # inits[0] = orthogonal
  product = np.asarray(cs.deep_linear_map(params, 4), np.float64)
  np.testing.assert_allclose(product.T @ product, np.eye(3), atol=1e-5)


def test_one_matrix_error_decays_geometrically(key):
  k_t, k_w = jax.random.split(key)
  teacher = cs.linear_teacher(k_t, 8, 4)
  params = cs.init_deep_linear(k_w, 1, 3, 8, 4)   # stack unused at depth 1
  lr, steps = 0.1, 30
  curve = np.asarray(cs.train_deep_linear(params, teacher, 1, lr, steps), np.float64)
  expected = curve[0] * (1 - lr)**(2 * np.arange(steps + 1))
  # float32: relative rounding ~1e-6 per step, accumulated over 30 steps.
  np.testing.assert_allclose(curve, expected, rtol=1e-4)


@pytest.mark.parametrize("depth", [2, 5])
def test_first_step_on_the_map_is_depth_independent_at_orthogonal_init(key, depth):
  """W_1 - W_0 = -lr0 (W_0 - M) + O(lr0^2) for an isometric init at lr = lr0 / D."""
  k_t, k_w = jax.random.split(key)
  teacher = cs.linear_teacher(k_t, 8, 4)
  params = cs.init_deep_linear(k_w, 0, depth, 8, 4)
  lr0 = 1e-3
  grads = jax.grad(lambda p: 0.5 * jnp.sum(jnp.square(cs.deep_linear_map(p, depth) - teacher)))(
      params)
  stepped = jax.tree.map(lambda p, g: p - lr0 / depth * g, params, grads)
  w0 = np.asarray(cs.deep_linear_map(params, depth), np.float64)
  w1 = np.asarray(cs.deep_linear_map(stepped, depth), np.float64)
  change = w1 - w0
  predicted = -lr0 * (w0 - np.asarray(teacher, np.float64))
  # Second order: lr0^2 * O(||G||^2) ~ 1e-6 * few; float32 rounding of w ~ 1e-7 * ||w||.
  np.testing.assert_allclose(change, predicted, atol=2e-5)
  assert np.abs(predicted).max() > 5e-4   # the step itself is well above the tolerance
  # A Gaussian init is not isometric: its first step on the map is not -lr0 G.
  params_g = cs.init_deep_linear(k_w, 1, depth, 8, 4)
  grads_g = jax.grad(lambda p: 0.5 * jnp.sum(jnp.square(cs.deep_linear_map(p, depth) - teacher)))(
      params_g)
  stepped_g = jax.tree.map(lambda p, g: p - lr0 / depth * g, params_g, grads_g)
  w0g = np.asarray(cs.deep_linear_map(params_g, depth), np.float64)
  change_g = np.asarray(cs.deep_linear_map(stepped_g, depth), np.float64) - w0g
  assert np.abs(change_g + lr0 * (w0g - np.asarray(teacher))).max() > 1e-4


def test_steps_to_threshold_and_summary():
  curves = np.array([[[1.0, 0.5, 0.05, 0.01], [1.0, 0.2, 0.009, 0.001]],
                     [[1.0, np.nan, np.nan, np.nan], [1.0, 0.5, 0.2, 0.1]]])
  steps = cs.steps_to_threshold(curves, 0.01)
  np.testing.assert_array_equal(steps, [[3, 2], [np.inf, np.inf]])
  summary = cs.summarize_steps(steps.reshape(2, 1, 2), depths=(1, 4), inits=("orthogonal",))
  first, second = summary
  assert first["steps"] == [3, 2] and first["reached"] == 2
  # log10 of 3 and 2: mean and t-interval by hand (t_{0.975,1} = 12.70620474).
  assert first["log10_steps_mean"] == pytest.approx((np.log10(3) + np.log10(2)) / 2)
  assert first["log10_steps_ci95"] == pytest.approx(12.70620474 * abs(np.log10(3 / 2)) / 2,
                                                    rel=1e-8)
  assert second["steps"] == [None, None] and second["reached"] == 0
  assert second["log10_steps_mean"] is None and second["median_steps"] is None


def test_prepare_inputs_put_the_first_layer_at_q_star(key):
  q_star = 0.25
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", q_star))
  rng = np.random.default_rng(0)
  images = rng.random((64, 28, 28))
  x = cs.prepare_inputs(images, images.mean(axis=0), q_star, sigma_w, sigma_b)
  assert x.shape == (64, 784) and x.dtype == np.float32
  np.testing.assert_allclose(np.sum(x.astype(np.float64)**2, axis=1),
                             784 * (q_star - sigma_b**2) / sigma_w**2, rtol=1e-5)
  # Monte-Carlo through a width-2048 Gaussian input layer: mean of h^2 over 64 x 2048 units
  # has relative standard error ~ sqrt(2 / 2048) / sqrt(#independent inputs) < 1%; rtol 5%.
  params = models.init_mlp(key, 784, 10, 1, 2048,
                           models.mixed_initializer(("gaussian",), 0, sigma_w), sigma_b)
  h = x @ np.asarray(params["input"]["w"]) + np.asarray(params["input"]["b"])
  assert np.mean(h.astype(np.float64)**2) == pytest.approx(q_star, rel=0.05)


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="linear_out"):
    cs.StudyConfig(linear_out=32)
  with pytest.raises(ValueError, match="seeds"):
    cs.StudyConfig(seeds=1)
  with pytest.raises(ValueError, match="inits"):
    cs.StudyConfig(inits=("glorot_uniform",))
  with pytest.raises(ValueError, match="tanh_depths"):
    cs.StudyConfig(tanh_depths=(0, 2))


@pytest.mark.slow
def test_quick_run(tmp_path):
  out = tmp_path / "b"
  cs.run(cs.StudyConfig.quick(), str(out))
  saved = io.read_json(out / "convergence.json")
  linear = saved["linear"]
  assert [(e["depth"], e["init"]) for e in linear["summary"]] == [
      (d, i) for d in (1, 2, 4) for i in ("orthogonal", "gaussian")]
  # Depth 1 is plain linear regression at rate lr0 = 0.1: error ratio 0.81 per step, so from
  # ~2 to 1e-2 in about log(200) / -log(0.81) = 25 steps, for either init.
  for e in linear["summary"][:2]:
    assert e["reached"] == e["seeds"] == 5 and all(20 <= s <= 35 for s in e["steps"])
  assert saved["tanh"]["dataset"] == "synthetic"
  with np.load(out / "curves.npz") as curves:
    assert curves["linear"].shape == (3, 2, 5, 101)
    assert curves["tanh"].shape == (3, 2, 5, 41)
  for name in ("B1_steps_vs_depth.png", "B2_loss_curves.png"):
    assert (out / name).stat().st_size > 1000
