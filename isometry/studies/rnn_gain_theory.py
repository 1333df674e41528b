"""The RNN-gain study's theory side: the mean field of the seed's RNN on its data, checked.

Stages 1-3 of `rnn_gain` (the study, its config and its training live there):

  1. theory: the input drive q_in,t = E||x_t U||**2 / H from the pixel second moments and the
     Glorot variance, checked against the drive of the actual U of every training seed; g* in
     the three readings of the input (stationary at the time-averaged drive, time-dependent at
     the data-averaged drive, per-example), and the curves q*(g), chi(g) and the predicted
     log-growth rate per step (`isometry.theory.rnn_meanfield`);
  2. measurement: width-H RNNs at init (the model itself: Keras init, zero initial state)
     driven by real rows; their pre-activation variances q_t and log-growth rate of
     E||J^T u||**2 per step over a gain grid, against the three readings;
  3. spectra: the free-probability density of J = dh_T / dh_0's squared singular values
     (`freeprob`, T equal factors D W with the D law at the stationary q*, i.e. W drawn afresh
     every step) against four sampled Jacobians, with the KS distance: untied W and Gaussian
     drive (what freeprob assumes), tied W and Gaussian drive (the RNN's weight sharing), tied W
     and real rows from the zero state at width N, and the H-unit model itself.

Every stage takes the study's config (`rnn_gain.StudyConfig`) and the training images read row
by row, x (N, T, D), and returns the JSON-ready record that study.json holds.
"""
import functools
import time
from typing import Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from isometry import data
from isometry.theory import freeprob
from isometry.theory import jacobian
from isometry.engine import models
from isometry.results import plots
from isometry.theory import rnn_meanfield as rm
from isometry.engine import train

READINGS = ("stationary", "trajectory", "per_example")
VARIANTS = ("untied_gaussian", "tied_gaussian", "data_wide", "data_model")
_ACTIVATION = "tanh"        # the model is a tanh SimpleRNN
_NUM_CLASSES = train.NUM_CLASSES
_QUANTILES = 201            # points of each empirical CDF kept in study.json


# ---------------------------------------------------------------------------------- networks

def init_rnn(key, gain, input_dim: int, width: int, input_variance: float) -> dict:
  """float64 SimpleRNN parameters as `models.init_rnn` draws them, with Var(U_ij) set.

  At width = H the input kernel is the model's Glorot-uniform one (input_variance =
  glorot_variance(D, H) leaves it unchanged); at another width it is rescaled so that the drive
  variance, and with it the mean field, is that of the H-unit model.
  """
  recurrent = models.mixed_initializer(("orthogonal",), 0, gain)
  params = models.init_rnn(key, input_dim, width, _NUM_CLASSES, recurrent, jnp.float64)
  scale = jnp.sqrt(input_variance / rm.glorot_variance(input_dim, width))
  return {**params, "input": scale * params["input"]}


def data_rnn_jacobian(params: dict, x) -> jax.Array:
  """J = dh_T / dh_0 of the model's recurrence at h_0 = 0, for one sequence.

  Reverse mode through `models.tanh_recurrence` (the trained model's own recurrence), one
  cotangent per output unit.

  Args:
    params: RNN parameters ("input" (D, H), "recurrent" (H, H), "bias" (H,)).
    x: (T, D) one input sequence.

  Returns:
    (H, H) with J[i, j] = d h_T,i / d h_0,j.
  """
  drive = (x @ params["input"] + params["bias"][None, :])[:, None, :]
  width = params["recurrent"].shape[0]

  def final(h0):
    return models.tanh_recurrence(params["recurrent"], drive, h0[None, :])[0]

  return jax.jacrev(final)(jnp.zeros((width,), drive.dtype))


def measure_growth(params: dict, x, cotangents) -> Tuple[jax.Array, jax.Array]:
  """Pre-activation second moments and log-growth rates of a batch of sequences.

  Args:
    params: RNN parameters.
    x: (B, T, D) sequences; the RNN starts at h_0 = 0.
    cotangents: (K, B, H) random vectors u.

  Returns:
    q: (T, B), mean over units of a_t**2, a_t = x_t U + h_{t-1} W + b.
    rate: (B,), log(mean_k ||J^T u_k||**2 / ||u_k||**2) / T, whose expectation over isotropic u
      is log(tr(J J^T) / H) / T, the measured counterpart of `rnn_mean_log_chi`.
  """
  states = models.rnn_hidden_states(params, x)                    # (T, B, H)
  drive = jnp.einsum("btd,dh->tbh", x, params["input"]) + params["bias"][None, None, :]
  previous = jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])
  q = jnp.mean(jnp.square(drive + previous @ params["recurrent"]), axis=-1)
  _, vjp = jax.vjp(lambda h0: models.tanh_recurrence(params["recurrent"], drive, h0),
                   jnp.zeros_like(states[0]))
  pulled = jax.vmap(lambda u: vjp(u)[0])(cotangents)               # (K, B, H)
  ratio = jnp.sum(jnp.square(pulled), -1) / jnp.sum(jnp.square(cotangents), -1)
  return q, jnp.log(jnp.mean(ratio, axis=0)) / x.shape[1]


def _squared_singular_values(jac):
  return jnp.square(jnp.linalg.svd(jac, compute_uv=False))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _measure_gain(key, gain, width, input_dim, tangents, x, input_variance):
  """Per network (leading axis of key and x): q (T, B) and rate (B,), one gain."""
  def one(k, xs):
    k_init, k_u = jax.random.split(k)
    params = init_rnn(k_init, gain, input_dim, width, input_variance)
    u = jax.random.normal(k_u, (tangents, xs.shape[0], width), jnp.float64)
    return measure_growth(params, xs, u)
  return jax.lax.map(lambda a: one(*a), (key, x))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _data_spectra(key, gain, width, input_dim, x, input_variance):
  """Squared singular values (networks, width), one image per network, one gain."""
  def one(k, xs):
    params = init_rnn(k, gain, input_dim, width, input_variance)
    return _squared_singular_values(data_rnn_jacobian(params, xs))
  return jax.lax.map(lambda a: one(*a), (key, x))


# ------------------------------------------------------------------------------------ stages

def rows(images) -> np.ndarray:
  """Images as float64 row sequences (N, T, D), the RNN's input."""
  return np.asarray(data.sequence_view(images, "row"), np.float64)


def _sample(rng, x, n):
  return x[rng.choice(len(x), size=min(n, len(x)), replace=False)]


def theory(config, x: np.ndarray, input_kernels: np.ndarray, rng) -> dict:
  """Input drive statistics, g* in every reading, and the mean-field curves over gain.

  Args:
    config: the study.
    x: (N, T, D) training images as rows.
    input_kernels: (seeds, D, H) the input kernel U each training seed draws (float32).
    rng: numpy Generator of the theory-side samples.
  """
  steps, input_dim = x.shape[1:]
  variance = rm.glorot_variance(input_dim, config.hidden)
  q_in = rm.expected_input_drive_variance(x, variance)
  per_seed = np.stack([rm.input_drive_variance(x, u) for u in input_kernels])
  examples = _sample(rng, x, config.theory_examples)
  per_example = rm.example_drive_variances(examples, variance)
  q_bar = float(q_in.mean())
  readings = {"stationary": q_bar, "trajectory": q_in, "per_example": per_example}
  critical = {name: rm.rnn_critical_gain(_ACTIVATION, q) for name, q in readings.items()}
  # g* with each training seed's own U (per-example drives ||x_t U||^2 / H).
  per_seed_critical = []
  for u in input_kernels:
    u = u.astype(np.float64)
    drives = np.mean(np.square(np.einsum("btd,dh->bth", examples, u)), axis=-1)
    per_seed_critical.append(rm.rnn_critical_gain(_ACTIVATION, drives))
  gains = np.asarray(config.curve_gains)
  curves = {"gains": gains,
            "q_star": [float(rm.rnn_q_star(_ACTIVATION, g, q_bar)) for g in gains],
            "chi": [float(rm.rnn_chi(_ACTIVATION, g, q_bar)) for g in gains]}
  for name, q in readings.items():
    curves[f"rate_{name}"] = [float(rm.rnn_mean_log_chi(_ACTIVATION, g, q)) for g in gains]
  g_star = critical["per_example"]
  return {
      "steps": steps, "input_dim": input_dim, "kernel_variance": variance,
      "pixel_second_moment": float(np.mean(np.square(x))),
      "q_in_t": q_in, "q_in_mean": q_bar,
      "q_in_t_per_seed_kernel": per_seed,
      "q_in_mean_per_seed_kernel": per_seed.mean(axis=1),
      "q_in_max_relative_deviation_per_seed": np.max(np.abs(per_seed / q_in - 1.0), axis=1),
      "per_example_q_in_mean_quantiles": dict(zip(
          ("5%", "50%", "95%"), np.quantile(per_example.mean(axis=1), [0.05, 0.5, 0.95]))),
      "critical_gain": critical, "critical_gain_per_seed_kernel": per_seed_critical,
      "g_star": g_star, "g_star_reading": "per_example",
      "q_star_at_g_star": float(rm.rnn_q_star(_ACTIVATION, g_star, q_bar)),
      "q_t_at_g_star": {
          "trajectory": rm.rnn_q_trajectory(_ACTIVATION, g_star, q_in),
          "per_example": np.mean([rm.rnn_q_trajectory(_ACTIVATION, g_star, q)
                                  for q in per_example[:256]], axis=0)},
      "curves": curves,
  }


def measure(config, x: np.ndarray, th: dict, key, rng) -> dict:
  """Growth rates and q_t of H-unit RNNs at init on real rows, over `curve_gains`."""
  rates, rate_se, q_profiles = [], [], []
  n, b = config.measure_networks, config.measure_examples
  with jax.enable_x64(True):
    # The grid, then g* itself (its q_t profile is what the figure compares).
    for i, gain in enumerate(config.curve_gains + (th["g_star"],)):
      xs = np.stack([_sample(rng, x, b) for _ in range(n)])
      keys = jax.random.split(jax.random.fold_in(key, i), n)
      q, rate = _measure_gain(keys, gain, config.hidden, th["input_dim"], config.tangents,
                              jnp.asarray(xs), th["kernel_variance"])
      rate = np.asarray(rate).ravel()
      rates.append(float(rate.mean()))
      rate_se.append(float(rate.std(ddof=1) / np.sqrt(rate.size)))
      q_profiles.append(np.asarray(q).mean(axis=(0, 2)))
  at_g_star = {"rate": rates.pop(), "rate_standard_error": rate_se.pop(),
               "q_t": q_profiles.pop()}
  gains = np.asarray(config.curve_gains)
  errors = {name: float(np.sqrt(np.mean(np.square(
      np.asarray(th["curves"][f"rate_{name}"]) - np.asarray(rates))))) for name in READINGS}
  return {"gains": gains, "rate": rates, "rate_standard_error": rate_se,
          "q_t": q_profiles, "rms_rate_error": errors, "at_g_star": at_g_star,
          "g_star_measured": _crossing(gains, np.asarray(rates)),
          "networks_per_gain": n, "examples_per_network": b, "width": config.hidden}


def _crossing(gains, values) -> Optional[float]:
  """Linear interpolation of the first sign change of values (None if there is none)."""
  change = np.nonzero(np.diff(np.sign(values)) != 0)[0]
  if change.size == 0:
    return None
  i = change[0]
  return float(gains[i] - values[i] * (gains[i + 1] - gains[i]) / (values[i + 1] - values[i]))


def _cdf_summary(samples):
  samples = np.sort(np.ravel(samples))
  probabilities = np.linspace(0.0, 1.0, _QUANTILES)
  return {"probabilities": probabilities, "quantiles": np.quantile(samples, probabilities)}


def spectra(config, x: np.ndarray, th: dict, gains, key, rng) -> list:
  """Stationary free-probability spectrum of J against the four sampled variants, per gain."""
  steps, input_dim = th["steps"], th["input_dim"]
  sigma_eff = float(rm.effective_sigma_b(th["q_in_mean"]))
  width, nets = config.spectrum_width, config.spectrum_networks
  k_untied, k_tied, k_wide, k_model = jax.random.split(key, 4)
  gain_array = np.asarray(gains, np.float64)
  # Untied W and an i.i.d. Gaussian drive: a feed-forward network whose per-layer bias is the
  # drive (sigma_b = sqrt(q_in)), inputs at q*; tied W: the RNN of `jacobian`, h_0 at q*.
  untied = np.asarray(jacobian.jacobian_squared_singular_values(
      k_untied, _ACTIVATION, "orthogonal", gain_array, sigma_eff, steps, width, nets))
  tied = np.asarray(jacobian.rnn_jacobian_squared_singular_values(
      k_tied, _ACTIVATION, "orthogonal", gain_array, sigma_eff, 0.0, steps, width, nets))
  variance = th["kernel_variance"]
  cases = []
  for i, gain in enumerate(gains):
    start = time.time()
    wide_x = _sample(rng, x, nets)
    model_x = _sample(rng, x, config.model_networks)
    with jax.enable_x64(True):
      wide = np.asarray(_data_spectra(jax.random.split(jax.random.fold_in(k_wide, i), nets),
                                      gain, width, input_dim, jnp.asarray(wide_x), variance))
      model = np.asarray(_data_spectra(
          jax.random.split(jax.random.fold_in(k_model, i), config.model_networks), gain,
          config.hidden, input_dim, jnp.asarray(model_x), variance))
    lambda_max = freeprob.max_squared_singular_value(_ACTIVATION, gain, sigma_eff, steps,
                                                     "orthogonal")
    grid = freeprob.spectral_grid(lambda_max, config.grid_points)
    density = freeprob.jacobian_spectral_density(_ACTIVATION, gain, sigma_eff, steps,
                                                 "orthogonal", grid)
    mean, variance_theory = freeprob.jacobian_moments(_ACTIVATION, gain, sigma_eff, steps,
                                                      "orthogonal")
    samples = {"untied_gaussian": untied[i], "tied_gaussian": tied[i], "data_wide": wide,
               "data_model": model}
    drives = {"data_wide": wide_x, "data_model": model_x}
    measured = {}
    for name, s in samples.items():
      entry = {"ks_distance": freeprob.ks_distance(density, s),
               "log10_mean": float(np.log10(np.mean(s))),
               "width": config.hidden if name == "data_model" else width,
               "networks": int(s.shape[0]), "cdf": _cdf_summary(s)}
      if name in drives:
        # Per-example time-dependent prediction of the mean, for exactly these images.
        rates = [rm.rnn_mean_log_chi(_ACTIVATION, gain, q)
                 for q in rm.example_drive_variances(drives[name], variance)]
        entry["log10_mean_per_example_theory"] = float(
            np.log10(np.mean(np.exp(steps * np.asarray(rates)))))
      measured[name] = entry
    cases.append({
        "gain": float(gain), "steps": steps, "sigma_eff": sigma_eff,
        "q_star": float(rm.rnn_q_star(_ACTIVATION, gain, th["q_in_mean"])),
        "chi": float(rm.rnn_chi(_ACTIVATION, gain, th["q_in_mean"])),
        "theory": {"log10_mean": float(np.log10(mean)), "variance": variance_theory,
                   "lambda_max": lambda_max, "lambdas": density.lambdas,
                   "cdf": freeprob.cumulative_distribution(density),
                   "max_residual": float(density.residual.max())},
        "measured": measured})
    logging.info("spectra g=%.4g: KS %s (%.1fs)", gain,
                 ", ".join(f"{k} {v['ks_distance']:.3f}" for k, v in measured.items()),
                 time.time() - start)
  return cases


# ----------------------------------------------------------------------------------- figures

def meanfield_figure(result: dict):
  """Growth rate per step vs gain (three readings and the measurement), q* and chi vs gain,
  and q_t at g*."""
  plt = plots.pyplot()
  th, me = result["theory"], result["measurement"]
  c = th["curves"]
  gains = np.asarray(c["gains"])
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  styles = {"stationary": ("C0", "--"), "trajectory": ("C1", "-."), "per_example": ("C2", "-")}
  for name, (color, ls) in styles.items():
    ax.plot(gains, c[f"rate_{name}"], ls, color=color,
            label=f"theory, {name.replace('_', '-')}: g*={th['critical_gain'][name]:.3f}")
  ax.errorbar(me["gains"], me["rate"], yerr=2 * np.asarray(me["rate_standard_error"]), fmt="k.",
              capsize=2, label=f"measured, H={me['width']} (±2 SE)")
  ax.axhline(0.0, color="0.5", lw=0.8)
  for g in result["config"]["hand_gains"]:
    ax.axvline(g, color="0.7", lw=0.8, ls=":")
  ax.axvline(th["g_star"], color="C2", lw=1.0)
  ax.set_xlabel("recurrent gain g")
  ax.set_ylabel(r"$\frac{1}{T}\log\,\mathrm{tr}(JJ^T)/H$ per step")
  ax.set_title("growth rate of dh_T/dh_0 at init (dotted: hand-picked gains)", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)

  ax = axes[1]
  ax.plot(gains, c["q_star"], "C0-", label=r"stationary $q^*$")
  ax.plot(gains, c["chi"], "C3-", label=r"stationary $\chi$")
  ax.axhline(1.0, color="0.5", lw=0.8)
  ax.axvline(th["critical_gain"]["stationary"], color="C3", lw=1.0, ls="--",
             label=f"$\\chi=1$: g={th['critical_gain']['stationary']:.3f}")
  ax.axvline(th["g_star"], color="C2", lw=1.0, label=f"per-example g*={th['g_star']:.3f}")
  ax.set_xlabel("recurrent gain g")
  ax.set_title(f"time-averaged drive q_in={th['q_in_mean']:.4f}", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)

  ax = axes[2]
  t = np.arange(1, th["steps"] + 1)
  g = th["g_star"]
  ax.plot(t, me["at_g_star"]["q_t"], "k.", label=f"measured, H={me['width']}")
  ax.plot(t, th["q_t_at_g_star"]["per_example"], "C2-", label="per-example theory")
  ax.plot(t, th["q_t_at_g_star"]["trajectory"], "C1-.", label="trajectory theory")
  ax.axhline(th["q_star_at_g_star"], color="C0", ls="--", label="stationary q*")
  ax.set_title(f"pre-activation variance at g*={g:.3f}", fontsize=9)
  ax.plot(t, th["q_in_t"], "0.6", lw=1, label="input drive q_in,t")
  ax.set_xlabel("step t (image row)")
  ax.set_ylabel("pre-activation variance")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def spectra_figure(result: dict):
  """CDFs of log10 lambda: stationary free probability against the four sampled variants."""
  plt = plots.pyplot()
  cases = result["spectra"]
  fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.8), squeeze=False)
  colors = dict(zip(VARIANTS, ("C0", "C1", "C2", "C3")))
  for ax, case in zip(axes[0], cases):
    ax.plot(np.log10(case["theory"]["lambdas"]), case["theory"]["cdf"], "k-", lw=1.5,
            label="free prob., stationary")
    for name in VARIANTS:
      m = case["measured"][name]
      ax.plot(np.log10(np.maximum(m["cdf"]["quantiles"], 1e-300)), m["cdf"]["probabilities"],
              color=colors[name], lw=1,
              label=f"{name} N={m['width']}: KS {m['ks_distance']:.3f}")
    # From the lowest 1% quantile of any sample (the theory grid reaches 10 decades lower) to
    # the largest eigenvalue seen or predicted.
    low = min(np.log10(max(case["measured"][n]["cdf"]["quantiles"][2], 1e-300))
              for n in VARIANTS)
    high = max([np.log10(case["measured"][n]["cdf"]["quantiles"][-1]) for n in VARIANTS]
               + [np.log10(case["theory"]["lambda_max"])])
    ax.set_xlim(low, high + 0.2)
    ax.set_title(f"g={case['gain']:.4g}, T={case['steps']}, chi={case['chi']:.3f}", fontsize=9)
    ax.set_xlabel(r"$\log_{10}\lambda$ (squared singular value of dh_T/dh_0)")
    ax.legend(fontsize=6, loc="upper left")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("CDF")
  fig.tight_layout()
  return fig
