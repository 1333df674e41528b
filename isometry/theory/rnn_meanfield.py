"""Mean field of a vanilla RNN driven by data: q*, chi and the critical recurrent gain.

RNN (Keras SimpleRNN, as in `isometry.engine.models`; the row-vector form x_t U + h_{t-1} W has the same
law as the column form below, since W and W^T are equally distributed):

  a_t = W h_{t-1} + U x_t + b,   h_t = phi(a_t),   t = 1..T,   h_0 = 0,

with W = g times a Haar-orthogonal (H, H) matrix (the same at every step), U an input kernel with
i.i.d. zero-mean entries and b ~ N(0, sigma_b**2) (zero in Keras). At large width H the
pre-activations a_t of one step are Gaussian across units with a variance q_t that follows

  q_t = g**2 E[phi(sqrt(q_{t-1}) z)**2] + q_in,t + sigma_b**2,    z ~ N(0, 1),   q_0 = 0,

where q_in,t = E||x_t U||**2 / H is the variance of the input drive (Chen, Pennington & Schoenholz
2018, "Dynamical isometry and a mean field theory of RNNs: gating enables signal propagation in
recurrent neural networks", whose vanilla-RNN recursion is this one with the input variance as an
extra bias term). It is the feed-forward q-map of `isometry.theory.meanfield` with an effective bias
variance q_in,t + sigma_b**2, so everything here reuses that module's integrals.

Three readings of the input (`rnn_mean_log_chi`, `rnn_critical_gain` take all three):
  - stationary: q_in constant (e.g. the time average of q_in,t); q_t relaxes to
    q* = meanfield.q_star(phi, g, sqrt(q_in + sigma_b**2)) and each step multiplies the mean
    squared singular value of the Jacobian by chi = g**2 E[phi'(h)**2], h ~ N(0, q*);
  - time-dependent: q_t follows the recursion from q_0 = 0 with the data-averaged q_in,t, and
    step t contributes chi_t = g**2 E[phi'(h)**2], h ~ N(0, q_t);
  - per-example: each input sequence x has its own drive q_in,t(x) = sigma_U**2 ||x_t||**2 and
    trajectory, and log chi_t is averaged over examples. For a given x the drive x_t U is
    Gaussian across units over the draw of U, so this is the mean field of one sequence; the
    data average of the other two readings is taken before the nonlinear maps instead of after.
    (On row-by-row Fashion-MNIST at H = 128 the per-example rate matched sampled RNNs within
    their standard error (RMS 0.006 per step over gains 0.8-1.6); the time-dependent and the
    stationary readings were off by 0.04 and 0.09: see
    results/rnn_critical_gain.)
The Jacobian J = dh_T / dh_0 = D_T W ... D_1 W (D_t = diag(phi'(a_t))) then has mean squared
singular value prod_t chi_t, and variance prod_t chi_t**2 * sum_t (mu_2,t / mu_1,t**2 - 1) for
orthogonal W (the S-transforms of free factors multiply; their first-order terms add), if the
D_t and the (tied) W are treated as free: the untied-weights approximation that
`isometry.studies.rnn_gain` tests against sampled RNNs.

The critical gain g* is where the mean squared singular value neither grows nor decays: chi = 1
(stationary), prod_t chi_t = 1 (time-dependent), or the mean over examples of their
log prod_t chi_t is 0 (per-example).

Every function computes in float64 (inside `jax.enable_x64`), takes `activation` as a name or an
`Activation`, and returns numpy float64 for concrete arguments; all but `rnn_critical_gain` (a
scipy root finder) and the data helpers also work under `jit`/`vmap` over their scalar arguments.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import optimize

from isometry.theory import activations
from isometry.theory import gaussian
from isometry.theory import meanfield
from isometry.theory import x64
from isometry.theory.meanfield import ActivationLike

_GAIN_BRACKET = (1e-2, 1e2)


# ----------------------------------------------------------------------------- checks

def _check_nonnegative(name, value):
  concrete = x64.concrete(value)
  if concrete is not None and not np.all(concrete >= 0):
    raise ValueError(f"{name} must be >= 0, got {value}")


def _check_gain(gain):
  concrete = x64.concrete(gain)
  if concrete is not None and not np.all(concrete > 0):
    raise ValueError(f"gain must be > 0, got {gain}")


def _check_sequence(q_in):
  shape = np.shape(q_in)
  if len(shape) != 1 or shape[0] < 1:
    raise ValueError(f"q_in must be a 1-d sequence of per-step variances, got shape {shape}")
  _check_nonnegative("q_in", q_in)


def _effective_bias(q_in, sigma_b):
  return jnp.sqrt(q_in + jnp.square(sigma_b))


def effective_sigma_b(q_in, sigma_b=0.0):
  """sqrt(q_in + sigma_b**2): the feed-forward bias scale with the same mean field.

  With it, `meanfield` and `freeprob` answer stationary RNN questions, e.g.
  `freeprob.jacobian_spectral_density(phi, g, effective_sigma_b(q_in), T, "orthogonal", grid)`.
  """
  _check_nonnegative("q_in", q_in)
  _check_nonnegative("sigma_b", sigma_b)
  with jax.enable_x64(True):
    return x64.finish(_effective_bias(x64.f64(q_in), x64.f64(sigma_b)))


# ------------------------------------------------------------------------- stationary

def rnn_q_map(activation: ActivationLike, q, gain, q_in, sigma_b=0.0):
  """One step of the RNN variance map: gain**2 E[phi(sqrt(q) z)**2] + q_in + sigma_b**2.

  References:
    Chen, Pennington & Schoenholz 2018 (vanilla RNN mean field).
  """
  _check_nonnegative("q_in", q_in)
  _check_nonnegative("sigma_b", sigma_b)
  with jax.enable_x64(True):
    sigma = _effective_bias(x64.f64(q_in), x64.f64(sigma_b))
  return meanfield.q_map(activation, q, gain, sigma)


def rnn_q_star(activation: ActivationLike, gain, q_in, sigma_b=0.0):
  """Fixed point q* = gain**2 E[phi(sqrt(q*) z)**2] + q_in + sigma_b**2 of a constant drive.

  Args:
    activation: name or Activation.
    gain: recurrent gain g > 0 (W = g * orthogonal, or Gaussian of variance g**2 / H).
    q_in: per-unit variance of the input drive U x_t (>= 0).
    sigma_b: bias scale.

  Returns:
    q*, float64. With q_in = 0 this is `meanfield.q_star(activation, gain, sigma_b)`.

  Raises:
    ValueError: bad arguments, or no finite q* (linear/relu at gain**2 c >= 1), as
      `meanfield.q_star`.

  References:
    Chen, Pennington & Schoenholz 2018; Poole et al. 2016, eq. (3) for the map itself.
  """
  _check_gain(gain)
  _check_nonnegative("q_in", q_in)
  _check_nonnegative("sigma_b", sigma_b)
  with jax.enable_x64(True):
    sigma = _effective_bias(x64.f64(q_in), x64.f64(sigma_b))
  return meanfield.q_star(activation, gain, sigma)


def rnn_chi(activation: ActivationLike, gain, q_in, sigma_b=0.0):
  """chi = gain**2 E[phi'(h)**2], h ~ N(0, q*): the per-step factor of the mean squared
  singular value of dh_T / dh_0 for a constant drive of variance q_in.

  References:
    Chen, Pennington & Schoenholz 2018; Schoenholz et al. 2016, eq. (5) (feed-forward chi).
  """
  _check_gain(gain)
  _check_nonnegative("q_in", q_in)
  _check_nonnegative("sigma_b", sigma_b)
  with jax.enable_x64(True):
    sigma = _effective_bias(x64.f64(q_in), x64.f64(sigma_b))
  return meanfield.chi(activation, gain, sigma)


# --------------------------------------------------------------------- time-dependent

def _trajectory(act, gain, q_in, sigma_b, q_init):
  """(q_t, chi_t, mu_2,t / mu_1,t**2) for t = 1..T, float64, traced."""
  integrals = gaussian.integrals(act)

  def step(q, q_in_t):
    q = meanfield.q_map_of(act, q, gain, _effective_bias(q_in_t, sigma_b))
    mu1 = integrals.mu(q, 1)
    return q, (q, jnp.square(gain) * mu1, integrals.mu(q, 2) / jnp.square(mu1))

  _, out = lax.scan(step, q_init, q_in)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _trajectory_jit(act, gain, q_in, sigma_b, q_init):
  return _trajectory(act, gain, q_in, sigma_b, q_init)


def _trajectory_checked(activation, gain, q_in, sigma_b, q_init):
  act = activations.resolve(activation)
  _check_gain(gain)
  _check_sequence(q_in)
  _check_nonnegative("sigma_b", sigma_b)
  _check_nonnegative("q_init", q_init)
  f64 = x64.f64
  with jax.enable_x64(True):
    return x64.finish(
        _trajectory_jit(act, f64(gain), f64(q_in), f64(sigma_b), f64(q_init)))


def rnn_q_trajectory(activation: ActivationLike, gain, q_in, sigma_b=0.0, q_init=0.0):
  """Pre-activation variances q_1..q_T of an RNN started at h_0 = 0 and driven by q_in,t.

  Args:
    activation: name or Activation.
    gain: recurrent gain g > 0.
    q_in: (T,) per-step input drive variances q_in,t = E||x_t U||**2 / H.
    sigma_b: bias scale.
    q_init: variance of the pre-activation behind h_0 = phi(a_0); 0 is the zero initial state
      (for phi(0) = 0), q* of the stationary map starts the RNN at its fixed point.

  Returns:
    (T,) float64: q_t = gain**2 E[phi(sqrt(q_{t-1}) z)**2] + q_in,t + sigma_b**2 (one lax.scan).

  References:
    Chen, Pennington & Schoenholz 2018 (the recursion, here with a time-dependent input).
  """
  return _trajectory_checked(activation, gain, q_in, sigma_b, q_init)[0]


def rnn_chi_trajectory(activation: ActivationLike, gain, q_in, sigma_b=0.0, q_init=0.0):
  """Per-step factors chi_t = gain**2 E[phi'(h)**2], h ~ N(0, q_t), along `rnn_q_trajectory`.

  prod_t chi_t is the mean squared singular value of dh_T / dh_0 (see the module docstring).

  Returns:
    (T,) float64.
  """
  return _trajectory_checked(activation, gain, q_in, sigma_b, q_init)[1]


def rnn_jacobian_moments(activation: ActivationLike, gain, q_in, sigma_b=0.0, q_init=0.0):
  """Mean and variance of the squared singular values of J = dh_T / dh_0, orthogonal W.

  mean = prod_t chi_t and variance = mean**2 sum_t (mu_2,t / mu_1,t**2 - 1), mu_k,t =
  E[phi'(h)**(2k)], h ~ N(0, q_t): the time-dependent form of `freeprob.jacobian_moments`
  (which is the case of T equal factors), from the first-order terms of the S-transforms,
  S(m) = (1 + (1 - m_2 / m_1**2) m + ...) / m_1, which add over free factors.

  Args:
    as `rnn_q_trajectory`; q_in is (T,).

  Returns:
    (mean, variance), float64.

  References:
    Pennington, Schoenholz & Ganguli 2018, "The emergence of spectral universality in deep
    networks", eqs. (15)-(16) (equal layers); Chen, Pennington & Schoenholz 2018.
  """
  _, chi_t, ratio_t = _trajectory_checked(activation, gain, q_in, sigma_b, q_init)
  log_mean = float(np.sum(np.log(chi_t)))
  if abs(log_mean) > 700:
    raise ValueError(f"prod_t chi_t = exp({log_mean:.0f}) is outside float64's range")
  mean = float(np.exp(log_mean))
  return mean, float(mean**2 * np.sum(ratio_t - 1.0))


# ---------------------------------------------------------------------- critical gain

@functools.partial(jax.jit, static_argnums=0)
def _mean_log_chi_jit(act, gain, q_in, sigma_b, q_init):
  def one(q):
    return jnp.mean(jnp.log(_trajectory(act, gain, q, sigma_b, q_init)[1]))
  return jnp.mean(jax.vmap(one)(q_in))


def rnn_mean_log_chi(activation: ActivationLike, gain, q_in, sigma_b=0.0, q_init=0.0):
  """The predicted growth rate per step of log E||J v||**2 / ||v||**2, J = dh_T / dh_0.

  Args:
    activation: name or Activation.
    gain: recurrent gain g > 0.
    q_in: the input drive variance, in one of three readings:
      - scalar: a constant drive; the rate is log chi at the fixed point q* (stationary);
      - (T,): the drive of each step (e.g. averaged over the data); the rate is
        mean_t log chi_t along `rnn_q_trajectory` from q_init (time-dependent);
      - (B, T): one row per example (e.g. `example_drive_variances`); the rate is the mean
        over examples of their time-dependent rates (per-example: the drive of one image sets
        its own q_t, and log chi is averaged over images, not evaluated at their mean drive).
    sigma_b: bias scale.
    q_init: start of the trajectory (not used for a scalar q_in).

  Returns:
    float64 scalar; 0 at the critical gain.

  References:
    Chen, Pennington & Schoenholz 2018.
  """
  act = activations.resolve(activation)
  _check_gain(gain)
  _check_nonnegative("sigma_b", sigma_b)
  ndim = np.ndim(q_in)
  if ndim == 0:
    _check_nonnegative("q_in", q_in)
    chi = rnn_chi(act, gain, q_in, sigma_b)
    with jax.enable_x64(True):
      return x64.finish(jnp.log(x64.f64(chi)))
  if ndim > 2 or 0 in np.shape(q_in):
    raise ValueError(f"q_in must be a scalar, (T,) or (B, T), got shape {np.shape(q_in)}")
  _check_nonnegative("q_in", q_in)
  _check_nonnegative("q_init", q_init)
  f64 = x64.f64
  with jax.enable_x64(True):
    rows = f64(q_in).reshape((-1, np.shape(q_in)[-1]))
    return x64.finish(
        _mean_log_chi_jit(act, f64(gain), rows, f64(sigma_b), f64(q_init)))


def rnn_critical_gain(activation: ActivationLike, q_in, sigma_b=0.0, q_init=0.0,
                      bracket=_GAIN_BRACKET) -> float:
  """The recurrent gain g* at which the Jacobian's mean squared singular value is kept.

  Solves `rnn_mean_log_chi`(g) = 0, so q_in may be a scalar (stationary: chi(q*) = 1), a (T,)
  sequence (time-dependent: the geometric mean of the chi_t is 1) or a (B, T) array of
  per-example drives (the mean over examples of their mean log chi_t is 0).

  Args:
    activation: name or Activation.
    q_in: scalar, (T,) or (B, T) input drive variances (see `rnn_mean_log_chi`).
    sigma_b: bias scale.
    q_init: start of the trajectories (not used for a scalar q_in).
    bracket: (lo, hi) gains between which the root is sought.

  Returns:
    g*, a Python float, by scipy.optimize.brentq (|g - g*| < 1e-12 g*). With q_in = 0 it is the
    sigma_w of the feed-forward critical line at that sigma_b; for linear phi g* = 1 and for
    relu sqrt(2), whatever the input.

  Raises:
    ValueError: bad arguments, or the rate does not change sign over `bracket`.

  References:
    Chen, Pennington & Schoenholz 2018 (critical initialization of the vanilla RNN).
  """
  act = activations.resolve(activation)
  lo, hi = (float(b) for b in bracket)
  if not 0 < lo < hi:
    raise ValueError(f"bracket must be 0 < lo < hi, got {bracket}")
  q_in = np.asarray(q_in, np.float64)

  def rate(g):
    return float(rnn_mean_log_chi(act, g, q_in, sigma_b, q_init))

  f_lo, f_hi = rate(lo), rate(hi)
  if not np.sign(f_lo) * np.sign(f_hi) < 0:
    raise ValueError(f"log chi does not change sign between gains {lo} and {hi} "
                     f"({f_lo:.3g}, {f_hi:.3g}): no critical gain in the bracket")
  return float(optimize.brentq(rate, lo, hi, xtol=1e-14, rtol=1e-12))


# ---------------------------------------------------------------------- input drive

def row_second_moments(x) -> np.ndarray:
  """C_t = E[x_t x_t^T] over the examples, the input statistics the mean field needs.

  Args:
    x: (B, T, D) input sequences (e.g. `data.sequence_view(images, "row")`).

  Returns:
    (T, D, D) float64.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 3 or x.shape[0] < 1:
    raise ValueError(f"x must be (batch, steps, features), got shape {x.shape}")
  return np.einsum("btd,bte->tde", x, x) / x.shape[0]


def input_drive_variance(x, input_kernel) -> np.ndarray:
  """q_in,t = E_x ||x_t U||**2 / H for one input kernel U: the drive variance a given RNN sees.

  Computed as tr(U^T C_t U) / H from `row_second_moments`, so the (B, T, H) drive is never
  formed (1.3 GB in float64 for 48k Fashion-MNIST rows at H = 128).

  Args:
    x: (B, T, D) inputs.
    input_kernel: (D, H) U (models compute x_t @ U).

  Returns:
    (T,) float64.
  """
  u = np.asarray(input_kernel, np.float64)
  c = row_second_moments(x)
  if u.ndim != 2 or u.shape[0] != c.shape[1]:
    raise ValueError(f"input_kernel must be ({c.shape[1]}, H), got shape {u.shape}")
  return np.einsum("tde,dh,eh->t", c, u, u) / u.shape[1]


def expected_input_drive_variance(x, kernel_variance: float) -> np.ndarray:
  """q_in,t averaged over kernels with i.i.d. zero-mean entries of variance `kernel_variance`.

  E_U[U U^T] = H kernel_variance I, so E_U tr(U^T C_t U) / H = kernel_variance tr(C_t) =
  kernel_variance E||x_t||**2: the pixel second moment times the kernel variance. A single
  draw of U at width H deviates from it by O(1 / sqrt(H)) (see `input_drive_variance`).

  Args:
    x: (B, T, D) inputs.
    kernel_variance: Var(U_ij), e.g. `glorot_variance(D, H)`.

  Returns:
    (T,) float64.
  """
  if not kernel_variance > 0:
    raise ValueError(f"kernel_variance must be > 0, got {kernel_variance}")
  return float(kernel_variance) * np.trace(row_second_moments(x), axis1=1, axis2=2)


def glorot_variance(fan_in: int, fan_out: int) -> float:
  """Var of a Glorot-initialized entry, 2 / (fan_in + fan_out) (uniform or normal alike).

  References:
    Glorot & Bengio, Understanding the difficulty of training deep feedforward neural
    networks, 2010, eq. (12).
  """
  if fan_in < 1 or fan_out < 1:
    raise ValueError(f"fans must be >= 1, got {fan_in}, {fan_out}")
  return 2.0 / (fan_in + fan_out)


def example_drive_variances(x, kernel_variance: float) -> np.ndarray:
  """Per-example, per-step drive variances kernel_variance * ||x_t||**2 (the U-average).

  Args:
    x: (B, T, D) inputs.
    kernel_variance: Var(U_ij).

  Returns:
    (B, T) float64, the q_in of `rnn_mean_log_chi`'s per-example reading; its mean over
    examples is `expected_input_drive_variance`.
  """
  if not kernel_variance > 0:
    raise ValueError(f"kernel_variance must be > 0, got {kernel_variance}")
  x = np.asarray(x, np.float64)
  if x.ndim != 3:
    raise ValueError(f"x must be (batch, steps, features), got shape {x.shape}")
  return float(kernel_variance) * np.sum(np.square(x), axis=-1)
