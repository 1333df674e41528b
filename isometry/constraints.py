"""Hard orthogonality constraints as optax `GradientTransformation`s, and the expm parametrization.

The constraint set is gain * Stiefel: W of shape (n_in, n_out), n_in >= n_out, with
W^T W = gain^2 I (for square W, gain times an orthogonal matrix; the point the orthogonal
initializer starts from). Every transformation acts leaf by leaf on 2-d leaves; select the
recurrent kernel with `optax.masked` (or `optax.multi_transform`), which hands the masked params
through, e.g.

  is_kernel = lambda params: jax.tree.map_with_path(lambda p, _: "recurrent" in str(p), params)
  tx = optax.chain(optax.adam(1e-3), optax.masked(stiefel_projection(gain), is_kernel))

Transformations, by how they compose:
  - `stiefel_projection`, `spectral_margin`: post-processing. Placed AFTER the optimizer in a
    chain; `update(updates, state, params)` returns updates u' such that params + u' lies on the
    set (a projected-gradient step: the optimizer's step, then the nearest point of the set).
  - `cayley_retraction`: a Riemannian gradient step. It consumes the raw Euclidean gradient, so it
    REPLACES the optimizer for that parameter:
      tx = optax.multi_transform({"cayley": cayley_retraction(gain, lr), "adam": optax.adam(lr)},
                                 labels)  # labels: "cayley" on the kernel, "adam" elsewhere.
  - `expm_parametrization`: no transformation; the model stores a skew generator `a` (trainable)
    and a frozen orthogonal `base`, and builds W = gain * base @ expm(a - a^T) in its forward pass.
    `get_constraint("expm", ...)` therefore returns `optax.identity()`.

params + updates is computed in float32 by `optax.apply_updates`, so the result is on the set
up to float32 rounding (W^T W = g^2 I to ~1e-6 relative); the post-processing transformations
do not accumulate this error because they project from scratch at every step.
"""
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]

NAMES = ("none", "projection", "cayley", "expm", "margin")
# Constraints that take the raw gradient and must replace the optimizer for their parameter.
REPLACES_OPTIMIZER = ("cayley",)
# Constraints that live in the model's parametrization rather than in the optimizer.
PARAMETRIZATIONS = ("expm",)


def _check_gain(gain) -> None:
  # A traced gain (vmap over gains) cannot be checked; a Python number can.
  if isinstance(gain, (int, float)) and not gain > 0:
    raise ValueError(f"gain must be > 0, got {gain}")


def _check_matrix(x: jax.Array) -> None:
  if x.ndim != 2:
    raise ValueError(f"orthogonality constraints act on matrices (n_in, n_out), got shape {x.shape}")


def _polar_unitary(x: jax.Array) -> jax.Array:
  """The orthogonal factor U of x = U P (U^T U = I for tall x, U U^T = I for wide x).

  jax's 'qdwh' polar is the more accurate on CPU (measured: max |U^T U - I| 1.8e-7 against
  1.0e-6 for 'svd' on 16x16 float32) but supports only tall or square matrices for side='right';
  wide matrices use 'svd'.
  """
  method = "qdwh" if x.shape[0] >= x.shape[1] else "svd"
  return jax.scipy.linalg.polar(x, method=method)[0]


def _require_params(params) -> None:
  if params is None:
    raise ValueError("this orthogonality constraint needs the current params: "
                     "call update(updates, state, params)")


def stiefel_projection(gain: float = 1.0) -> optax.GradientTransformation:
  """Projects params + updates onto gain * Stiefel after the optimizer's step.

  The Frobenius-nearest matrix with W^T W = g^2 I to a tall matrix Y is g U, with U the orthogonal
  factor of the polar decomposition Y = U P (Fan & Hoffman 1955); this is the projection of
  projected gradient descent.

  Args:
    gain: g > 0, the scale of the set (W^T W = g^2 I).

  Returns:
    A GradientTransformation with EmptyState whose update maps (u, W) to g polar(W + u) - W.
  """
  _check_gain(gain)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _require_params(params)

    def project(u, w):
      _check_matrix(w)
      return (gain * _polar_unitary(w + u)).astype(w.dtype) - w

    return jax.tree.map(project, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def spectral_margin(gain: float = 1.0, margin: float = 0.1) -> optax.GradientTransformation:
  """Clips the singular values of params + updates into [g (1 - m), g (1 + m)].

  Vorontsov et al. 2017 keep W in this band by factorizing W = U S V^T with U, V orthogonal and
  S = diag(g (1 + m (2 sigmoid(p) - 1))). Clipping the singular values of the unconstrained step
  instead is the Frobenius projection onto the same set (by von Neumann's trace inequality the
  nearest matrix with singular values in a set shares the singular vectors and clips the
  values), so this is projected gradient descent on their constraint set. margin = 0 is
  `stiefel_projection`.

  Args:
    gain: g > 0, the centre of the band.
    margin: m in [0, 1]; m = 1 is Vorontsov et al.'s widest band [0, 2 g], which bounds only
      the largest singular value.

  Returns:
    A GradientTransformation with EmptyState.

  References:
    E. Vorontsov, C. Trabelsi, S. Kadoury, C. Pal, On orthogonality and learning recurrent
    networks with long term dependencies, ICML 2017.
  """
  _check_gain(gain)
  if isinstance(margin, (int, float)) and not 0 <= margin <= 1:
    raise ValueError(f"margin must be in [0, 1], got {margin}")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _require_params(params)

    def clip(u, w):
      _check_matrix(w)
      left, s, right = jnp.linalg.svd(w + u, full_matrices=False)
      s = jnp.clip(s, gain * (1 - margin), gain * (1 + margin))
      return ((left * s[None, :]) @ right).astype(w.dtype) - w

    return jax.tree.map(clip, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


class CayleyState(NamedTuple):
  """Step count, for a learning-rate schedule."""
  count: jax.Array


def cayley_retraction(gain: float = 1.0, learning_rate: ScalarOrSchedule = 1e-3,
                      reorthogonalize: bool = False) -> optax.GradientTransformation:
  """A Riemannian gradient step on gain * Stiefel by the Cayley transform (Wen & Yin 2013).

  Takes the Euclidean gradient G = dL/dW (not an optimizer's update) and returns the update
  W_new - W with
    A = G W^T - W G^T                                (skew, (n_in, n_in)),
    W_new = (I + lr/2 A)^{-1} (I - lr/2 A) W.
  (I + lr/2 A)^{-1}(I - lr/2 A) is orthogonal for skew A, so W_new^T W_new = W^T W: the step stays
  on the set up to rounding, and d/dlr L(W_new) at lr = 0 is -||A||_F^2 / 2 (a descent curve).

  The gain: Wen & Yin work on the unit manifold, X = W / g, with gradient dL/dX = g G. Their
  A_X = (g G) X^T - X (g G)^T = G W^T - W G^T, and g X_new = (I + lr/2 A)^{-1}(I - lr/2 A) W: the
  gain cancels, and the step depends on it only through W. `gain` is used only by
  `reorthogonalize`.

  Rounding: the transform is orthogonal only up to the error of the linear solve, about
  cond(I + lr/2 A) * eps per step, and it accumulates. Measured in float32 on 16x16, gain 1.5,
  200 steps of Gaussian gradients: max |W^T W / g^2 - I| = 3e-6 at lr 0.1 and unit gradients,
  8e-5 at lr 10 and gradients of size 1000. `reorthogonalize=True` follows each step with the
  polar projection onto gain * Stiefel, which removes the drift (a retraction composed with a
  projection; the step changes by O(drift)).

  Compose with `optax.multi_transform`: this transformation for the constrained kernel, an
  ordinary optimizer for every other parameter. Do not chain it after another optimizer.

  Args:
    gain: g > 0 (see above).
    learning_rate: the step size tau, a scalar or an optax schedule of the step count.
    reorthogonalize: project W_new onto gain * Stiefel after the step (see above).

  Returns:
    A GradientTransformation with state CayleyState(count).

  References:
    Z. Wen, W. Yin, A feasible method for optimization with orthogonality constraints,
    Mathematical Programming 2013 (the Cayley curve Y(tau)).
  """
  _check_gain(gain)

  def init_fn(params):
    del params
    return CayleyState(count=jnp.zeros((), jnp.int32))

  def update_fn(grads, state, params=None):
    _require_params(params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def step(g, w):
      _check_matrix(w)
      a = g @ w.T - w @ g.T
      eye = jnp.eye(w.shape[0], dtype=w.dtype)
      half = 0.5 * lr * a
      w_new = jnp.linalg.solve(eye + half, (eye - half) @ w)
      if reorthogonalize:
        w_new = gain * _polar_unitary(w_new)
      return w_new.astype(w.dtype) - w

    return (jax.tree.map(step, grads, params),
            CayleyState(count=optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)


class ExpmParams(NamedTuple):
  """Parameters of W = gain * base @ expm(a - a^T)."""
  base: jax.Array  # (n_in, n_out), orthonormal columns; frozen.
  a: jax.Array  # (n_out, n_out), trainable; only its skew part a - a^T matters.


def expm_parametrization(base: jax.Array, a: jax.Array, gain=1.0) -> jax.Array:
  """W = gain * base @ expm(a - a^T), on gain * Stiefel for every a (Lezcano-Casado 2019).

  expm of a skew matrix is orthogonal, so if base has orthonormal columns, W^T W = g^2 I; the
  map a -> W is onto the connected component of base (SO(n) for square base), and gradient
  descent on the unconstrained a is an ordinary Euclidean problem. Keep `base` frozen (its
  gradient would leave the manifold) and train `a` with any optimizer.

  Args:
    base: (n_in, n_out) with orthonormal columns, e.g. from `init_expm`.
    a: (n_out, n_out) unconstrained generator.
    gain: g.

  Returns:
    (n_in, n_out) matrix W.

  References:
    M. Lezcano-Casado, D. Martinez-Rubio, Cheap orthogonal constraints in neural networks: a
    simple parametrization of the orthogonal and unitary group, ICML 2019.
  """
  _check_matrix(base)
  if a.shape != (base.shape[1], base.shape[1]):
    raise ValueError(f"a must be ({base.shape[1]}, {base.shape[1]}) for base {base.shape}, "
                     f"got {a.shape}")
  return gain * base @ jax.scipy.linalg.expm(a - a.T)


def init_expm(w: jax.Array, gain=1.0) -> ExpmParams:
  """Starting parameters with expm_parametrization(*init_expm(w, g), g) = g polar(w / g).

  For w = g * orthogonal (the orthogonal initializer) that is w itself up to rounding; the polar
  factor makes base exactly orthonormal for any tall w.

  Args:
    w: (n_in, n_out) initial weights, n_in >= n_out.
    gain: g.

  Returns:
    ExpmParams(base=polar(w / g), a=zeros((n_out, n_out))).
  """
  _check_matrix(w)
  if w.shape[0] < w.shape[1]:
    raise ValueError(f"expm parametrization needs n_in >= n_out, got {w.shape}")
  return ExpmParams(base=_polar_unitary(w / gain).astype(w.dtype),
                    a=jnp.zeros((w.shape[1], w.shape[1]), w.dtype))


def get_constraint(name: str, gain: float = 1.0, margin: float = 0.1,
                   learning_rate: ScalarOrSchedule = 1e-3,
                   reorthogonalize: bool = False) -> optax.GradientTransformation:
  """Returns the constraint transformation called `name`.

  "none" and "expm" give optax.identity() ("expm" is a parametrization, see
  `expm_parametrization`); "projection" and "margin" go after the optimizer; "cayley" replaces
  it for the constrained parameter (see REPLACES_OPTIMIZER and the module docstring).
  `margin` is used by "margin", `learning_rate` and `reorthogonalize` by "cayley".

  Raises:
    ValueError: for an unknown name or bad gain / margin.
  """
  if name not in NAMES:
    raise ValueError(f"unknown constraint {name!r}; choose one of {', '.join(NAMES)}")
  _check_gain(gain)
  if name in ("none", "expm"):
    return optax.identity()
  if name == "projection":
    return stiefel_projection(gain)
  if name == "margin":
    return spectral_margin(gain, margin)
  return cayley_retraction(gain, learning_rate, reorthogonalize)
