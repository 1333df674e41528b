"""Soft orthogonality penalties `f(w, gain) -> scalar` on a weight matrix, selectable by name.

Every penalty measures how far `w` (shape (n_in, n_out), the model computes x @ w) is from
`gain` times a matrix with orthonormal columns, i.e. from W^T W = gain^2 I. With gain = 1 they
are the penalties of Bansal, Chen & Wang 2018; with the init gain they keep the weights near the
scaled-orthogonal point that the initializer chose (Hlav 2019's eq. 11 adjusts SO this way).

The Gram matrix is W^T W, shape (n_out, n_out): it can equal gain^2 I only when n_in >= n_out
(a "tall" matrix). For a wide matrix (n_in < n_out) use `double_soft_orthogonality`, which also
penalizes W W^T, or pass the transpose.

Names for `get_regularizer`:
  "none": 0.
  "so": soft orthogonality, ||W^T W / g^2 - I||_F^2.
  "notebook_so": the seed notebook's literal Keras penalty, mean((W^T W / g^2 - 1)^2).
  "dso": double soft orthogonality, SO of W plus SO of W^T.
  "mc": mutual coherence, max |W^T W / g^2 - I|.
  "srip": spectral restricted isometry, spectral norm of W^T W / g^2 - I by power iteration.

All are pure, jit/vmap/grad-compatible functions of `w` and `gain` (gain may be a traced
scalar, so a sweep can vmap over it). Multiply by the regularization strength outside.

References:
  N. Bansal, X. Chen, Z. Wang, Can we gain more from orthogonality regularizations in training
  deep CNNs?, NeurIPS 2018 (SO, DSO, MC, SRIP).
  M. Hlav, 2019: orthogonal regularization of a SimpleRNN's recurrent kernel (paper, eq. 11,
  and the notebook OrthogonalRegRNNSV.ipynb whose Keras code "notebook_so" reproduces).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

Regularizer = Callable[..., jax.Array]


def _scaled_gram_minus_identity(w: jax.Array, gain) -> jax.Array:
  """W^T W / gain^2 - I, shape (n_out, n_out)."""
  if w.ndim != 2:
    raise ValueError(f"expected a matrix (n_in, n_out), got shape {w.shape}")
  gram = w.T @ w / jnp.square(gain)
  return gram - jnp.eye(w.shape[1], dtype=gram.dtype)


def none(w: jax.Array, gain=1.0) -> jax.Array:
  """No penalty: 0 in w's dtype (so `jax.grad` gives zeros)."""
  del gain
  return jnp.zeros((), dtype=w.dtype)


def soft_orthogonality(w: jax.Array, gain=1.0) -> jax.Array:
  """Soft orthogonality ||W^T W / gain^2 - I||_F^2.

  With gain = 1 this is Bansal et al.'s SO penalty; its gradient is 4 W (W^T W - I). With the
  init gain it is the gain-adjusted penalty of Hlav 2019's eq. 11, which writes
  ||W W^T / g^2 - I||_F^2: for square W the two agree, since ||A^T A - I||_F^2 =
  tr((A^T A)^2) - 2 tr(A^T A) + n and tr((A A^T)^k) = tr((A^T A)^k). The gradient is
  4 / g^2 W (W^T W / g^2 - I).

  Args:
    w: (n_in, n_out) weight matrix.
    gain: scale of the target, W^T W = gain^2 I.

  Returns:
    Scalar penalty, zero iff the columns of w / gain are orthonormal.

  References:
    Bansal, Chen & Wang 2018 (SO).
  """
  return jnp.sum(jnp.square(_scaled_gram_minus_identity(w, gain)))


def notebook_soft_orthogonality(w: jax.Array, gain=1.0) -> jax.Array:
  """The seed notebook's literal Keras penalty: mean((W^T W / gain^2 - 1)^2).

  Not an orthogonality penalty: subtracting 1 from every entry sets an all-ones target for the
  Gram matrix (every pair of columns parallel), not the identity. It is kept, under a name that
  says so, to reproduce the notebook's numbers; for orthogonality use `soft_orthogonality`. It
  is also a mean over the n_out^2 entries rather than a sum.

  Args:
    w: (n_in, n_out) weight matrix.
    gain: the Gram matrix is divided by gain^2 as in the notebook.

  Returns:
    Scalar, mean over entries of (W^T W / gain^2 - 1)^2.

  References:
    Hlav 2019, the seed notebook's Keras regularizer.
  """
  if w.ndim != 2:
    raise ValueError(f"expected a matrix (n_in, n_out), got shape {w.shape}")
  gram = w.T @ w / jnp.square(gain)
  return jnp.mean(jnp.square(gram - 1.0))


def double_soft_orthogonality(w: jax.Array, gain=1.0) -> jax.Array:
  """Double soft orthogonality ||W^T W/g^2 - I||_F^2 + ||W W^T/g^2 - I||_F^2.

  Zero only for square gain * orthogonal W; for a rectangular W one of the two terms is
  bounded below by |n_in - n_out| (the rank deficiency), which is why Bansal et al. propose
  it: it penalizes both over- and under-complete directions.

  Args:
    w: (n_in, n_out) weight matrix.
    gain: target scale.

  Returns:
    Scalar penalty.

  References:
    Bansal, Chen & Wang 2018 (DSO).
  """
  return soft_orthogonality(w, gain) + soft_orthogonality(w.T, gain)


def mutual_coherence(w: jax.Array, gain=1.0) -> jax.Array:
  """Mutual coherence penalty ||W^T W / gain^2 - I||_inf, the largest absolute entry.

  Bansal et al. write it as the entrywise max norm of W^T W - I. For columns of norm gain the
  diagonal vanishes and this is the classical mutual coherence max_{i != j} |<w_i, w_j>| / g^2;
  otherwise the diagonal's deviation from 1 counts too. Its gradient flows only into the
  entry that attains the max (a subgradient).

  Args:
    w: (n_in, n_out) weight matrix.
    gain: target scale.

  Returns:
    Scalar penalty.

  References:
    Bansal, Chen & Wang 2018 (MC).
  """
  return jnp.max(jnp.abs(_scaled_gram_minus_identity(w, gain)))


def _safe_norm(v: jax.Array) -> jax.Array:
  """Euclidean norm with gradient 0 (a valid subgradient) at v = 0 instead of NaN."""
  sq = jnp.sum(jnp.square(v))
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def srip(w: jax.Array, gain=1.0, num_iterations: int = 2,
         key: Optional[jax.Array] = None) -> jax.Array:
  """Spectral restricted isometry penalty sigma_max(W^T W / gain^2 - I), by power iteration.

  M = W^T W / g^2 - I is symmetric, so power iteration v <- M v / ||M v|| converges to an
  eigenvector of the eigenvalue of largest magnitude and ||M v|| to the spectral norm. Bansal
  et al. run 2 iterations from a random vector at every step; here the start vector is drawn
  from `key`, and when key is None from the fixed key jax.random.key(0), so the penalty is a
  deterministic function of w (a generic start vector avoids the ones vector's failure when it
  is orthogonal to the top eigenvector). The estimate is a lower bound on the spectral norm and
  tight once converged; gradients flow through the iterations (no stop_gradient). At exactly
  orthogonal w (M = 0) the value is 0 and the gradient 0.

  Args:
    w: (n_in, n_out) weight matrix.
    gain: target scale.
    num_iterations: power iterations (a static Python int).
    key: optional PRNG key for the start vector.

  Returns:
    Scalar estimate of ||W^T W / g^2 - I||_2.

  References:
    Bansal, Chen & Wang 2018 (SRIP and its power-iteration estimate).
  """
  m = _scaled_gram_minus_identity(w, gain)
  if key is None:
    key = jax.random.key(0)
  v = jax.random.normal(key, (m.shape[0],), dtype=m.dtype)
  v = v / jnp.linalg.norm(v)

  def step(v, _):
    u = m @ v
    # Where M v = 0 (orthogonal w) keep v, whose image is 0 anyway.
    norm = _safe_norm(u)
    return jnp.where(norm > 0, u / jnp.where(norm > 0, norm, 1.0), v), None

  v, _ = jax.lax.scan(step, v, None, length=num_iterations)
  return _safe_norm(m @ v)


REGULARIZERS = {
    "none": none,
    "so": soft_orthogonality,
    "notebook_so": notebook_soft_orthogonality,
    "dso": double_soft_orthogonality,
    "mc": mutual_coherence,
    "srip": srip,
}

NAMES = tuple(REGULARIZERS)


def get_regularizer(name: str) -> Regularizer:
  """Returns the penalty `f(w, gain=1.0) -> scalar` called `name`.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in REGULARIZERS:
    raise ValueError(f"unknown regularizer {name!r}; choose one of {', '.join(NAMES)}")
  return REGULARIZERS[name]
