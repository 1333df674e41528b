"""flax.linen faces of the library: a vanilla tanh cell, a mean-field MLP, a delta-orthogonal conv.

Thin modules over the library's pure functions (`isometry.engine.models`, `isometry.theory.initializers`,
`isometry.theory.meanfield`), so that a flax model gets the engine's initializations and the fast
recurrence, and `isometry.theory.diagnostics` reads its Jacobian spectrum through `apply`:

  - `RNNCell`: h_t = tanh(x_t U + b + h_{t-1} W), the step of `models.rnn_apply`, with W = gain x
    Haar orthogonal at init. A `flax.linen.RNNCellBase`, so `flax.linen.RNN(RNNCell(H))` scans it.
    `final_state` / `FastRNN` run a whole sequence through `models.tanh_recurrence` instead.
  - `MeanFieldMLP` and `critical_mlp`: h_l = x_{l-1} W_l + b_l, x_l = phi(h_l) with W_l sigma_w x
    (orthogonal or Gaussian) and b_l ~ N(0, sigma_b**2), on the critical line chi = 1 when built
    by `critical_mlp`; `MeanFieldMLP.theory()` is the record `diagnostics.summary` compares with.
  - `delta_orthogonal_conv`: a `flax.linen.Conv` initialized delta-orthogonal (Xiao et al. 2018).

Every initializer of `isometry.theory.initializers` has flax's `kernel_init` signature
f(key, shape, dtype), so `nn.Dense(features, kernel_init=get_initializer("orthogonal", g))`
works as it is; kernels are (fan_in, fan_out) and flax computes x @ kernel, as the models do.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from isometry.theory import activations
from isometry.theory import diagnostics
from isometry.theory import initializers
from isometry.theory import meanfield
from isometry.engine import models

Initializer = initializers.Initializer


# ----------------------------------------------------------------------------------- RNN

class RNNCell(nn.RNNCellBase):
  """Vanilla tanh cell h_t = tanh(x_t U + b + h_{t-1} W) with an orthogonal recurrent kernel.

  The same step as `models.rnn_apply` (and as `flax.linen.SimpleCell` with these initializers);
  its params are {"input": {"kernel": U (D, H), "bias": b (H,)}, "recurrent": {"kernel": W}},
  so a path selector such as "*/recurrent/kernel" finds the constrained matrix
  (`isometry.engine.selection`), and `engine_params` maps them to the engine's dict.

  Attributes:
    features: H.
    gain: W = gain x Haar orthogonal at init (when `recurrent_kernel_init` is None).
    kernel_init: of U; Glorot-uniform as the engine's `models.init_rnn` (and Keras).
    recurrent_kernel_init: of W; default `initializers.get_initializer("orthogonal", gain)`.
    bias_init: of b; zeros as the engine's.
    param_dtype: of the params and of the zero initial carry.
  """
  features: int
  gain: float = 1.0
  kernel_init: Initializer = initializers.get_initializer("glorot_uniform")
  recurrent_kernel_init: Optional[Initializer] = None
  bias_init: Initializer = nn.initializers.zeros_init()
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, inputs):
    """One step: carry (..., H), inputs (..., D) -> (new carry, output), both (..., H)."""
    recurrent_init = self.recurrent_kernel_init
    if recurrent_init is None:
      recurrent_init = initializers.get_initializer("orthogonal", self.gain)
    drive = nn.Dense(self.features, kernel_init=self.kernel_init, bias_init=self.bias_init,
                     param_dtype=self.param_dtype, name="input")(inputs)
    feedback = nn.Dense(self.features, use_bias=False, kernel_init=recurrent_init,
                        param_dtype=self.param_dtype, name="recurrent")(carry)
    h = jnp.tanh(drive + feedback)
    return h, h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zeros of shape batch_dims + (H,) (h_{-1} = 0, as in the engine)."""
    del rng
    return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


def engine_params(cell_params) -> dict:
  """The engine's {"input": U, "recurrent": W, "bias": b} from an `RNNCell`'s params.

  Add a "readout" {"w", "b"} to get params for `models.rnn_apply`.
  """
  return {"input": cell_params["input"]["kernel"],
          "recurrent": cell_params["recurrent"]["kernel"],
          "bias": cell_params["input"]["bias"]}


def final_state(cell_params, xs: jax.Array, h0: Optional[jax.Array] = None,
                unroll: int = 1) -> jax.Array:
  """h_{T-1} of `RNNCell` over whole sequences, by the engine's `models.tanh_recurrence`.

  Equals the last output of `flax.linen.RNN(RNNCell(H))` on the same params, but the input drive
  x_t U + b is one (T B, D) x (D, H) product outside the loop and the backward pass batches dW
  into one product after the loop (see `models.tanh_recurrence`). It applies when only the
  final state is needed (a classifier on h_{T-1}), every sequence has the full length T (no
  `seq_lengths` masking), time runs forward, and the step is exactly tanh(x U + b + h W); for
  all hidden states, masks, or a reversed scan, use `flax.linen.RNN`.

  Args:
    cell_params: the cell's params {"input": {"kernel", "bias"}, "recurrent": {"kernel"}}.
    xs: (B, T, D) inputs, batch-major (flax.linen.RNN's default layout).
    h0: (B, H) initial state; zeros if None.
    unroll: `lax.scan` unroll factor.

  Returns:
    (B, H) final state.
  """
  params = engine_params(cell_params)
  batch, steps, dim = xs.shape
  w = params["recurrent"]
  # Time-major before the product: the same (T B, D) x (D, H) layout as the engine's drive.
  x = jnp.transpose(xs, (1, 0, 2)).reshape(steps * batch, dim)
  drive = (x @ params["input"]).reshape(steps, batch, -1) + params["bias"][None, None, :]
  if h0 is None:
    h0 = jnp.zeros((batch, w.shape[0]), drive.dtype)
  return models.tanh_recurrence(w, drive, h0, unroll)


class FastRNN(nn.Module):
  """Final state of `RNNCell` over (B, T, D) sequences through `final_state`.

  Its params are those of `flax.linen.RNN(RNNCell(features, gain))` ({"cell": {...}}), so the
  two are interchangeable; use this one where `final_state` applies (see there). (The RNN owns
  its cell, and names it "cell", when the cell is built unbound: in `setup`, outside any module,
  or with `parent=None` inside a compact method; a cell built inside a compact method without
  it belongs to that method's module instead.)
  """
  features: int
  gain: float = 1.0
  unroll: int = 1

  @nn.compact
  def __call__(self, xs, h0=None):
    cell = RNNCell(self.features, self.gain, name="cell")
    if h0 is None:
      h0 = cell.initialize_carry(None, xs[:, 0].shape)
    if self.is_initializing():
      cell(h0, xs[:, 0])   # creates the cell's params with their initializers
    return final_state(cell.variables["params"], xs, h0, self.unroll)


# ----------------------------------------------------------------------------------- MLP

def _bias_init(sigma_b: float) -> Initializer:
  if sigma_b == 0:
    return nn.initializers.zeros_init()
  return nn.initializers.normal(stddev=sigma_b)


class MeanFieldMLP(nn.Module):
  """x_l = phi(x_{l-1} W_l + b_l), l = 1..depth, in the mean-field parametrization.

  W_l is sigma_w x (Haar orthogonal) or Gaussian with variance sigma_w**2 / fan_in
  (`initializers.get_initializer(weights, sigma_w)`), b_l ~ N(0, sigma_b**2): the networks of
  Poole et al. 2016 and Pennington, Schoenholz & Ganguli 2017. Without a readout the map
  x_0 -> x_depth is the one whose Jacobian `freeprob` describes (for inputs at q*, e.g.
  `meanfield.sample_inputs_at_q`, and width-by-width layers).

  Attributes:
    depth: L >= 1 nonlinear layers.
    width: N.
    sigma_w, sigma_b: weight and bias scales.
    activation: name for `activations.get_activation`.
    weights: "orthogonal" or "gaussian".
    num_outputs: if set, a Glorot-uniform Dense readout (no nonlinearity) after the last layer.
  """
  depth: int
  width: int
  sigma_w: float
  sigma_b: float
  activation: str = "tanh"
  weights: str = "orthogonal"
  num_outputs: Optional[int] = None

  @nn.compact
  def __call__(self, x):
    phi = activations.get_activation(self.activation).fn
    kernel_init = initializers.get_initializer(self.weights, self.sigma_w)
    for layer in range(self.depth):
      x = phi(nn.Dense(self.width, kernel_init=kernel_init, bias_init=_bias_init(self.sigma_b),
                       name=f"layer_{layer}")(x))
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs, kernel_init=initializers.get_initializer("glorot_uniform"),
                   name="readout")(x)
    return x

  def theory(self) -> diagnostics.Theory:
    """The record `diagnostics.summary(..., depth=self.depth, theory=...)` compares with."""
    return diagnostics.Theory(self.activation, float(self.sigma_w), float(self.sigma_b),
                              self.weights)


_CHI_TOL = 1e-6


def critical_mlp(activation: str = "tanh", depth: int = 1, width: int = 128,
                 q_star: Optional[float] = None, sigma_w: Optional[float] = None,
                 sigma_b: Optional[float] = None, weights: str = "orthogonal",
                 num_outputs: Optional[int] = None) -> MeanFieldMLP:
  """A `MeanFieldMLP` on the critical line chi = sigma_w**2 E[phi'(h)**2] = 1.

  Give q_star (the scales come from `meanfield.critical_point`: sigma_w**2 = 1 / mu_1(q*),
  sigma_b**2 = q* - sigma_w**2 E[phi(sqrt(q*) z)**2]), or sigma_w and sigma_b that are already
  critical (checked: |chi - 1| < 1e-6).

  Raises:
    ValueError: both or neither of q_star and (sigma_w, sigma_b); a q* with no critical point;
      scales off the critical line; an unknown weights name.
  """
  if weights not in ("orthogonal", "gaussian"):
    raise ValueError(f"weights must be 'orthogonal' or 'gaussian', got {weights!r}")
  if (q_star is None) == (sigma_w is None or sigma_b is None):
    raise ValueError("give either q_star or both sigma_w and sigma_b")
  if q_star is not None:
    sigma_w, sigma_b = (float(v) for v in meanfield.critical_point(activation, q_star))
  else:
    chi = float(meanfield.chi(activation, sigma_w, sigma_b))
    if not abs(chi - 1.0) < _CHI_TOL:
      raise ValueError(f"({sigma_w}, {sigma_b}) has chi = {chi:.8g} for {activation}, not 1: "
                       "use MeanFieldMLP for a network off the critical line")
  return MeanFieldMLP(depth=depth, width=width, sigma_w=float(sigma_w), sigma_b=float(sigma_b),
                      activation=activation, weights=weights, num_outputs=num_outputs)


# ---------------------------------------------------------------------------------- conv

def delta_orthogonal_conv(features: int, kernel_size: Sequence[int] = (3, 3), gain: float = 1.0,
                          padding="CIRCULAR", **conv_kwargs) -> nn.Conv:
  """A `flax.linen.Conv` with a delta-orthogonal kernel: zero but gain x orthogonal at the centre.

  With circular padding and stride 1 the convolution is then gain times an orthogonal map of the
  whole feature map (each pixel's channels are rotated by the same orthogonal matrix), so a deep
  stack of them is dynamically isometric at init (Xiao et al., Dynamical isometry and a mean
  field theory of CNNs, ICML 2018, Algorithm 2). Other paddings break the isometry at the border.
  Needs in_features <= features (jax's initializer); kernel_size odd, so the centre is a pixel.

  Args:
    features: output channels.
    kernel_size: spatial size.
    gain: the orthogonal matrix's scale.
    padding, **conv_kwargs: passed to `flax.linen.Conv`.
  """
  if any(k % 2 == 0 for k in kernel_size):
    raise ValueError(f"delta-orthogonal kernels need odd sizes, got {tuple(kernel_size)}")
  return nn.Conv(features, tuple(kernel_size), padding=padding,
                 kernel_init=initializers.get_initializer("delta_orthogonal", gain),
                 **conv_kwargs)

