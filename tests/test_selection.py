"""Path selection on a flax param tree and on the engine's plain dict, with optax.masked,
optax.multi_transform and a penalty summed over the selected matrices."""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isometry.theory import initializers
from isometry.engine import models
from isometry.engine import nn as inn
from isometry.engine import selection


class _Model(nn.Module):
  @nn.compact
  def __call__(self, xs):
    h = nn.RNN(inn.RNNCell(6))(xs)[:, -1]
    h = nn.Dense(5)(h)
    return nn.Dense(3)(h)


def _filled(shapes, seed):
  """Arrays of the given shapes with distinct random values (numpy: no compilation needed)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def flax_params():
  # Only the tree's structure and shapes matter here: eval_shape traces init without running it.
  return _filled(jax.eval_shape(_Model().init, jax.random.key(0), jnp.ones((2, 4, 3))), 0)


@pytest.fixture(scope="module")
def engine_params():
  return _filled(jax.eval_shape(lambda k: models.init_rnn(
      k, 3, 6, 10, initializers.get_initializer("orthogonal")), jax.random.key(1)), 1)


def test_globs_on_a_flax_tree(flax_params):
  assert selection.selected_paths(flax_params, "*/recurrent/kernel") == [
      "params/RNNCell_0/recurrent/kernel"]
  assert selection.selected_paths(flax_params, "params/Dense_*/kernel") == [
      "params/Dense_0/kernel", "params/Dense_1/kernel"]
  # Several selectors: any of them.
  assert len(selection.selected_paths(flax_params, ["*/bias", "*/recurrent/*"])) == 4
  mask = selection.mask(flax_params, "*/recurrent/kernel")
  assert jax.tree.structure(mask) == jax.tree.structure(flax_params)
  assert sum(jax.tree.leaves(mask)) == 1


def test_predicate_on_paths_and_leaves(flax_params):
  square = selection.mask(flax_params, lambda path, leaf: leaf.ndim == 2
                          and leaf.shape[0] == leaf.shape[1])
  assert selection.selected_paths(flax_params, lambda path, leaf: leaf.ndim == 2
                                  and leaf.shape[0] == leaf.shape[1]) == [
      "params/RNNCell_0/recurrent/kernel"]
  assert sum(jax.tree.leaves(square)) == 1
  # The path is the flax-style tuple of keys.
  seen = []
  selection.mask(flax_params, lambda path, leaf: seen.append(path) or False)
  assert ("params", "RNNCell_0", "input", "kernel") in seen


def test_plain_dict_and_other_containers(engine_params):
  assert selection.selected_paths(engine_params, "recurrent") == ["recurrent"]
  assert selection.selected_paths(engine_params, "readout/*") == ["readout/b", "readout/w"]

  class Pair(NamedTuple):
    kernel: jax.Array
    scale: jax.Array

  tree = {"layers": [Pair(jnp.ones((2, 2)), jnp.ones(())), Pair(jnp.ones((2, 2)), jnp.ones(()))]}
  assert selection.selected_paths(tree, "layers/*/kernel") == ["layers/0/kernel",
                                                               "layers/1/kernel"]


def test_mask_drives_optax_masked_and_labels_drive_multi_transform(flax_params):
  params = flax_params["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  mask = selection.mask(params, "*/recurrent/kernel")
  updates, _ = optax.masked(optax.sgd(1.0), mask).update(grads, optax.masked(
      optax.sgd(1.0), mask).init(params))
  changed = jax.tree.map(lambda u, g: bool(jnp.any(u != g)), updates, grads)
  assert changed == mask   # sgd scales by -1 where selected; elsewhere updates pass through
  labels = selection.labels(params, {"frozen": "*/bias", "slow": "Dense_*/*"}, default="fast")
  assert labels["RNNCell_0"]["input"]["bias"] == "frozen"   # first rule wins
  assert labels["Dense_1"]["bias"] == "frozen" and labels["Dense_1"]["kernel"] == "slow"
  assert labels["RNNCell_0"]["recurrent"]["kernel"] == "fast"
  tx = optax.multi_transform({"frozen": optax.set_to_zero(), "slow": optax.sgd(0.1),
                              "fast": optax.sgd(1.0)}, labels)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["Dense_0"]["bias"]).max()) == 0.0
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["RNNCell_0"]["recurrent"]["kernel"], -1.0)


def test_selected_sum_is_a_penalty_over_chosen_matrices(flax_params):
  params = flax_params["params"]

  def penalty(w):
    return jnp.sum(jnp.square(w.T @ w - jnp.eye(w.shape[1])))

  kernels = [np.asarray(params["Dense_0"]["kernel"]), np.asarray(params["Dense_1"]["kernel"])]
  expected = sum(float(np.sum(np.square(w.T @ w - np.eye(w.shape[1])))) for w in kernels)
  assert float(selection.selected_sum(penalty, params, "Dense_*/kernel")) == pytest.approx(
      expected, rel=1e-5)
  mask = selection.mask(params, "Dense_*/kernel")
  assert float(selection.selected_sum(penalty, params, mask)) == pytest.approx(expected, rel=1e-5)
  assert float(selection.selected_sum(penalty, params, "nothing/*")) == 0.0
  # Differentiable: the penalty's gradient lands on the selected leaves only.
  grads = jax.jit(jax.grad(lambda p: selection.selected_sum(penalty, p, "Dense_*/kernel")))(
      params)
  assert float(jnp.abs(grads["RNNCell_0"]["recurrent"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(grads["Dense_0"]["kernel"]).max()) > 0.0


def test_bad_selectors(flax_params):
  with pytest.raises(TypeError, match="selector"):
    selection.mask(flax_params, 3)
  with pytest.raises(ValueError, match="empty"):
    selection.mask(flax_params, [])
  with pytest.raises(ValueError, match="one Python bool per leaf"):
    selection.selected_sum(jnp.sum, flax_params, {"params": True})
