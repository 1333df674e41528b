"""Select parameter leaves by path: masks for optax.masked, labels for optax.multi_transform.

A leaf's path is the tuple of its keys from the root, as strings, the form of
`flax.traverse_util.flatten_dict`: ("params", "RNN_0", "cell", "recurrent", "kernel") for a flax
tree, ("recurrent",) for the engine's `models.init_rnn` dict. Dict keys give their str, sequence
indices their decimal index, attributes (NamedTuples, dataclasses) their name. Paths come from
`jax.tree_util.tree_map_with_path`, so any pytree works, and the mask has the tree's structure.

A selector is
  - a glob over the path joined by "/", matched by `fnmatch.fnmatchcase` (case-sensitive; "*"
    matches any characters, "/" included, so "*/recurrent/kernel" selects that kernel at any
    depth and "params/Dense_*/kernel" every Dense kernel directly under params; "?" and "[...]"
    as in fnmatch);
  - or a predicate `(path: tuple[str, ...], leaf) -> bool`;
  - or a sequence of those: a leaf is selected if any of them selects it.

  mask = selection.mask(params, "*/recurrent/kernel")
  tx = optax.chain(optax.adam(1e-3), optax.masked(constraints.stiefel_projection(g), mask))
  labels = selection.labels(params, {"stiefel": "*/recurrent/kernel"}, default="adam")
  tx = optax.multi_transform(
      {"stiefel": constraints.riemannian_adam(1e-3), "adam": optax.adam(1e-3)}, labels)
  penalty = selection.selected_sum(lambda w: jnp.sum((w.T @ w - jnp.eye(w.shape[1]))**2),
                                   params, "*/kernel")
"""
import fnmatch
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp

Predicate = Callable[[tuple, Any], bool]
Selector = Union[str, Predicate, Sequence[Union[str, Predicate]]]


def _key_str(entry) -> str:
  if isinstance(entry, jax.tree_util.DictKey):
    return str(entry.key)
  if isinstance(entry, jax.tree_util.SequenceKey):
    return str(entry.idx)
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  if isinstance(entry, jax.tree_util.FlattenedIndexKey):
    return str(entry.key)
  return str(entry)


def key_path(path) -> tuple:
  """A jax key path (from `tree_map_with_path`) as a flax-style tuple of strings."""
  return tuple(_key_str(entry) for entry in path)


def path_string(path) -> str:
  """A jax key path as "a/b/c", the string globs are matched against."""
  return "/".join(key_path(path))


def _matcher(selector: Selector) -> Callable[[tuple, Any], bool]:
  if isinstance(selector, str):
    return lambda path, leaf: fnmatch.fnmatchcase("/".join(path), selector)
  if callable(selector):
    return lambda path, leaf: bool(selector(path, leaf))
  if isinstance(selector, Sequence):
    matchers = [_matcher(s) for s in selector]
    if not matchers:
      raise ValueError("an empty sequence of selectors selects nothing; pass at least one")
    return lambda path, leaf: any(m(path, leaf) for m in matchers)
  raise TypeError(f"a selector is a glob string, a predicate (path, leaf) -> bool, or a "
                  f"sequence of them; got {type(selector).__name__}")


def mask(tree, selector: Selector):
  """A pytree of bools with `tree`'s structure: True where `selector` selects the leaf.

  Usable as the mask of `optax.masked` (and of `optax.add_decayed_weights`).
  """
  match = _matcher(selector)
  return jax.tree_util.tree_map_with_path(lambda path, leaf: match(key_path(path), leaf), tree)


def selected_paths(tree, selector: Selector) -> list:
  """The "a/b/c" paths of the selected leaves, in tree order (to check a selector)."""
  match = _matcher(selector)
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return [path_string(path) for path, leaf in leaves if match(key_path(path), leaf)]


def labels(tree, rules: Mapping[str, Selector], default: str):
  """Label pytree for `optax.multi_transform`: the first rule (in order) that selects a leaf
  names it, and leaves no rule selects get `default`."""
  matchers = [(label, _matcher(selector)) for label, selector in rules.items()]

  def label(path, leaf):
    names = key_path(path)
    for name, match in matchers:
      if match(names, leaf):
        return name
    return default

  return jax.tree_util.tree_map_with_path(label, tree)


def selected_sum(fn: Callable[[jax.Array], jax.Array], tree, selection) -> jax.Array:
  """sum of fn(leaf) over the selected leaves (0.0 if none): a penalty on chosen matrices.

  Args:
    fn: leaf -> scalar (e.g. ||W^T W - g^2 I||_F^2).
    tree: params.
    selection: a selector, or a mask pytree of Python bools (from `mask`).
  """
  if _is_selector(selection):
    selection = mask(tree, selection)
  leaves, chosen = jax.tree.leaves(tree), jax.tree.leaves(selection)
  if len(chosen) != len(leaves) or not all(isinstance(c, bool) for c in chosen):
    raise ValueError("the mask must have the tree's structure with one Python bool per leaf")
  return sum((fn(leaf) for leaf, c in zip(leaves, chosen) if c), start=jnp.zeros(()))


def _is_selector(x) -> bool:
  if isinstance(x, str) or callable(x):
    return True
  return (isinstance(x, (list, tuple)) and len(x) > 0
          and all(isinstance(s, str) or callable(s) for s in x))
