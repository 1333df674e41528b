"""Models as pure functions over pytrees: a depth-masked deep MLP, a vanilla tanh RNN, an LSTM.

Every model is a pair `init_*(key, ...) -> params` and `*_apply(params, x, ...) -> logits`, with
params a dict of arrays, so a sweep can `vmap` the pair over per-member scalars (gain, init choice,
depth) and `jit` the whole program once.

  - MLP (Poole et al. 2016; Pennington et al. 2017): h_0 = phi(x W_0 + b_0), then a `lax.scan`
    over a stack of `max_depth - 1` square layers h_l = phi(h_{l-1} W_l + b_l) where layer l
    applies only if l < depth and is the identity otherwise, so networks of different depths run
    in one compiled program. `depth` counts the nonlinear hidden layers.
  - RNN: h_t = tanh(x_t U + h_{t-1} W + b), h_{-1} = 0, logits = h_{T-1} V + c (Keras SimpleRNN
    followed by Dense, as in Hlav 2019's OrthogonalRegRNNSV notebook).
  - LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000): gates
    [i, f, g, o] = x_t U + h_{t-1} W + b, c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),
    h_t = sigma(o) tanh(c_t); the forget bias starts at 1 (Jozefowicz et al. 2015).

Kernels are (fan_in, fan_out) and models compute x @ W, as in `isometry.theory.initializers`.
"""
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from isometry.theory import activations
from isometry.theory import initializers

Initializer = initializers.Initializer
Params = dict


def mixed_initializer(names: Sequence[str], index: jax.Array, gain: jax.Array) -> Initializer:
  """An initializer that picks `names[index]` and scales it by `gain`, both possibly traced.

  Lets members of one vmapped sweep use different initializers (orthogonal vs. Glorot): every
  candidate is drawn from the same key and the one at `index` is selected, so member i gets
  exactly what `get_initializer(names[index], gain)` would give with that key. All initializers in
  `isometry.theory.initializers` are linear in their gain, which is what lets `gain` be a tracer here.

  Args:
    names: static tuple of initializer names.
    index: int scalar in [0, len(names)).
    gain: positive float scalar.
  """
  factories = [initializers.get_initializer(name, 1.0) for name in names]

  def init(key, shape, dtype=jnp.float32):
    if len(factories) == 1:
      w = factories[0](key, shape, dtype)
    else:
      w = jnp.stack([f(key, shape, dtype) for f in factories])[index]
    return jnp.asarray(gain, dtype) * w
  return init


def _dense_init(key, fan_in, fan_out, kernel_init, dtype):
  return {"w": kernel_init(key, (fan_in, fan_out), dtype), "b": jnp.zeros((fan_out,), dtype)}


def _readout(params, h):
  return h @ params["readout"]["w"] + params["readout"]["b"][None, :]


def _readout_init(key, hidden, num_classes, dtype):
  return _dense_init(key, hidden, num_classes,
                     initializers.get_initializer("glorot_uniform"), dtype)


# ----------------------------------------------------------------------------------------------
# Deep MLP with a depth mask.


def init_mlp(key: jax.Array, input_dim: int, num_classes: int, max_depth: int, width: int,
             kernel_init: Initializer, sigma_b: float | jax.Array = 0.0,
             dtype=jnp.float32) -> Params:
  """Parameters of an MLP with up to `max_depth` hidden layers of `width` units.

  Args:
    key: PRNG key.
    input_dim: D, size of a flattened input.
    num_classes: C.
    max_depth: L >= 1, the deepest network the params can express.
    width: N.
    kernel_init: initializer of the hidden kernels (e.g. orthogonal with gain sigma_w).
    sigma_b: biases are N(0, sigma_b^2) (Poole et al. 2016).

  Returns:
    {"input": {"w": (D, N), "b": (N,)}, "hidden": {"w": (L-1, N, N), "b": (L-1, N)},
     "readout": {"w": (N, C), "b": (C,)}}.
  """
  if max_depth < 1:
    raise ValueError(f"max_depth must be >= 1, got {max_depth}")
  k_in, k_hidden, k_bias, k_out = jax.random.split(key, 4)
  k_in_b, k_hidden_b = jax.random.split(k_bias)
  sigma_b = jnp.asarray(sigma_b, dtype)
  stack = max_depth - 1
  hidden_keys = jax.random.split(k_hidden, stack)
  hidden_w = (jax.vmap(lambda k: kernel_init(k, (width, width), dtype))(hidden_keys)
              if stack else jnp.zeros((0, width, width), dtype))
  return {
      "input": {"w": kernel_init(k_in, (input_dim, width), dtype),
                "b": sigma_b * jax.random.normal(k_in_b, (width,), dtype)},
      "hidden": {"w": hidden_w,
                 "b": sigma_b * jax.random.normal(k_hidden_b, (stack, width), dtype)},
      "readout": _readout_init(k_out, width, num_classes, dtype),
  }


def mlp_apply(params: Params, x: jax.Array, depth: int | jax.Array, activation: str = "tanh",
              perturbation: Optional[jax.Array] = None) -> jax.Array:
  """Logits of the depth-`depth` network; layers l >= depth of the stack are the identity.

  Args:
    params: from `init_mlp`.
    x: (B, D) inputs.
    depth: int scalar in [1, max_depth] (may be traced).
    activation: name for `isometry.theory.activations.get_activation`.
    perturbation: optional (L, B, N) added to each hidden layer's output h_l; pass zeros and take
      the gradient w.r.t. it to read dL/dh_l.

  Returns:
    (B, C) logits.
  """
  phi = activations.get_activation(activation).fn
  h = phi(x @ params["input"]["w"] + params["input"]["b"][None, :])
  stack = params["hidden"]["w"].shape[0]
  if perturbation is None:
    perturbation = jnp.zeros((stack + 1,) + h.shape, h.dtype)
  return _readout(params, mlp_hidden_stack(params, h + perturbation[0], depth, activation,
                                           perturbation[1:]))


def mlp_hidden_stack(params: Params, h: jax.Array, depth: int | jax.Array,
                     activation: str = "tanh",
                     perturbation: Optional[jax.Array] = None) -> jax.Array:
  """The square hidden layers of `init_mlp`'s network: h_1 (the first hidden layer's output)
  to h_depth; layers l >= depth are the identity.

  Args:
    params: from `init_mlp`.
    h: (..., N) first hidden layer's output.
    depth: int scalar in [1, max_depth] (may be traced).
    activation: the nonlinearity's name.
    perturbation: optional (L - 1, ..., N) added to each layer's output (see `mlp_apply`).

  Returns:
    (..., N) the last active layer's output. Its Jacobian with respect to h is the network's
    input-output Jacobian D_L W_L ... D_2 W_2 that the theory describes.
  """
  phi = activations.get_activation(activation).fn
  stack = params["hidden"]["w"].shape[0]
  if perturbation is None:
    perturbation = jnp.zeros((stack,) + h.shape, h.dtype)

  def layer(h, inputs):
    w, b, eps, l = inputs
    new = phi(h @ w + jnp.broadcast_to(b, h.shape)) + eps
    return jnp.where(l < depth, new, h), None

  layers = jnp.arange(1, stack + 1)
  h, _ = jax.lax.scan(layer, h, (params["hidden"]["w"], params["hidden"]["b"], perturbation,
                                 layers))
  return h


def init_embedding(key: jax.Array, vocab_size: int, embed_dim: int,
                   dtype=jnp.float32) -> jax.Array:
  """(V, E) token embedding table, N(0, 1/E) entries: each vector has about unit norm.

  Put it in a recurrent model's params as params["embedding"]; the model then reads (B, T)
  token ids (see `_input_drive`). Row 0 (padding) is learned like any other.
  """
  return jax.nn.initializers.normal(stddev=embed_dim**-0.5)(key, (vocab_size, embed_dim), dtype)


# ----------------------------------------------------------------------------------------------
# Vanilla RNN.


def init_rnn(key: jax.Array, input_dim: int, hidden: int, num_classes: int,
             recurrent_init: Initializer, dtype=jnp.float32) -> Params:
  """Parameters of a Keras-style SimpleRNN + Dense classifier.

  The input kernel and the read-out are Glorot-uniform and the biases zero (Keras defaults);
  only the recurrent kernel's initializer is chosen.

  Returns:
    {"input": (D, H), "recurrent": (H, H), "bias": (H,), "readout": {"w": (H, C), "b": (C,)}}.
  """
  k_in, k_rec, k_out = jax.random.split(key, 3)
  glorot = initializers.get_initializer("glorot_uniform")
  return {
      "input": glorot(k_in, (input_dim, hidden), dtype),
      "recurrent": recurrent_init(k_rec, (hidden, hidden), dtype),
      "bias": jnp.zeros((hidden,), dtype),
      "readout": _readout_init(k_out, hidden, num_classes, dtype),
  }


def _tanh_scan(w, drive, h0, unroll, keep_states):
  def step(h, z):
    h = jnp.tanh(z + h @ w)
    return h, (h if keep_states else None)
  return jax.lax.scan(step, h0, drive, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tanh_recurrence(w: jax.Array, drive: jax.Array, h0: jax.Array, unroll: int = 1) -> jax.Array:
  """Final state h_{T-1} of h_t = tanh(z_t + h_{t-1} W), with a backward pass that batches dW.

  Reverse-mode autodiff of a `lax.scan` accumulates dW += h_{t-1}^T dz_t inside the backward
  loop: two small (B, H) x (H, H) products per step on the sequential path. Here the backward
  loop carries only dh_{t-1} = dz_t W^T, with dz_t = dh_t * (1 - h_t**2), and dW is one
  (H, T*B) x (T*B, H) product after it, which runs at the large-matmul rate: the same gradient
  (backpropagation through time, Werbos 1990) with one sequential matmul per step each way.
  Without differentiation (evaluation) the states are not stored.

  Args:
    w: (H, H) recurrent kernel.
    drive: (T, B, H) input drive z_t = x_t U + b.
    h0: (B, H) initial state.
    unroll: `lax.scan` unroll factor of both loops.

  Returns:
    (B, H) final state.
  """
  return _tanh_scan(w, drive, h0, unroll, keep_states=False)[0]


def _tanh_recurrence_fwd(w, drive, h0, unroll):
  h_last, hs = _tanh_scan(w, drive, h0, unroll, keep_states=True)
  return h_last, (w, h0, hs)


def _tanh_recurrence_bwd(unroll, residuals, d_last):
  w, h0, hs = residuals
  w_t = w.T

  def step(dh, h):
    dz = dh * (1.0 - h * h)
    return dz @ w_t, dz

  dh0, dz = jax.lax.scan(step, d_last, hs, reverse=True, unroll=unroll)
  previous = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  hidden = w.shape[0]
  dw = previous.reshape(-1, hidden).T @ dz.reshape(-1, hidden)
  return dw, dz, dh0


tanh_recurrence.defvjp(_tanh_recurrence_fwd, _tanh_recurrence_bwd)


def _input_drive(params: Params, x: jax.Array) -> jax.Array:
  """(T, B, K) drive x_t U + b of every step: one (T*B, D) x (D, K) matmul outside the loop.

  x is (B, T, D) inputs, or (B, T) token ids when params hold an "embedding" (V, D) table.

  x is made time-major before the product, not after: XLA's CPU einsum "btd,dk->tbk" is about
  3x slower than this plain 2-d matmul, forward and backward, with D = 28.
  """
  if "embedding" in params:
    x = params["embedding"][x]  # (B, T) token ids -> (B, T, E) embeddings.
  batch, steps, dim = x.shape
  x = jnp.transpose(x, (1, 0, 2)).reshape(steps * batch, dim)
  drive = (x @ params["input"]).reshape(steps, batch, -1)
  return drive + params["bias"][None, None, :]


def rnn_hidden_states(params: Params, x: jax.Array, unroll: int = 1,
                      perturbation: Optional[jax.Array] = None) -> jax.Array:
  """All hidden states h_t = tanh(x_t U + h_{t-1} W + b) (+ perturbation_t), h_{-1} = 0.

  Args:
    params: from `init_rnn`.
    x: (B, T, D) input sequences.
    unroll: `lax.scan` unroll factor.
    perturbation: optional (T, B, H) added to h_t after the nonlinearity (so it also feeds
      h_{t+1}); zeros leave the forward pass unchanged and the gradient w.r.t. it is dL/dh_t.

  Returns:
    (T, B, H) hidden states.
  """
  drive = _input_drive(params, x)
  w = params["recurrent"]
  if perturbation is None:
    perturbation = jnp.zeros_like(drive)

  def step(h, inputs):
    z, eps = inputs
    h = jnp.tanh(z + h @ w) + eps
    return h, h

  h0 = jnp.zeros((x.shape[0], w.shape[0]), drive.dtype)
  return jax.lax.scan(step, h0, (drive, perturbation), unroll=unroll)[1]


def rnn_final_state(params: Params, x: jax.Array, h0: jax.Array, unroll: int = 1) -> jax.Array:
  """h_T of one sequence from the initial state h0, by a plain `lax.scan`: a function of h0
  whose Jacobian dh_T/dh_0 = D_T W^T ... D_1 W^T is the recurrent Jacobian the theory describes
  (forward- and reverse-mode differentiable, unlike `tanh_recurrence`).

  Args:
    params: from `init_rnn`.
    x: (T, D) one input sequence (or (T,) token ids with an embedding).
    h0: (H,) initial state.
    unroll: `lax.scan` unroll factor.

  Returns:
    (H,) final state.
  """
  drive = _input_drive(params, x[None])[:, 0]
  return _tanh_scan(params["recurrent"], drive, h0, unroll, keep_states=False)[0]


def rnn_apply(params: Params, x: jax.Array, unroll: int = 1,
              perturbation: Optional[jax.Array] = None) -> jax.Array:
  """(B, C) logits of the last hidden state; arguments as in `rnn_hidden_states`.

  Without a perturbation the last state comes from `tanh_recurrence` (batched backward pass, no
  stored states when not differentiated).
  """
  if perturbation is not None:
    return _readout(params, rnn_hidden_states(params, x, unroll, perturbation)[-1])
  drive = _input_drive(params, x)
  w = params["recurrent"]
  h0 = jnp.zeros((x.shape[0], w.shape[0]), drive.dtype)
  return _readout(params, tanh_recurrence(w, drive, h0, unroll))


# ----------------------------------------------------------------------------------------------
# LSTM.

LSTM_GATES = ("input", "forget", "cell", "output")


def init_lstm(key: jax.Array, input_dim: int, hidden: int, num_classes: int,
              recurrent_init: Initializer, dtype=jnp.float32) -> Params:
  """Parameters of an LSTM + Dense classifier.

  Each gate's (H, H) recurrent block is drawn separately from `recurrent_init`, so with an
  orthogonal init every block (not only the (H, 4H) kernel as a whole) has singular values = gain.

  Returns:
    {"input": (D, 4H), "recurrent": (H, 4H) with gate blocks in the order of LSTM_GATES,
     "bias": (4H,) with the forget block = 1, "readout": {"w": (H, C), "b": (C,)}}.
  """
  k_in, k_rec, k_out = jax.random.split(key, 3)
  glorot = initializers.get_initializer("glorot_uniform")
  blocks = jax.vmap(lambda k: recurrent_init(k, (hidden, hidden), dtype))(
      jax.random.split(k_rec, 4))
  bias = jnp.zeros((4, hidden), dtype).at[1].set(1.0)
  return {
      "input": glorot(k_in, (input_dim, 4 * hidden), dtype),
      "recurrent": jnp.concatenate(list(blocks), axis=1),
      "bias": bias.reshape(4 * hidden),
      "readout": _readout_init(k_out, hidden, num_classes, dtype),
  }


def lstm_recurrent_blocks(recurrent: jax.Array) -> jax.Array:
  """(H, 4H) recurrent kernel -> (4, H, H) per-gate blocks (order LSTM_GATES)."""
  hidden = recurrent.shape[0]
  return recurrent.reshape(hidden, 4, hidden).transpose(1, 0, 2)


def lstm_hidden_states(params: Params, x: jax.Array, unroll: int = 1,
                       perturbation: Optional[jax.Array] = None) -> jax.Array:
  """(T, B, H) hidden states of the LSTM; `perturbation` (T, B, H) is added to h_t."""
  drive = _input_drive(params, x)
  w = params["recurrent"]
  hidden = w.shape[0]
  zeros = jnp.zeros((x.shape[0], hidden), drive.dtype)
  if perturbation is None:
    perturbation = jnp.zeros((x.shape[1], x.shape[0], hidden), drive.dtype)

  def step(carry, inputs):
    h, c = carry
    z, eps = inputs
    i, f, g, o = jnp.split(z + h @ w, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c) + eps
    return (h, c), h

  _, hs = jax.lax.scan(step, (zeros, zeros), (drive, perturbation), unroll=unroll)
  return hs


def lstm_apply(params: Params, x: jax.Array, unroll: int = 1,
               perturbation: Optional[jax.Array] = None) -> jax.Array:
  """(B, C) logits of the LSTM's last hidden state."""
  h = lstm_hidden_states(params, x, unroll, perturbation)[-1]
  return _readout(params, h)


# ----------------------------------------------------------------------------------------------
# Lookup used by the training code.

RecurrentApply = Callable[..., jax.Array]

RECURRENT_CELLS = {
    "rnn": (init_rnn, rnn_apply),
    "lstm": (init_lstm, lstm_apply),
}


def get_recurrent_cell(name: str):
  """(init_fn, apply_fn) of the recurrent model `name` (rnn or lstm)."""
  try:
    return RECURRENT_CELLS[name]
  except KeyError:
    raise ValueError(
        f"unknown cell {name!r}; choose one of {', '.join(sorted(RECURRENT_CELLS))}") from None
