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
  - `riemannian_adam`, `riemannian_sgd`: Riemannian optimizers (Cayley ADAM and Cayley SGD of Li,
    Li & Todorovic 2020, with the polar retraction); like `cayley_retraction` they consume the
    raw gradient and REPLACE the optimizer for their parameter, and their learning rate has
    optax.adam's / optax.sgd's meaning.
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

NAMES = ("none", "projection", "cayley", "expm", "margin", "riemannian_adam", "riemannian_sgd")
# Constraints that take the raw gradient and must replace the optimizer for their parameter.
REPLACES_OPTIMIZER = ("cayley", "riemannian_adam", "riemannian_sgd")
# Constraints that live in the model's parametrization rather than in the optimizer.
PARAMETRIZATIONS = ("expm",)


def _check_gain(gain) -> None:
  # A traced gain (vmap over gains) cannot be checked; a Python number can.
  if isinstance(gain, (int, float)) and not gain > 0:
    raise ValueError(f"gain must be > 0, got {gain}")


def _check_matrix(x: jax.Array) -> None:
  if x.ndim != 2:
    raise ValueError(
        f"orthogonality constraints act on matrices (n_in, n_out), got shape {x.shape}")


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


# ---------------------------------------------------------------------------------------------
# Riemannian optimizers on gain * Stiefel: they replace the optimizer for the constrained leaves.

def _check_tall(w: jax.Array) -> None:
  _check_matrix(w)
  if w.shape[0] < w.shape[1]:
    raise ValueError(f"Stiefel St(n, p) needs a tall matrix (n >= p), got shape {w.shape}")


def _sym(a: jax.Array) -> jax.Array:
  return 0.5 * (a + a.T)


def _tangent(x: jax.Array, z: jax.Array) -> jax.Array:
  """Orthogonal projection of z onto the tangent space of St(n, p) at x (Euclidean metric).

  T_x = {xi : x^T xi + xi^T x = 0}; P_x(z) = z - x sym(x^T z) (Absil, Mahony & Sepulchre 2008,
  eq. 3.35). It is also Li et al.'s W x with W = W_hat - W_hat^T, W_hat = z x^T - x x^T z x^T / 2.
  """
  return z - x @ _sym(x.T @ z)


def _retract(x: jax.Array, xi: jax.Array) -> jax.Array:
  """The polar retraction R_x(xi) = (x + xi)(I + xi^T xi)^(-1/2) on St(n, p), xi tangent.

  The orthogonal factor of x + xi: the projective retraction, second order (Absil & Malick,
  Projection-like retractions on matrix manifolds, SIAM J. Optim. 2012). Recomputed from scratch
  each step, it lands on the manifold to the polar decomposition's rounding (~2e-7 in float32)
  whatever the drift of x. (The closed-form Cayley transform was tried as well: measured on
  8 x 4, gain 1.5, 400 steps, its rounding accumulates to max |X^T X - I| = 4e-5, against
  3e-7 for this one.)
  """
  return _polar_unitary(x + xi)


def _unzip(treedef, tree_of_tuples, count: int):
  """`count` trees from a tree whose leaves (at `treedef`'s leaf positions) are count-tuples."""
  parts = treedef.flatten_up_to(tree_of_tuples)
  return tuple(treedef.unflatten([p[i] for p in parts]) for i in range(count))


class RiemannianAdamState(NamedTuple):
  """State of `riemannian_adam`.

  count: steps taken (int32 scalar).
  mu: first moment per leaf, (n, p), in the tangent space at the leaf's current point (it is
    transported there at the end of each step).
  nu: second moment per leaf, a scalar: the running mean of ||dL/dW||_F^2 / (n p).
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def riemannian_adam(learning_rate: ScalarOrSchedule = 1e-3, gain=1.0, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam on gain * St(n, p) (W^T W = gain^2 I, W of shape (n, p), n >= p): Cayley ADAM.

  With G = dL/dW and X = W / gain (the unit-Stiefel point), at step t = 1, 2, ...:
    m_t = b1 m_{t-1} + (1 - b1) P_X(G)              first moment, in the tangent space at X
    v_t = b2 v_{t-1} + (1 - b2) ||G||_F^2 / (n p)   second moment: ONE scalar per matrix
    m_hat = m_t / (1 - b1^t),  v_hat = v_t / (1 - b2^t)
    W_new = gain R_X(-(lr / gain) m_hat / sqrt(v_hat + eps))
    m_t <- P_{X_new}(m_t)                           vector transport by projection
  and the update is W_new - W. This is Cayley ADAM (Li, Li & Todorovic 2020, Algorithm 2);
  every choice is theirs except where said:
    - P_X(Z) = Z - X sym(X^T Z), the tangent projection of the Euclidean metric; their
      W_hat = M X^T - X X^T M X^T / 2, W = W_hat - W_hat^T gives exactly W X = P_X(M).
    - The second moment is a scalar per matrix, the running mean square of the EUCLIDEAN
      gradient: an elementwise 1 / sqrt(v) would rescale a tangent vector's coordinates and
      leave the tangent space, so one adaptive rate per manifold factor is kept (as also in
      Becigneul & Ganea 2019 for products of manifolds). The paper averages ||G||_F^2 on the
      unit manifold; the mean over the n p entries used here is the same algorithm with the
      paper's step size l = lr sqrt(n p) / gain (eps aside). The point of this scaling is that
      `learning_rate` means what it means in optax.adam: the RMS per-entry step of W is ~lr
      when gradients are steady, so the engine can pass a member's Adam rate unchanged.
    - eps is added inside the square root, as in the paper.
    - Transport. The paper projects the new momentum onto the tangent space at the current
      point before the step; projecting the old momentum at the start of the next step is the
      same map, since P_{X_new}(b1 m + (1 - b1) G) = b1 P_{X_new}(m) + (1 - b1) P_{X_new}(G).
      Here it is done at the end of the step, so the state is always tangent at the params.
    - Retraction. The paper estimates the Cayley curve by a two-term fixed-point iteration and
      caps the step at 2q / ||W|| so that the iteration converges; its result is orthogonal only
      to O(step^3). Here the retraction is the polar one (the orthogonal factor of X + xi,
      recomputed each step, so W^T W = gain^2 I to float32 rounding with no drift; any
      retraction keeps the algorithm's first-order behaviour), and the cap is not applied.

  Use it in place of the optimizer for the constrained matrices (it consumes raw gradients):
    tx = optax.multi_transform({"stiefel": riemannian_adam(1e-3, g), "free": optax.adam(1e-3)},
                               labels)   # e.g. isometry.engine.selection.labels(...)
  Every such leaf must start on gain * St(n, p) (e.g. the orthogonal initializer with `gain`).

  Args:
    learning_rate: a scalar (may be traced, e.g. vmapped per member) or an optax schedule of
      the step count.
    gain: g > 0 (may be traced).
    b1, b2: decay rates of the first and second moments.
    eps: added to v_hat inside the square root.

  Returns:
    A GradientTransformation with state `RiemannianAdamState`; update(grads, state, params)
    returns updates with params + updates on gain * St(n, p).

  References:
    J. Li, L. Fuxin, S. Todorovic, Efficient Riemannian optimization on the Stiefel manifold via
    the Cayley transform, ICLR 2020 (Algorithm 2, Cayley ADAM).
    G. Becigneul, O.-E. Ganea, Riemannian adaptive optimization methods, ICLR 2019.
    P.-A. Absil, R. Mahony, R. Sepulchre, Optimization Algorithms on Matrix Manifolds, 2008
    (tangent projection, eq. 3.35; vector transport by projection, Sec. 8.1.3).
  """
  _check_gain(gain)

  def init_fn(params):
    def zeros(w):
      _check_tall(w)
      return jnp.zeros_like(w)
    mu = jax.tree.map(zeros, params)
    nu = jax.tree.map(lambda w: jnp.zeros((), w.dtype), params)
    return RiemannianAdamState(count=jnp.zeros((), jnp.int32), mu=mu, nu=nu)

  def update_fn(grads, state, params=None):
    _require_params(params)
    count = optax.safe_increment(state.count)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def step(g, w, m, v):
      _check_tall(w)
      x = w / gain
      m = b1 * m + (1.0 - b1) * _tangent(x, g)
      v = b2 * v + (1.0 - b2) * jnp.mean(jnp.square(g))
      t = count.astype(w.dtype)
      m_hat = m / (1.0 - b1**t)
      v_hat = v / (1.0 - b2**t)
      x_new = _retract(x, -(lr / gain) * m_hat / jnp.sqrt(v_hat + eps))
      return ((gain * x_new).astype(w.dtype) - w, _tangent(x_new, m).astype(w.dtype),
              v.astype(w.dtype))

    treedef = jax.tree.structure(params)
    updates, mu, nu = _unzip(treedef, jax.tree.map(step, grads, params, state.mu, state.nu), 3)
    return updates, RiemannianAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


class RiemannianSGDState(NamedTuple):
  """State of `riemannian_sgd`: step count, and the momentum per leaf, tangent at the params."""
  count: jax.Array
  momentum: optax.Updates


def riemannian_sgd(learning_rate: ScalarOrSchedule = 1e-2, gain=1.0, momentum: float = 0.9,
                   nesterov: bool = False) -> optax.GradientTransformation:
  """Riemannian SGD with momentum on gain * St(n, p) (W of shape (n, p), n >= p).

  With G = dL/dW and X = W / gain:
    r = P_X(G)                            Riemannian gradient on gain * St (Euclidean metric)
    m = momentum T(m) + r                 T: projection onto the current tangent space
    d = r + momentum m  (nesterov)  or  m
    W_new = gain R_X(-(lr / gain) d),  m <- P_{X_new}(m)
  and the update is W_new - W. The tangent spaces of gain * St and St at X coincide and so do
  their projections, so r is the Riemannian gradient of L on gain * St for the metric induced
  by the Frobenius inner product, and a step moves W by lr d to first order: `learning_rate`
  means what it means in optax.sgd. This is Cayley SGD with momentum (Li, Li & Todorovic 2020,
  Algorithm 1) in optax.sgd's momentum convention (m = g + momentum m, no dampening), with their
  fixed-point Cayley step and its step cap replaced by the polar retraction as in
  `riemannian_adam`; the Nesterov variant is optax's (d = g + momentum m). momentum = 0 is
  Riemannian gradient descent with a retraction (Absil et al. 2008, Algorithm 1).

  Args:
    learning_rate: scalar (may be traced) or optax schedule.
    gain: g > 0 (may be traced).
    momentum: in [0, 1).
    nesterov: Nesterov momentum.

  Returns:
    A GradientTransformation with state `RiemannianSGDState`.

  References:
    J. Li, L. Fuxin, S. Todorovic, ICLR 2020 (Algorithm 1, Cayley SGD with momentum).
    P.-A. Absil, R. Mahony, R. Sepulchre, Optimization Algorithms on Matrix Manifolds, 2008.
  """
  _check_gain(gain)
  if isinstance(momentum, (int, float)) and not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")

  def init_fn(params):
    def zeros(w):
      _check_tall(w)
      return jnp.zeros_like(w)
    return RiemannianSGDState(count=jnp.zeros((), jnp.int32),
                              momentum=jax.tree.map(zeros, params))

  def update_fn(grads, state, params=None):
    _require_params(params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def step(g, w, m):
      _check_tall(w)
      x = w / gain
      r = _tangent(x, g)
      m = momentum * m + r
      d = r + momentum * m if nesterov else m
      x_new = _retract(x, -(lr / gain) * d)
      return (gain * x_new).astype(w.dtype) - w, _tangent(x_new, m).astype(w.dtype)

    treedef = jax.tree.structure(params)
    updates, moment = _unzip(treedef, jax.tree.map(step, grads, params, state.momentum), 2)
    return updates, RiemannianSGDState(count=optax.safe_increment(state.count), momentum=moment)

  return optax.GradientTransformation(init_fn, update_fn)


def get_constraint(name: str, gain: float = 1.0, margin: float = 0.1,
                   learning_rate: ScalarOrSchedule = 1e-3,
                   reorthogonalize: bool = False) -> optax.GradientTransformation:
  """Returns the constraint transformation called `name`.

  "none" and "expm" give optax.identity() ("expm" is a parametrization, see
  `expm_parametrization`); "projection" and "margin" go after the optimizer; "cayley",
  "riemannian_adam" and "riemannian_sgd" replace it for the constrained parameter (see
  REPLACES_OPTIMIZER and the module docstring). `margin` is used by "margin", `learning_rate`
  by "cayley" and the Riemannian optimizers (with their default moments), `reorthogonalize`
  by "cayley".

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
  if name == "riemannian_adam":
    return riemannian_adam(learning_rate, gain)
  if name == "riemannian_sgd":
    return riemannian_sgd(learning_rate, gain)
  return cayley_retraction(gain, learning_rate, reorthogonalize)
