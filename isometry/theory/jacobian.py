"""Empirical input-output Jacobian spectra of random deep networks and RNNs (float64).

Feed-forward: h_l = W_l x_{l-1} + b_l, x_l = phi(h_l), l = 1..L, width N, with W_l = sigma_w times a
unit-gain draw of `weights` (Haar orthogonal, or Gaussian with variance 1 / N, from
`isometry.theory.initializers`) and b_l ~ N(0, sigma_b**2). The Jacobian of x_L with respect to x_0 is

  J = D_L W_L ... D_1 W_1,   D_l = diag(phi'(h_l)),

and we return the eigenvalues of J J^T (the squared singular values of J) that the free-probability
predictions of Pennington, Schoenholz & Ganguli (2017, 2018) describe.

Inputs start at the mean-field fixed point: x_0 = phi(h_0) with h_0 ~ N(0, q*), so that h_1 already
has variance q_map(q*) = q* (see `meanfield.sample_inputs_at_q`).

Random streams. Network i of a call uses key_i = jax.random.split(key, num_networks)[i]; from it,
(k_input, k_layers) = split(key_i), and layer l draws (W_l, b_l) from split(fold_in(k_layers, l)).
`sample_network(key_i, ...)` returns exactly that network, so tests (and users) can rebuild it.
In a gain sweep every gain uses the same keys (common random numbers): the curves then differ by
the gain only, not by the draw.

Concrete calls return numpy float64 (as in `meanfield`), traced calls jax arrays.

Cost: each layer is one N x N matrix product (plus a QR for orthogonal weights); J is built by
`lax.scan` over layers, so memory is O(N^2) per network whatever the depth.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isometry.theory import initializers
from isometry.theory import activations
from isometry.theory import meanfield
from isometry.theory import x64

_WEIGHTS = tuple(n for n in initializers.NAMES if n != "delta_orthogonal")


class Network(NamedTuple):
  """One feed-forward network draw: input (N,), weights (L, N, N), biases (L, N); h = W x + b."""
  x0: jax.Array
  weights: jax.Array
  biases: jax.Array


class RNN(NamedTuple):
  """One vanilla-RNN draw: h0 (N,), recurrent W (N, N), bias b (N,), input drive (T, N).

  The step is h_t = phi(W h_{t-1} + drive_t + b).
  """
  h0: jax.Array
  weights: jax.Array
  bias: jax.Array
  drive: jax.Array


# ----------------------------------------------------------------------------- checks

def _check_positive_int(name, value):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_weights(weights):
  if weights not in _WEIGHTS:
    raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(_WEIGHTS)}")


def _sweep(*values):
  """Broadcasts scalars and 1-d arrays of one length G; returns (arrays, is_sweep)."""
  shapes = {np.shape(v) for v in values if v is not None}
  if any(len(s) > 1 for s in shapes):
    raise ValueError(f"gains must be scalars or 1-d arrays, got shapes {sorted(shapes)}")
  lengths = {s[0] for s in shapes if len(s) == 1}
  if len(lengths) > 1:
    raise ValueError(f"swept gains must have equal lengths, got {sorted(lengths)}")
  if not lengths:
    return values, False
  g = lengths.pop()
  return tuple(None if v is None else jnp.broadcast_to(jnp.asarray(v, jnp.float64), (g,))
               for v in values), True


def _check_nonnegative(name, value):
  concrete = x64.concrete(value)
  if concrete is not None and not np.all(concrete >= 0):
    raise ValueError(f"{name} must be >= 0, got {value}")


def _resolve_input_variance(act, sigma_w, sigma_b, q0):
  """Variance of h_0: q0 if given, else `meanfield.input_variance` (q*, or 1 for relu/linear
  without bias); ValueError where neither is finite."""
  q = (jnp.asarray(q0, jnp.float64) if q0 is not None
       else meanfield.input_variance_of(act, sigma_w, sigma_b))
  concrete = x64.concrete(q)
  if concrete is not None and not np.all(np.isfinite(concrete)):
    raise ValueError(
        f"no finite fixed point q* for {act.name} at sigma_w={sigma_w}, sigma_b={sigma_b}: "
        "pass q0, the input pre-activation variance, explicitly")
  return q


# ---------------------------------------------------------------------- feed-forward

def _layer_parameters(k_layers, layer, weights, sigma_w, sigma_b, width):
  k_w, k_b = jax.random.split(jax.random.fold_in(k_layers, layer))
  # Unit gain, then sigma_w: the initializer checks its gain in Python, which a traced
  # sigma_w (a vmapped sweep) cannot pass.
  w = sigma_w * initializers.get_initializer(weights, 1.0)(k_w, (width, width), jnp.float64)
  b = sigma_b * jax.random.normal(k_b, (width,), jnp.float64)
  return w, b


def _input(k_input, act, q0, width):
  return act.fn(jnp.sqrt(q0) * jax.random.normal(k_input, (width,), jnp.float64))


def _network(key, act, weights, sigma_w, sigma_b, q0, depth, width):
  k_input, k_layers = jax.random.split(key)
  params = jax.vmap(lambda l: _layer_parameters(k_layers, l, weights, sigma_w, sigma_b, width))(
      jnp.arange(depth))
  return Network(_input(k_input, act, q0, width), *params)


def _jacobians_at_depths(key, act, weights, sigma_w, sigma_b, q0, depths, width):
  """J at each depth in `depths` (ascending) for ONE network.

  The network of depth d is the first d layers of the deepest one (layer l draws from
  fold_in(k_layers, l) whatever the depth), so one product chain serves every depth: J is carried
  through a `lax.scan` over each stretch of layers and kept at the stretch's end.

  Returns:
    (len(depths), width, width) float64.
  """
  k_input, k_layers = jax.random.split(key)

  def layer(carry, l):
    x, jac = carry
    w, b = _layer_parameters(k_layers, l, weights, sigma_w, sigma_b, width)
    h = w @ x + b
    return (act.fn(h), act.derivative(h)[:, None] * (w @ jac)), None

  carry = (_input(k_input, act, q0, width), jnp.eye(width, dtype=jnp.float64))
  jacobians, done = [], 0
  for depth in depths:
    carry, _ = lax.scan(layer, carry, jnp.arange(done, depth))
    jacobians.append(carry[1])
    done = depth
  return jnp.stack(jacobians)


def _squared_singular_values(jac):
  """Ascending squared singular values of a (..., N, N) stack, in ONE batched SVD call.

  svd, not eigvalsh(J J^T): forming J J^T squares the condition number, and eigenvalues below
  ~1e-16 lambda_max would be lost to rounding. One call for the whole stack, after every product
  is done: two batched LAPACK calls that XLA:CPU could run side by side can deadlock jaxlib
  0.9.1-0.11 (`isometry.linalg`), while one call alone cannot (its chunks run on the other
  threads of the pool), and it keeps LAPACK's batch parallelism.
  """
  s = jnp.linalg.svd(jac, compute_uv=False)
  return jnp.flip(jnp.square(s), axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 2, 6, 7, 8, 9))
def _ffn_spectra(key, act, weights, sigma_w, sigma_b, q0, depths, width, num_networks, sweep):
  """(G?, len(depths), num_networks, width) squared singular values."""
  def one_gain(sw, sb, q):
    def one_network(k):
      return _jacobians_at_depths(k, act, weights, sw, sb, q, depths, width)
    return jnp.swapaxes(jax.vmap(one_network)(jax.random.split(key, num_networks)), 0, 1)
  if sweep:
    jacobians = jax.vmap(one_gain)(sigma_w, sigma_b, q0)
  else:
    jacobians = one_gain(sigma_w, sigma_b, q0)
  return _squared_singular_values(jacobians)


def sample_network(key, activation, weights: str, sigma_w, sigma_b, depth: int, width: int,
                   q0=None) -> Network:
  """The network that `jacobian_squared_singular_values` builds from `key` (one network key).

  Args: as `jacobian_squared_singular_values`, scalars only.

  Returns:
    Network(x0 (width,), weights (depth, width, width), biases (depth, width)), float64.
  """
  act = activations.resolve(activation)
  _check_weights(weights)
  _check_positive_int("depth", depth)
  _check_positive_int("width", width)
  x64.check_scales(sigma_w, sigma_b)
  with jax.enable_x64(True):
    sw, sb = jnp.asarray(sigma_w, jnp.float64), jnp.asarray(sigma_b, jnp.float64)
    q = _resolve_input_variance(act, sw, sb, q0)
    return x64.finish(_network(key, act, weights, sw, sb, q, depth, width))


def jacobian_squared_singular_values(key, activation, weights: str, sigma_w, sigma_b,
                                     depth, width: int, num_networks: int, q0=None):
  """Eigenvalues of J J^T for random deep networks started at their fixed point.

  Args:
    key: PRNG key; network i uses jax.random.split(key, num_networks)[i] (see the module doc).
    activation: name or Activation.
    weights: "orthogonal" (sigma_w * Haar) or "gaussian" (variance sigma_w**2 / N); the other
      square initializers of `isometry.theory.initializers` work too.
    sigma_w, sigma_b: scalars, or 1-d arrays of one length G (a sweep; scalars broadcast).
    depth: L, or a sequence of depths: then network i of depth d is the first d layers of
      network i of the largest depth, and one chain of products serves all of them (the cost is
      that of the deepest alone). Spectra at different depths are therefore correlated.
    width, num_networks: N and the number of independent networks.
    q0: variance of the input pre-activations h_0 (scalar or (G,)). Default: q*(sigma_w, sigma_b);
      for relu and linear without bias the Jacobian does not depend on it and 1 is used. Pass it
      where q* is infinite (relu with sigma_w**2 > 2 and sigma_b > 0, say).

  Returns:
    float64 array (num_networks, width) for an integer depth, (len(depth), num_networks, width)
    for a sequence, with a leading (G,) axis for a sweep: the squared singular values of
    J = D_L W_L ... D_1 W_1, ascending.

  Raises:
    ValueError: bad names, sizes or scales, or no finite q* and no q0.

  References:
    Pennington, Schoenholz & Ganguli, Resurrecting the sigmoid in deep learning through
    dynamical isometry, 2017 (Fig. 2: these spectra against free probability).
  """
  act = activations.resolve(activation)
  _check_weights(weights)
  several = not isinstance(depth, (int, np.integer))
  depths = tuple(depth) if several else (depth,)
  if not depths:
    raise ValueError("depth must be a positive integer or a non-empty sequence of them")
  for d in depths:
    _check_positive_int("depth", d)
  for name, value in (("width", width), ("num_networks", num_networks)):
    _check_positive_int(name, value)
  x64.check_scales(sigma_w, sigma_b)
  if q0 is not None:
    _check_nonnegative("q0", q0)
  unique = tuple(int(d) for d in sorted(set(depths)))
  with jax.enable_x64(True):
    (sw, sb, q0), sweep = _sweep(sigma_w, sigma_b, q0)
    sw, sb = jnp.asarray(sw, jnp.float64), jnp.asarray(sb, jnp.float64)
    q = _resolve_input_variance(act, sw, sb, q0)
    spectra = x64.finish(
        _ffn_spectra(key, act, weights, sw, sb, q, unique, width, num_networks, sweep))
  spectra = spectra[..., [unique.index(d) for d in depths], :, :]
  return spectra if several else spectra[..., 0, :, :]


# ------------------------------------------------------------------------------- RNN

def _rnn_keys(key):
  return jax.random.split(key, 4)   # h0, W, b, drive


def _rnn_drive(k_drive, t, input_std, width):
  return input_std * jax.random.normal(jax.random.fold_in(k_drive, t), (width,), jnp.float64)


def _rnn_input_variance(act, gain, input_std, bias_std, q0):
  # Mean field of the RNN (Chen, Pennington & Schoenholz 2018): at large N, W h_{t-1} is Gaussian
  # with variance gain^2 E[phi(h)^2] even though W is shared across steps, and drive + bias add
  # input_std^2 + bias_std^2.
  return _resolve_input_variance(act, gain, jnp.sqrt(jnp.square(input_std) + jnp.square(bias_std)),
                                 q0)


def _rnn(key, act, weights, gain, input_std, bias_std, q0, steps, width):
  k_h0, k_w, k_b, k_drive = _rnn_keys(key)
  w = gain * initializers.get_initializer(weights, 1.0)(k_w, (width, width), jnp.float64)
  b = bias_std * jax.random.normal(k_b, (width,), jnp.float64)
  drive = jax.vmap(lambda t: _rnn_drive(k_drive, t, input_std, width))(jnp.arange(steps))
  return RNN(_input(k_h0, act, q0, width), w, b, drive)


def _rnn_jacobian(key, act, weights, gain, input_std, bias_std, q0, steps, width):
  k_h0, k_w, k_b, k_drive = _rnn_keys(key)
  w = gain * initializers.get_initializer(weights, 1.0)(k_w, (width, width), jnp.float64)
  b = bias_std * jax.random.normal(k_b, (width,), jnp.float64)

  def step(carry, t):
    h, jac = carry
    a = w @ h + _rnn_drive(k_drive, t, input_std, width) + b
    return (act.fn(a), act.derivative(a)[:, None] * (w @ jac)), None

  start = (_input(k_h0, act, q0, width), jnp.eye(width, dtype=jnp.float64))
  (_, jac), _ = lax.scan(step, start, jnp.arange(steps))
  return jac


@functools.partial(jax.jit, static_argnums=(1, 2, 7, 8, 9, 10))
def _rnn_spectra(key, act, weights, gain, input_std, bias_std, q0, steps, width, num, sweep):
  def one_gain(g, s_in, s_b, q):
    def one_rnn(k):
      return _squared_singular_values(
          _rnn_jacobian(k, act, weights, g, s_in, s_b, q, steps, width))
    return jax.vmap(one_rnn)(jax.random.split(key, num))
  if sweep:
    return jax.vmap(one_gain)(gain, input_std, bias_std, q0)
  return one_gain(gain, input_std, bias_std, q0)


def _check_rnn_args(act, weights, gain, input_std, bias_std, sizes):
  _check_weights(weights)
  for name, value in sizes:
    _check_positive_int(name, value)
  x64.check_scales(gain, bias_std)
  _check_nonnegative("input_std", input_std)


def sample_rnn(key, activation, weights: str, gain, input_std, bias_std, steps: int, width: int,
               q0=None) -> RNN:
  """The RNN that `rnn_jacobian_squared_singular_values` builds from `key` (one RNN key).

  Returns:
    RNN(h0 (width,), weights (width, width), bias (width,), drive (steps, width)), float64.
  """
  act = activations.resolve(activation)
  _check_rnn_args(act, weights, gain, input_std, bias_std, (("steps", steps), ("width", width)))
  with jax.enable_x64(True):
    g, s_in, s_b = (jnp.asarray(v, jnp.float64) for v in (gain, input_std, bias_std))
    q = _rnn_input_variance(act, g, s_in, s_b, q0)
    return x64.finish(_rnn(key, act, weights, g, s_in, s_b, q, steps, width))


def rnn_jacobian_squared_singular_values(key, activation, weights: str, gain, input_std,
                                         bias_std, steps: int, width: int, num: int, q0=None):
  """Eigenvalues of J J^T for J = dh_T / dh_0 of random vanilla RNNs.

  The RNN is h_t = phi(W h_{t-1} + input_std * xi_t + b), t = 1..T, with W = gain times a unit-gain
  draw of `weights` (the same W every step), b ~ N(0, bias_std**2) drawn once, and xi_t ~ N(0, I)
  fresh each step: the input term U x_t of a real RNN, for i.i.d. inputs, with U scaled so that
  each unit receives variance input_std**2. Then J = D_T W ... D_1 W, D_t = diag(phi'(a_t)).
  h_0 = phi(a_0), a_0 ~ N(0, q0), q0 defaulting to the mean-field fixed point
  q* = gain**2 E[phi(sqrt(q*) z)**2] + input_std**2 + bias_std**2.

  Args:
    key: PRNG key; RNN i uses jax.random.split(key, num)[i].
    activation: name or Activation.
    weights: "orthogonal", "gaussian" or another square initializer ("identity" gives the IRNN).
    gain, input_std, bias_std: scalars or 1-d arrays of one length G (a sweep).
    steps, width, num: T, N and the number of independent RNNs.
    q0: variance of a_0, as in `jacobian_squared_singular_values`.

  Returns:
    float64 (num, width), or (G, num, width) for a sweep; ascending.

  References:
    Chen, Pennington & Schoenholz, Dynamical isometry and a mean field theory of RNNs, 2018.
  """
  act = activations.resolve(activation)
  _check_rnn_args(act, weights, gain, input_std, bias_std,
                  (("steps", steps), ("width", width), ("num", num)))
  if q0 is not None:
    _check_nonnegative("q0", q0)
  with jax.enable_x64(True):
    (g, s_in, s_b, q0), sweep = _sweep(gain, input_std, bias_std, q0)
    g, s_in, s_b = (jnp.asarray(v, jnp.float64) for v in (g, s_in, s_b))
    q = _rnn_input_variance(act, g, s_in, s_b, q0)
    return x64.finish(
        _rnn_spectra(key, act, weights, g, s_in, s_b, q, steps, width, num, sweep))
