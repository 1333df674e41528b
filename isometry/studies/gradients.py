"""Study A: vanishing and exploding gradients, deep MLPs and RNNs, against mean field.

Part 1, deep MLPs at initialization. Network h_l = sigma_w x_{l-1} W_l + sigma_b b_l,
x_l = phi(h_l), l = 1..L, width N, with W_l a unit-gain draw (Haar orthogonal, or Gaussian of
variance 1 / N) and b_l ~ N(0, 1). Inputs start at the fixed point: x_0 = phi(h_0),
h_0 ~ N(0, q*) (q0 = 1 for relu / linear without bias, whose gradients do not depend on the
input's scale). The loss is a random linear read-out, L = sum_b <u_b, x_L^b> with u_b ~ N(0, I),
so the top gradient dL/dx_L = u_b is independent of the forward pass, as the mean-field
backward recursion assumes (Schoenholz et al. 2016, section 4). Backpropagation gives
dL/dh_l = D_l (sigma_w W_{l+1} dL/dh_{l+1}) with D_l = diag(phi'(h_l)), and mean field predicts

    E ||dL/dh_l||^2 = chi^(L - l) E ||dL/dh_L||^2,   chi = sigma_w^2 E[phi'(h)^2], h ~ N(0, q*),

for orthogonal and Gaussian weights alike (Schoenholz et al. 2016, eq. 12; Pennington, Schoenholz
& Ganguli 2017). We read dL/dh_l as the gradient with respect to a zero perturbation added to
h_l, sweep sigma_w across chi = 1 (vmap over sigma_w inside one jit), and fit per seed

    log ratio_l = a + s (L - l),   ratio_l = mean_b ||dL/dh_l^b||^2 / mean_b ||dL/dh_L^b||^2,

whose slope s mean field predicts to be log chi (tested per sigma_w over the networks, Holm-adjusted
over the distinct tests: `with_slope_tests`). Fluctuations: the log-gain of one input over
the whole depth, log(||dL/dh_1^b||^2 / ||dL/dh_L^b||^2); for linear networks it is exactly
2 (L - 1) log sigma_w with orthogonal weights and a sum of L - 1 independent
log(sigma_w^2 chi^2_N / N) terms with Gaussian ones (see `linear_gaussian_log_gain`).

Part 2, the vanilla tanh RNN of `isometry.engine.models` on row-by-row images: ||dL/dh_t|| over time
at initialization and after a short training (Adam), for a few gains of the orthogonal recurrent
kernel (`gradients_rnn`: one `isometry.engine.train` sweep, which records `grad_norm_through_time` on a
probe batch at init and after every epoch).

`run(config, out_dir)` writes gradients.json, A1_layer_norms.png, A2_log_slopes.png,
A3_rnn_through_time.png and the training run in out_dir/rnn/ (running again continues an
interrupted run).
"""
import dataclasses
import functools
import time
from typing import Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import special

from isometry.theory import initializers
from isometry.theory import meanfield
from isometry.results import plots
from isometry.results import stats
from isometry.theory.activations import get_activation
from isometry.studies import gradients_rnn
from isometry.studies import harness

WEIGHTS = ("orthogonal", "gaussian")
SUMMARY = "gradients.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """What study A measures. Defaults: the committed run (about 2 minutes on 2 shared CPU cores).

  Attributes:
    activations: MLP nonlinearities.
    sigma_b: bias scale per activation (same length as `activations`).
    sigma_w_factors: sigma_w / sigma_w_critical, where chi(sigma_w_critical, sigma_b) = 1.
    weights: weight distributions ("orthogonal", "gaussian").
    width, depth: N and L of the MLPs.
    batch: inputs per network.
    seeds: independent networks per (activation, weights, sigma_w) (>= 2 for an interval; the
      sigma_w sweep reuses each network's unit-gain weights: common random numbers).
    seed: PRNG seed of the MLP part.
    rnn_gains: gains of the orthogonal recurrent kernel.
    rnn_seeds: seeds per gain.
    dataset, data_dir: images for the RNN (data_dir None: data.OFFLINE_DIRS, else TFDS).
    synthetic: train the RNN on a tiny synthetic task instead (smoke tests, --quick).
    rnn_hidden, rnn_epochs, rnn_batch_size, rnn_lr: the RNN's training (Adam).
    rnn_train_examples: keep the first n training examples (None: all).
    rnn_val_size: training examples held out for validation.
  """
  activations: Tuple[str, ...] = ("tanh", "linear", "relu")
  sigma_b: Tuple[float, ...] = (0.05, 0.0, 0.0)
  sigma_w_factors: Tuple[float, ...] = (0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5)
  weights: Tuple[str, ...] = WEIGHTS
  width: int = 256
  depth: int = 64
  batch: int = 16
  seeds: int = 8
  seed: int = 0
  rnn_gains: Tuple[float, ...] = (0.9, 1.0, 1.025, 1.25)
  rnn_seeds: int = 5
  rnn_hidden: int = 128
  rnn_epochs: int = 2
  rnn_batch_size: int = 128
  rnn_lr: float = 1e-3
  rnn_train_examples: Optional[int] = 12800
  rnn_val_size: int = 2000

  def __post_init__(self):
    for name in ("activations", "sigma_b", "sigma_w_factors", "weights", "rnn_gains"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    harness.check(bool(self.activations), "activations is empty")
    for act in self.activations:
      get_activation(act)
    harness.check(len(self.sigma_b) == len(self.activations),
                  f"sigma_b needs one value per activation ({len(self.activations)}), got "
                  f"{len(self.sigma_b)}")
    harness.check(all(b >= 0 for b in self.sigma_b), f"sigma_b must be >= 0, got {self.sigma_b}")
    harness.check(bool(self.sigma_w_factors) and all(f > 0 for f in self.sigma_w_factors),
                  f"sigma_w_factors must be > 0, got {self.sigma_w_factors}")
    harness.check_choices(self, "weights", WEIGHTS, allow_empty=False)
    harness.check_at_least(self, ("width", "batch", "rnn_hidden", "rnn_epochs",
                                  "rnn_batch_size", "rnn_val_size"))
    harness.check(self.depth >= 2, f"depth must be >= 2 to fit a slope, got {self.depth}")
    harness.check_seeds(self, ("seeds", "rnn_seeds"))
    harness.check(bool(self.rnn_gains) and all(g > 0 for g in self.rnn_gains),
                  f"rnn_gains must be > 0, got {self.rnn_gains}")
    harness.check_positive(self, ("rnn_lr",))
    harness.check_examples(self, "rnn_train_examples", "rnn_batch_size")
    harness.check_data(self)

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: tiny networks, a synthetic RNN task."""
    settings = dict(sigma_w_factors=(0.9, 1.0, 1.1), width=32, depth=8, batch=4, seeds=5,
                    rnn_gains=(1.0, 1.25), rnn_seeds=2, synthetic=True, rnn_hidden=8,
                    rnn_epochs=1, rnn_batch_size=16, rnn_train_examples=None, rnn_val_size=16,
                    monitor_probes=0)
    settings.update(overrides)
    return cls(**settings)


# ----------------------------------------------------------------------------------------------
# Theory.


def linear_gaussian_log_gain(sigma_w, width: int, steps: int):
  """Mean and standard deviation of log(||g_l||^2 / ||g_{l+steps}||^2) in a linear network.

  With Gaussian weights of variance sigma_w^2 / N, g_{l-1} = sigma_w W_l g_l has
  ||g_{l-1}||^2 / ||g_l||^2 ~ sigma_w^2 chi^2_N / N independently of g_l's direction, so the
  log-gain over `steps` layers is a sum of `steps` independent terms with
  E log(chi^2_N / N) = digamma(N / 2) + log(2 / N), Var = trigamma(N / 2).
  (Orthogonal weights: exactly 2 steps log sigma_w, no spread.)

  Returns:
    (mean, std), floats.
  """
  per_step_mean = 2.0 * np.log(sigma_w) + special.digamma(width / 2) + np.log(2.0 / width)
  per_step_var = special.polygamma(1, width / 2)
  return float(steps * per_step_mean), float(np.sqrt(steps * per_step_var))


# ----------------------------------------------------------------------------------------------
# Monte-Carlo: per-layer gradient norms of random MLPs.


def _network_norms(key, activations, weights, sigma_w, sigma_b, q0, depth, width, batch):
  """Per weights, per activation: (S, L, B) squared norms ||dL/dh_l^b||^2 of one network draw."""
  k_w, k_b, k_x, k_u = jax.random.split(key, 4)
  bias = jax.random.normal(k_b, (depth, width), jnp.float64)
  z = jax.random.normal(k_x, (batch, width), jnp.float64)
  u = jax.random.normal(k_u, (batch, width), jnp.float64)
  layer_keys = jax.random.split(k_w, depth)
  results = []
  for name in weights:
    init = initializers.get_initializer(name, 1.0)
    # Unit gain, scaled by sigma_w after the product: the draw does not depend on sigma_w, so
    # the vmap over sigma_w below shares it instead of materializing one copy per sigma_w.
    w = jax.vmap(lambda k: init(k, (width, width), jnp.float64))(layer_keys)
    per_activation = []
    for a, act_name in enumerate(activations):
      phi = get_activation(act_name).fn

      def loss(eps, sw, sb, q):
        def layer(x, inputs):
          w_l, b_l, e_l = inputs
          return phi(sw * (x @ w_l) + sb * b_l[None, :] + e_l), None
        x, _ = lax.scan(layer, phi(jnp.sqrt(q) * z), (w, bias, eps))
        return jnp.sum(x * u)

      def norms(sw, q, a=a, loss=loss):
        eps = jnp.zeros((depth, batch, width), jnp.float64)
        g = jax.grad(loss)(eps, sw, sigma_b[a], q)
        return jnp.sum(jnp.square(g), axis=-1)

      per_activation.append(jax.vmap(norms)(sigma_w[a], q0[a]))
    results.append(tuple(per_activation))
  return tuple(results)


@functools.partial(jax.jit, static_argnums=(1, 2, 6, 7, 8))
def _norms_jit(keys, activations, weights, sigma_w, sigma_b, q0, depth, width, batch):
  # lax.map over networks: one network's (L, N, N) weights live at a time.
  return lax.map(lambda k: _network_norms(k, activations, weights, sigma_w, sigma_b, q0, depth,
                                          width, batch), keys)


def layer_gradient_norms(key, activations: Sequence[str], weights: Sequence[str], sigma_w,
                         sigma_b, q0, depth: int, width: int, batch: int, num_networks: int):
  """||dL/dh_l||^2 for l = 1..L in random MLPs at initialization (float64, one jit).

  Args:
    key: PRNG key; network k uses split(key, num_networks)[k] for every activation, weight
      distribution and sigma_w (common random numbers).
    activations: names, static.
    weights: "orthogonal" and/or "gaussian", static.
    sigma_w: (A, S) weight scales per activation.
    sigma_b: (A,) bias scales.
    q0: (A, S) variances of the input pre-activations.
    depth, width, batch, num_networks: L, N, inputs per network, networks.

  Returns:
    numpy float64 (len(weights), A, num_networks, S, L, batch); entry [..., l - 1, b] is
    ||dL/dh_l^b||^2 for the module's network and loss.
  """
  with jax.enable_x64(True):
    sigma_w = jnp.asarray(sigma_w, jnp.float64)
    sigma_b = jnp.asarray(sigma_b, jnp.float64)
    q0 = jnp.asarray(q0, jnp.float64)
    if sigma_w.ndim != 2 or sigma_w.shape[0] != len(activations) or q0.shape != sigma_w.shape:
      raise ValueError(f"sigma_w and q0 must be (A, S) with A = {len(activations)}, got "
                       f"{sigma_w.shape} and {q0.shape}")
    keys = jax.random.split(key, num_networks)
    out = _norms_jit(keys, tuple(activations), tuple(weights), sigma_w, sigma_b, q0, depth,
                     width, batch)
    return np.stack([np.stack([np.asarray(x) for x in per_act]) for per_act in out])


def log_slope(log_ratio):
  """Least-squares slope s of log_ratio[..., l - 1] = a + s (L - l) over l = 1..L.

  Args:
    log_ratio: (..., L) log of ||dL/dh_l||^2 relative to the last layer.

  Returns:
    (...) slopes; mean field predicts log chi.
  """
  log_ratio = np.asarray(log_ratio, np.float64)
  depth = log_ratio.shape[-1]
  x = (depth - 1 - np.arange(depth)).astype(np.float64)  # L - l for l = 1..L
  x = x - x.mean()
  y = log_ratio - log_ratio.mean(axis=-1, keepdims=True)
  return np.sum(y * x, axis=-1) / np.sum(x * x)


def summarize_norms(norms):
  """Per-network ratios, slopes and per-input log-gains from (K, S, L, B) squared norms.

  Returns:
    dict of numpy arrays: "log_ratio" (K, S, L), log of the batch-mean ratio to the last layer;
    "slope" (K, S), its `log_slope`; "log_gain" (K, S, B), log(||dL/dh_1^b||^2 /
    ||dL/dh_L^b||^2) per input.
  """
  norms = np.asarray(norms, np.float64)
  mean = norms.mean(axis=-1)
  log_ratio = np.log(mean) - np.log(mean[..., -1:])
  log_gain = np.log(norms[..., 0, :]) - np.log(norms[..., -1, :])
  return {"log_ratio": log_ratio, "slope": log_slope(log_ratio), "log_gain": log_gain}


def mlp_study(config: StudyConfig) -> dict:
  """Part 1: the sigma_w sweep for every activation and weight distribution (JSON-ready)."""
  sigma_c = np.array([meanfield.critical_sigma_w(a, b)
                      for a, b in zip(config.activations, config.sigma_b)])
  factors = np.asarray(config.sigma_w_factors, np.float64)
  sigma_w = sigma_c[:, None] * factors[None, :]
  q0 = np.array([[float(meanfield.input_variance(a, sw, b)) for sw in row]
                 for a, b, row in zip(config.activations, config.sigma_b, sigma_w)])
  start = time.perf_counter()
  norms = layer_gradient_norms(jax.random.key(config.seed), config.activations, config.weights,
                               sigma_w, np.asarray(config.sigma_b), q0, config.depth,
                               config.width, config.batch, config.seeds)
  seconds = time.perf_counter() - start
  logging.info("MLP gradient norms: %d networks x %d sigma_w x %d activations x %d weights in "
               "%.1fs", config.seeds, len(factors), len(config.activations),
               len(config.weights), seconds)
  cases = []
  for a, act in enumerate(config.activations):
    chi = np.array([float(meanfield.chi(act, sw, config.sigma_b[a])) for sw in sigma_w[a]])
    case = {"activation": act, "sigma_b": config.sigma_b[a], "sigma_w_critical": sigma_c[a],
            "sigma_w": sigma_w[a], "q0": q0[a], "chi": chi, "log_chi": np.log(chi),
            "weights": {}}
    if act == "linear":
      moments = [linear_gaussian_log_gain(sw, config.width, config.depth - 1) for sw in sigma_w[a]]
      case["theory_log_gain_gaussian"] = {"mean": [m for m, _ in moments],
                                          "std": [s for _, s in moments]}
      case["theory_log_gain_orthogonal"] = {
          "mean": list(2 * (config.depth - 1) * np.log(sigma_w[a])), "std": [0.0] * len(factors)}
    for w, name in enumerate(config.weights):
      summary = summarize_norms(norms[w, a])
      ratio_mean, ratio_ci = stats.mean_ci(summary["log_ratio"], axis=0)
      slope_mean, slope_ci = stats.mean_ci(summary["slope"], axis=0)
      gains = summary["log_gain"]
      flat_gains = np.moveaxis(gains, 1, 0).reshape(len(factors), -1)
      # Per-input spread within a network, then its interval over networks.
      spread_mean, spread_ci = stats.mean_ci(gains.std(axis=-1, ddof=1), axis=0)
      case["weights"][name] = {
          "log_ratio_mean": ratio_mean, "log_ratio_ci95": ratio_ci,
          "slope_per_seed": summary["slope"], "slope_mean": slope_mean, "slope_ci95": slope_ci,
          "slope_minus_log_chi": slope_mean - np.log(chi),
          "log_gain_mean": flat_gains.mean(axis=1), "log_gain_std": flat_gains.std(axis=1, ddof=1),
          "log_gain_std_within_network_mean": spread_mean,
          "log_gain_std_within_network_ci95": spread_ci,
      }
      logging.info("%s %s: slope - log chi = %s (95%% CI +- %s); per-input log-gain std %s",
                   act, name, np.round(slope_mean - np.log(chi), 4), np.round(slope_ci, 4),
                   np.round(flat_gains.std(axis=1, ddof=1), 3))
    cases.append(case)
  return with_slope_tests({"cases": cases, "seconds": seconds})


HOLM_FAMILY = ("slope - log chi = 0, a one-sample t-test over networks for every activation, "
               "weight distribution and sigma_w, Holm-adjusted together; a test repeated on "
               "the same differences (linear and relu: the slopes do not depend on sigma_w, "
               "whose unit-gain weights are shared) counts once, and linear orthogonal "
               "networks, exact up to float64 rounding, are not tested")
# Below this every network's |slope - log chi| is float64 rounding of an exact identity.
_EXACT = 1e-9


def with_slope_tests(mlp: dict) -> dict:
  """Part 1's result with, per activation and weights, "slope_vs_log_chi": for every sigma_w
  the networks' slopes against mean field's log chi (`harness.compare` of the (seeds,) slopes
  with log chi: a one-sample t-test, "verdict" better / worse where the slope is above / below
  log chi), Holm-adjusted over HOLM_FAMILY; where every network is within _EXACT of log chi,
  {"max_abs_difference", "verdict": "exact"} instead. Reads the per-network slopes it stores
  ("slope_per_seed", (seeds, sigma_w)), so it also updates a stored gradients.json."""
  differences, exact = {}, {}
  for c, case in enumerate(mlp["cases"]):
    log_chi = np.asarray(case["log_chi"], np.float64)
    for name, entry in case["weights"].items():
      slopes = np.asarray(entry["slope_per_seed"], np.float64)
      for j, value in enumerate(log_chi):
        difference = slopes[:, j] - value
        if np.all(np.abs(difference) < _EXACT):
          exact[(c, name, j)] = {"max_abs_difference": float(np.max(np.abs(difference))),
                                 "verdict": "exact"}
        else:
          differences[(c, name, j)] = difference
  # One test per distinct set of differences (rounding apart).
  distinct = {}
  for key, difference in differences.items():
    distinct.setdefault(tuple(np.round(difference, 12)), key)
  tests = harness.compare_family({key: (differences[key], np.zeros_like(differences[key]))
                                  for key in distinct.values()})
  by_key = {**exact, **{key: tests[distinct[tuple(np.round(d, 12))]]
                        for key, d in differences.items()}}
  cases = [{**case, "weights": {name: {**entry, "slope_vs_log_chi": [
      by_key[(c, name, j)] for j in range(len(case["log_chi"]))]}
                                for name, entry in case["weights"].items()}}
           for c, case in enumerate(mlp["cases"])]
  return {**mlp, "cases": cases, "holm_family": HOLM_FAMILY}


def resummarize(out_dir: str) -> dict:
  """Adds `with_slope_tests` to a finished study's gradients.json, without recomputing."""
  return harness.resummarize(out_dir, SUMMARY, lambda result: {
      **result, "mlp": with_slope_tests(result["mlp"])})


# ----------------------------------------------------------------------------------------------
# Figures (from the JSON content).


def plot_layer_norms(result: dict):
  """A1: ||dL/dh_l||^2 / ||dL/dh_L||^2 against l, one panel per (activation, weights)."""
  plt = plots.pyplot()
  cases = result["mlp"]["cases"]
  weights = list(cases[0]["weights"])
  fig, axes = plt.subplots(len(cases), len(weights), figsize=(5.2 * len(weights), 3.4 * len(cases)),
                           squeeze=False)
  cmap = plt.get_cmap("coolwarm")
  for i, case in enumerate(cases):
    log_chi = np.asarray(case["log_chi"])
    span = max(np.max(np.abs(log_chi)), 1e-12)
    for j, name in enumerate(weights):
      ax = axes[i, j]
      entry = case["weights"][name]
      mean = np.asarray(entry["log_ratio_mean"]) / np.log(10)
      ci = np.asarray(entry["log_ratio_ci95"]) / np.log(10)
      depth = mean.shape[-1]
      layers = np.arange(1, depth + 1)
      for s, sw in enumerate(case["sigma_w"]):
        plots.band(ax, layers, mean[s], ci[s], color=cmap(0.5 + 0.5 * log_chi[s] / span),
                   lw=1.4, alpha=0.25,
                   label=f"$\\sigma_w$={sw:.3g}, $\\chi$={case['chi'][s]:.3f}")
        ax.plot(layers, (depth - layers) * log_chi[s] / np.log(10), "k--", lw=0.7)
      ax.set_title(f"{case['activation']} ($\\sigma_b$={case['sigma_b']:g}), {name}", fontsize=10)
      ax.set_xlabel("layer l")
      ax.set_ylabel(r"$\log_{10}\, \|\partial L/\partial h_l\|^2 / \|\partial L/\partial h_L\|^2$",
                    fontsize=8)
    axes[i, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.suptitle("Per-layer gradient norms at init (mean over networks, band 95% CI); dashed: "
               r"mean field $\chi^{L-l}$", fontsize=10)
  fig.tight_layout()
  return fig


def plot_log_slopes(result: dict):
  """A2: fitted log-slope vs sigma_w against log chi (top), its residual slope - log chi
  (middle), and the per-input spread of the whole-depth log-gain (bottom)."""
  plt = plots.pyplot()
  cases = result["mlp"]["cases"]
  colors = plots.WEIGHT_COLORS
  fig, axes = plt.subplots(3, len(cases), figsize=(4.6 * len(cases), 10), squeeze=False)
  for i, case in enumerate(cases):
    sw = np.asarray(case["sigma_w"])
    fine = np.linspace(sw.min(), sw.max(), 60)
    log_chi = [np.log(float(meanfield.chi(case["activation"], s, case["sigma_b"]))) for s in fine]
    ax = axes[0, i]
    ax.plot(fine, log_chi, "k-", lw=1, label=r"mean field $\log\chi$")
    for k, (name, entry) in enumerate(case["weights"].items()):
      offset = (k - 0.5) * 0.006 * (sw.max() - sw.min() + 1e-9)
      ax.errorbar(sw + offset, entry["slope_mean"], yerr=entry["slope_ci95"], fmt="o", ms=3.5,
                  capsize=2, color=colors.get(name, "gray"), label=f"{name} (95% CI)")
    ax.axvline(case["sigma_w_critical"], color="gray", ls=":", lw=1)
    ax.set_title(f"{case['activation']}, $\\sigma_b$={case['sigma_b']:g}", fontsize=10)
    ax.set_xlabel(r"$\sigma_w$")
    ax.set_ylabel(r"fitted slope of $\log\|\partial L/\partial h_l\|^2$ vs $L-l$", fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[1, i]
    for k, (name, entry) in enumerate(case["weights"].items()):
      offset = (k - 0.5) * 0.006 * (sw.max() - sw.min() + 1e-9)
      ax.errorbar(sw + offset, entry["slope_minus_log_chi"], yerr=entry["slope_ci95"], fmt="o",
                  ms=3.5, capsize=2, color=colors.get(name, "gray"), label=name)
    ax.axhline(0.0, color="k", lw=1)
    ax.set_xlabel(r"$\sigma_w$")
    ax.set_ylabel(r"slope $-\log\chi$ (95% CI)", fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[2, i]
    for name, entry in case["weights"].items():
      ax.errorbar(sw, entry["log_gain_std_within_network_mean"],
                  yerr=entry["log_gain_std_within_network_ci95"], fmt="o-", ms=3.5, capsize=2,
                  color=colors.get(name, "gray"), label=f"{name}")
    if "theory_log_gain_gaussian" in case:
      ax.plot(sw, case["theory_log_gain_gaussian"]["std"], "k--", lw=1,
              label=r"Gaussian closed form $\sqrt{(L-1)\psi_1(N/2)}$")
    ax.set_xlabel(r"$\sigma_w$")
    ax.set_ylabel(r"std over inputs of "
                  r"$\log\|\partial L/\partial h_1\|^2/\|\partial L/\partial h_L\|^2$",
                  fontsize=8)
    ax.legend(fontsize=7)
  fig.suptitle("Backward growth rate per layer against mean field (top, middle) and its "
               "input-to-input fluctuation over the whole depth (bottom)", fontsize=10)
  fig.tight_layout()
  return fig


FIGURES = {"A1_layer_norms.png": plot_layer_norms, "A2_log_slopes.png": plot_log_slopes,
           "A3_rnn_through_time.png": gradients_rnn.plot_rnn}


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False) -> Optional[dict]:
  """Runs both parts; writes gradients.json, the three figures and out_dir/rnn/.

  Args:
    config: the study.
    out_dir: results folder.
    overwrite: replace a finished study in out_dir (else refused before any work).

  Returns:
    The JSON content: {"config", "mlp": {"cases": [...]}, "rnn": {...}, "seconds"}; None where
    the RNN's training was interrupted (run again to continue it).

  Raises:
    data.DataUnavailableError, train.SetupError: the RNN's dataset cannot be read, or out_dir
      holds a finished study (before anything is written).
  """
  start = time.perf_counter()
  # The RNN's data first, so that missing data fails before any work or file.
  dataset = harness.start(out_dir, SUMMARY, overwrite,
                          lambda: gradients_rnn.load_rnn_dataset(config))
  result = {"config": dataclasses.asdict(config), "mlp": mlp_study(config)}
  result["rnn"] = gradients_rnn.rnn_study(config, out_dir, dataset, overwrite=overwrite)
  if result["rnn"] is None:
    return None
  result["seconds"] = time.perf_counter() - start
  harness.save(out_dir, SUMMARY, result, FIGURES)
  logging.info("study A done in %.0fs: %s", result["seconds"], out_dir)
  return result
