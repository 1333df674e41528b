"""Study B: speed of convergence of deep vs shallow networks, orthogonal vs Gaussian init.

Part 1, deep linear networks (Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear
dynamics of learning in deep linear neural networks"). A network of D weight matrices maps
x -> x W_1 ... W_{D-1} W_out (row vectors, kernels (fan_in, fan_out)): D - 1 square N x N layers
and a read-out N x N_out, N_out < N. It learns a fixed random linear map M (N x N_out, entries
N(0, 1 / N)) in Saxe et al.'s whitened-input setting: with E[x x^T] = I the expected square loss
is, up to a constant, 1/2 ||W_1 ... W_out - M||_F^2, and we run full-batch gradient descent on
exactly that. Progress is the relative error E = ||W_1 ... W_out - M||_F^2 / ||M||_F^2.

Inits: "orthogonal" (every layer gain-1 Haar orthogonal; the read-out has orthonormal columns)
or "gaussian" (the "scaled random Gaussian" of the paper: entries N(0, 1 / fan_in)).
N_out < N makes the set of reachable maps (rank N_out) connected; with square maps a product
of orthogonal layers could never change the sign of its determinant without passing through a
singular matrix, where the gradient vanishes.

Learning rate: lr = lr0 / D. Saxe et al. (section 3) show that the optimal learning rate of a
deep linear network scales as 1 / depth: the gradient step changes the end-to-end map by
-lr sum_l P_l P_l^T G Q_l^T Q_l (P_l, Q_l the products above and below layer l, G the gradient
with respect to the map), which is -lr D G when every partial product is an isometry, as it is
at an orthogonal init. With lr = lr0 / D every depth then starts with the step -lr0 G of a
one-layer network, and the paper's prediction is a depth-independent number of steps for
orthogonal init, growing with depth for scaled Gaussian init, whose partial products are far
from isometries. Depths share one program: a scanned stack of max(D) - 1 layers where layer l
is the identity when l >= D - 1 (the depth mask of `isometry.engine.models.mlp_apply`), and the
depths x inits x seeds members are vmapped in one jit.

Part 2, deep tanh networks at the critical point: `isometry.engine.models.init_mlp` / `mlp_apply`
(depth = hidden layers, D = depth + 1 weight matrices with the read-out), hidden kernels
orthogonal or Gaussian with gain sigma_w and biases N(0, sigma_b^2), (sigma_w, sigma_b) =
`meanfield.critical_point("tanh", q_star)` (chi = 1), trained by full-batch gradient descent
with lr = lr0 / D on the cross-entropy of a fixed subset of Fashion-MNIST. Inputs are centered
and scaled so that the first pre-activations have variance q* (see `prepare_inputs`). Here
depths are a Python loop (one program per depth): a masked stack would spend the deepest
network's compute on every member, 3x the work for depths 1..32.

Both parts report the number of steps until the loss first falls below a threshold, per
(depth, init) over seeds (mean of log10 steps with a 95% t-interval when every seed got there
within the step budget; otherwise the count that did).

`run(config, out_dir)` writes convergence.json, curves.npz, B1_steps_vs_depth.png and
B2_loss_curves.png.
"""
import dataclasses
import functools
import os
import time
from typing import Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from isometry import data
from isometry import processes
from isometry.results import io
from isometry.theory import meanfield
from isometry.engine import models
from isometry.results import plots
from isometry.results import stats
from isometry.studies import harness

INITS = ("orthogonal", "gaussian")
_DTYPE = jnp.float32
SUMMARY = "convergence.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig(harness.DataConfig):
  """What study B measures. Defaults: the committed run (7-10 minutes on 2 shared CPU cores).

  Attributes:
    inits: initializations compared ("orthogonal", "gaussian").
    seeds: seeds per (task, depth, init) (>= 2 for an interval).
    seed: base PRNG seed (member seed s uses fold_in(key(seed), s)).
    linear_depths: numbers of weight matrices D of the deep linear networks.
    linear_width, linear_out: N and N_out.
    linear_lr: lr0; a depth-D network uses lr0 / D.
    linear_steps: gradient steps (the budget).
    linear_threshold: relative error ||W - M||^2 / ||M||^2 that counts as converged.
    tanh_depths: hidden layers of the tanh networks (D = depth + 1 weight matrices).
    q_star: fixed point of the critical point (sigma_w, sigma_b) on chi = 1.
    tanh_width: hidden units.
    tanh_examples: training examples (the first n of the training split), one full batch.
    tanh_lr: lr0; a network with D weight matrices uses lr0 / D.
    tanh_steps: gradient steps (the budget).
    tanh_threshold: training cross-entropy that counts as converged.
    dataset, data_dir: images of part 2 (data_dir None: the offline copy or TFDS).
    synthetic: part 2 on a tiny synthetic task (smoke tests, --quick).
  """
  inits: Tuple[str, ...] = INITS
  seeds: int = 5
  seed: int = 0
  linear_depths: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
  linear_width: int = 32
  linear_out: int = 16
  linear_lr: float = 0.1
  linear_steps: int = 2000
  linear_threshold: float = 1e-2
  tanh_depths: Tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  q_star: float = 1.0 / 64
  tanh_width: int = 64
  tanh_examples: int = 512
  tanh_lr: float = 1.0
  tanh_steps: int = 400
  tanh_threshold: float = 0.5

  def __post_init__(self):
    for name in ("inits", "linear_depths", "tanh_depths"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    harness.check_choices(self, "inits", INITS, allow_empty=False)
    harness.check_seeds(self)
    for name in ("linear_depths", "tanh_depths"):
      depths = getattr(self, name)
      harness.check(bool(depths) and all(int(d) == d and d >= 1 for d in depths),
                    f"{name} must be integers >= 1, got {depths}")
    harness.check_at_least(self, ("linear_width", "linear_out", "linear_steps", "tanh_width",
                                  "tanh_examples", "tanh_steps"))
    harness.check(self.linear_out < self.linear_width,
                  f"linear_out ({self.linear_out}) must be < linear_width ({self.linear_width}); "
                  "see the module docstring")
    harness.check_positive(self, ("linear_lr", "linear_threshold", "tanh_lr", "tanh_threshold",
                                  "q_star"))
    harness.check_data(self)
    meanfield.critical_point("tanh", self.q_star)  # ValueError where q* has no critical point.

  @classmethod
  def quick(cls, **overrides) -> "StudyConfig":
    """A seconds-long smoke version: small networks, few steps, a synthetic task for part 2."""
    settings = dict(linear_depths=(1, 2, 4), linear_width=8, linear_out=4, linear_steps=100,
                    tanh_depths=(1, 2, 4), tanh_width=16, tanh_examples=64, tanh_steps=40,
                    tanh_threshold=2.0, synthetic=True)
    settings.update(overrides)
    return cls(**settings)


def _member_key(seed: int, member_seed) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), member_seed)


# ----------------------------------------------------------------------------------------------
# Part 1: deep linear networks.


def linear_teacher(key, width: int, out_dim: int) -> jax.Array:
  """The target map M, (width, out_dim), entries N(0, 1 / width)."""
  return jax.random.normal(key, (width, out_dim), _DTYPE) / jnp.sqrt(jnp.asarray(width, _DTYPE))


def init_deep_linear(key, init_index, max_depth: int, width: int, out_dim: int,
                     inits=INITS) -> dict:
  """Weights for every depth up to max_depth: {"stack": (max_depth - 1, N, N), "out": (N, N_out)}.

  Args:
    key: PRNG key.
    init_index: index into `inits` (may be traced).
    max_depth: the most weight matrices a member uses.
    width, out_dim: N and N_out.
    inits: names in `isometry.theory.initializers`, all at gain 1.
  """
  kernel_init = models.mixed_initializer(tuple(inits), init_index, 1.0)
  k_stack, k_out = jax.random.split(key)
  stack = jax.vmap(lambda k: kernel_init(k, (width, width), _DTYPE))(
      jax.random.split(k_stack, max_depth - 1)) if max_depth > 1 else jnp.zeros(
          (0, width, width), _DTYPE)
  return {"stack": stack, "out": kernel_init(k_out, (width, out_dim), _DTYPE)}


def deep_linear_map(params: dict, depth) -> jax.Array:
  """The end-to-end map W_1 ... W_{depth-1} W_out, (N, N_out); stack layers >= depth - 1 are
  skipped (depth may be traced)."""
  stack = params["stack"]
  width = params["out"].shape[0]

  def layer(product, inputs):
    w, l = inputs
    return jnp.where(l < depth - 1, product @ w, product), None

  product, _ = lax.scan(layer, jnp.eye(width, dtype=params["out"].dtype),
                        (stack, jnp.arange(stack.shape[0])))
  return product @ params["out"]


def relative_error(params: dict, depth, teacher) -> jax.Array:
  """||W_1 ... W_out - M||_F^2 / ||M||_F^2."""
  return jnp.sum(jnp.square(deep_linear_map(params, depth) - teacher)) / jnp.sum(
      jnp.square(teacher))


def train_deep_linear(params: dict, teacher, depth, lr0, steps: int) -> jax.Array:
  """Full-batch gradient descent on 1/2 ||W_1 ... W_out - M||_F^2 at lr = lr0 / depth.

  Returns:
    (steps + 1,) relative errors; entry t is the error after t steps (0: at init).
  """
  tx = optax.sgd(lr0 / depth)

  def loss(p):
    return 0.5 * jnp.sum(jnp.square(deep_linear_map(p, depth) - teacher))

  def step(carry, _):
    p, opt_state = carry
    grads = jax.grad(loss)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    return (p, opt_state), relative_error(p, depth, teacher)

  _, curve = lax.scan(step, (params, tx.init(params)), None, length=steps)
  return jnp.concatenate([relative_error(params, depth, teacher)[None], curve])


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _init_linear_members(init_index, member_seed, max_depth, width, out_dim, inits, seed):
  # lax.map, not vmap: vmapped, the orthogonal init is one batched QR, and jaxlib >= 0.9.1's
  # batched LAPACK calls on CPU can deadlock (every XLA worker idle, the caller waiting; the
  # defect and its repro are in isometry.linalg). lax.map makes one QR per call, and init is a
  # small cost.
  def one(args):
    index, s = args
    k_teacher, k_net = jax.random.split(_member_key(seed, s))
    return (linear_teacher(k_teacher, width, out_dim),
            init_deep_linear(k_net, index, max_depth, width, out_dim, inits))
  return lax.map(one, (init_index, member_seed))


@functools.partial(jax.jit, static_argnums=(4,))
def _train_linear_members(params, teacher, depth, lr0, steps):
  return jax.vmap(train_deep_linear, in_axes=(0, 0, 0, None, None))(params, teacher, depth,
                                                                    lr0, steps)


def deep_linear_sweep(config: StudyConfig) -> np.ndarray:
  """Relative-error curves of every (depth, init, seed) member, trained in one vmapped jit.

  The teacher and the weights of member (depth, init, s) come from fold_in(key(seed), s):
  every depth and init of a seed learns the same M, and the inits of one seed share keys.

  Returns:
    float (len(linear_depths), len(inits), seeds, linear_steps + 1).
  """
  depths, inits = config.linear_depths, config.inits
  grid = np.array([(d, i, s) for d in depths for i in range(len(inits))
                   for s in range(config.seeds)], np.int32)
  teacher, params = _init_linear_members(
      jnp.asarray(grid[:, 1]), jnp.asarray(grid[:, 2]), max(depths), config.linear_width,
      config.linear_out, inits, config.seed)
  curves = _train_linear_members(params, teacher, jnp.asarray(grid[:, 0]),
                                 jnp.float32(config.linear_lr), config.linear_steps)
  return np.asarray(curves, np.float64).reshape(len(depths), len(inits), config.seeds, -1)


# ----------------------------------------------------------------------------------------------
# Part 2: deep tanh networks at the critical point.


def prepare_inputs(images, mean_image, q_star: float, sigma_w: float, sigma_b: float):
  """Flattened, centered images scaled so that the first layer starts at the fixed point.

  With input kernel entries of variance sigma_w^2 / D (Gaussian) or sigma_w times D-dimensional
  orthonormal columns, h_1 = x W + b has per-unit variance sigma_w^2 ||x||^2 / D + sigma_b^2;
  each image is scaled to ||x||^2 = D (q* - sigma_b^2) / sigma_w^2, which makes it q*.

  Args:
    images: (n, ...) images.
    mean_image: the training-set mean image (same trailing shape).
    q_star, sigma_w, sigma_b: the critical point.

  Returns:
    float32 (n, D).
  """
  x = (np.asarray(images, np.float64) - np.asarray(mean_image, np.float64)).reshape(
      len(images), -1)
  dim = x.shape[1]
  target = np.sqrt(dim * (q_star - sigma_b**2)) / sigma_w
  return (x * (target / np.linalg.norm(x, axis=1, keepdims=True))).astype(np.float32)


def train_tanh(params: dict, x, y, depth: int, lr0, steps: int) -> jax.Array:
  """Full-batch gradient descent on the mean cross-entropy at lr = lr0 / (depth + 1).

  Returns:
    (steps + 1,) training losses; entry t after t steps.
  """
  tx = optax.sgd(lr0 / (depth + 1))

  def loss(p):
    logits = models.mlp_apply(p, x, depth, "tanh")
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  def step(carry, _):
    p, opt_state = carry
    value, grads = jax.value_and_grad(loss)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), value

  (final, _), curve = lax.scan(step, (params, tx.init(params)), None, length=steps)
  return jnp.concatenate([curve, loss(final)[None]])


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 9))
def _init_tanh_members(init_index, member_seed, depth, input_dim, width, inits, seed, sigma_w,
                       sigma_b, num_classes):
  def one(args):
    index, s = args
    kernel_init = models.mixed_initializer(inits, index, sigma_w)
    return models.init_mlp(_member_key(seed, s), input_dim, num_classes, depth, width,
                           kernel_init, sigma_b)
  return lax.map(one, (init_index, member_seed))  # lax.map: see _init_linear_members.


@functools.partial(jax.jit, static_argnums=(3, 5))
def _train_tanh_members(params, x, y, depth, lr0, steps):
  return jax.vmap(train_tanh, in_axes=(0, None, None, None, None, None))(params, x, y, depth,
                                                                          lr0, steps)


def load_tanh_data(config: StudyConfig):
  """(x, y) of part 2: the first tanh_examples training images, prepared for the critical point.

  Raises:
    data.DataUnavailableError: the dataset cannot be read here, or has fewer than
      tanh_examples training images.
  """
  smoke = harness.Synthetic(max(config.tanh_examples, 16), 32, 32, side=6)
  dataset = config.images(smoke=smoke)
  if len(dataset.train_x) < config.tanh_examples:
    raise data.DataUnavailableError(f"tanh_examples={config.tanh_examples} > "
                                    f"{len(dataset.train_x)} training examples")
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", config.q_star))
  x = prepare_inputs(dataset.train_x[:config.tanh_examples], dataset.train_x.mean(axis=0),
                     config.q_star, sigma_w, sigma_b)
  return x, np.asarray(dataset.train_y[:config.tanh_examples], np.int32)


def tanh_sweep(config: StudyConfig, x, y) -> np.ndarray:
  """Loss curves of every (depth, init, seed) member: one vmapped program per depth.

  Returns:
    float (len(tanh_depths), len(inits), seeds, tanh_steps + 1).
  """
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", config.q_star))
  inits = config.inits
  index = jnp.asarray(np.repeat(np.arange(len(inits)), config.seeds), jnp.int32)
  member_seed = jnp.asarray(np.tile(np.arange(config.seeds), len(inits)), jnp.int32)
  x, y = jnp.asarray(x), jnp.asarray(y)
  curves = []
  for depth in config.tanh_depths:
    start = time.perf_counter()
    params = _init_tanh_members(index, member_seed, depth, x.shape[1], config.tanh_width, inits,
                                config.seed, jnp.float32(sigma_w), jnp.float32(sigma_b), 10)
    curve = np.asarray(_train_tanh_members(params, x, y, depth, jnp.float32(config.tanh_lr),
                                           config.tanh_steps), np.float64)
    curves.append(curve.reshape(len(inits), config.seeds, -1))
    logging.info("tanh depth %d: final loss %s (%.1fs)", depth,
                 np.round(curves[-1][..., -1].mean(axis=-1), 4), time.perf_counter() - start)
  return np.stack(curves)


# ----------------------------------------------------------------------------------------------
# Steps to threshold.


def steps_to_threshold(curves, threshold: float) -> np.ndarray:
  """First t with curves[..., t] <= threshold (t = steps taken); inf where never.

  Non-finite losses (divergence) count as never reaching it afterwards.
  """
  curves = np.asarray(curves, np.float64)
  below = np.isfinite(curves) & (curves <= threshold)
  return np.where(below.any(axis=-1), below.argmax(axis=-1), np.inf)


def summarize_steps(steps, depths, inits) -> list:
  """Per (depth, init): steps per seed, how many reached, and mean +- 95% CI of log10 steps.

  Args:
    steps: (len(depths), len(inits), seeds) from `steps_to_threshold`.

  Returns:
    [{"depth", "init", "steps": [... None where not reached], "reached", "seeds",
      "log10_steps_mean", "log10_steps_ci95" (None unless every seed reached),
      "median_steps" (None if fewer than half reached)}].
  """
  steps = np.asarray(steps, np.float64)
  out = []
  for d, depth in enumerate(depths):
    for i, init in enumerate(inits):
      row = steps[d, i]
      reached = np.isfinite(row)
      entry = {"depth": int(depth), "init": init,
               "steps": [int(s) if np.isfinite(s) else None for s in row],
               "reached": int(reached.sum()), "seeds": len(row),
               "log10_steps_mean": None, "log10_steps_ci95": None,
               "median_steps": float(np.median(row)) if np.isfinite(np.median(row)) else None}
      if reached.all():
        mean, half = stats.mean_ci(np.log10(np.maximum(row, 1.0)))
        entry["log10_steps_mean"], entry["log10_steps_ci95"] = float(mean), float(half)
      out.append(entry)
  return out


def _log_steps_subsample(num_steps: int, num: int = 120) -> np.ndarray:
  """Steps 0..num_steps at roughly log spacing (for curves in the JSON)."""
  grid = np.unique(np.round(np.geomspace(1, num_steps + 1, num)).astype(int) - 1)
  return grid[grid <= num_steps]


def _curve_summary(curves, depths, inits) -> dict:
  """Mean and 95% CI over seeds of log10 of the curves, on a log-spaced subset of steps."""
  steps = _log_steps_subsample(curves.shape[-1] - 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.log10(np.where(np.isfinite(curves) & (curves > 0), curves, np.nan))[..., steps]
  mean, half = stats.mean_ci(logs, axis=2)
  return {"steps": steps, "by_depth": [
      {"depth": int(depth), "init": init, "log10_mean": mean[d, i], "log10_ci95": half[d, i]}
      for d, depth in enumerate(depths) for i, init in enumerate(inits)]}


# ----------------------------------------------------------------------------------------------
# Figures.

_COLORS = plots.WEIGHT_COLORS


def plot_steps(result: dict):
  """B1: steps to threshold against depth, both tasks, mean of log10 over seeds +- 95% CI."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, task in zip(axes, ("linear", "tanh")):
    part = result[task]
    budget = part["max_steps"]
    for k, init in enumerate(part["inits"]):
      rows = [e for e in part["summary"] if e["init"] == init]
      depths = np.array([e["depth"] for e in rows])
      done = np.array([e["log10_steps_mean"] is not None for e in rows])
      mean = np.array([e["log10_steps_mean"] if e["log10_steps_mean"] is not None else np.nan
                       for e in rows])
      half = np.array([e["log10_steps_ci95"] if e["log10_steps_ci95"] is not None else np.nan
                       for e in rows])
      color = _COLORS.get(init, "gray")
      ax.plot(depths[done], 10**mean[done], "o-", color=color, label=f"{init}")
      ax.fill_between(depths[done], 10**(mean - half)[done], 10**(mean + half)[done],
                      color=color, alpha=0.25)
      for depth, e in zip(depths[~done], [r for r, ok in zip(rows, done) if not ok]):
        shift = 2.0**(0.12 * (k - 0.5))  # side by side where both inits miss the budget
        ax.plot([depth * shift], [budget], "^", color=color, ms=8)
        ax.annotate(f"{e['reached']}/{e['seeds']}", (depth * shift, budget),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7,
                    color=color)
    ax.axhline(budget, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(part["depth_label"])
    ax.set_ylabel(f"steps until {part['loss_label']} <= {part['threshold']:g}")
    ax.set_title(part["title"], fontsize=9)
    ax.legend(fontsize=8, title="triangle: not reached in budget\n(count reached)",
              title_fontsize=7)
  fig.suptitle("Steps to threshold vs depth: mean of log10 over seeds, band 95% t-interval",
               fontsize=10)
  fig.tight_layout()
  return fig


def plot_curves(result: dict, num_depths: int = 4):
  """B2: loss curves for a few depths (log-log), both tasks, per init."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, task in zip(axes, ("linear", "tanh")):
    part = result[task]
    depths = sorted({e["depth"] for e in part["curves"]["by_depth"]})
    shown = [depths[int(round(k))] for k in np.linspace(0, len(depths) - 1,
                                                        min(num_depths, len(depths)))]
    steps = np.asarray(part["curves"]["steps"])
    styles = ["-", "--", "-.", ":"]
    for e in part["curves"]["by_depth"]:
      if e["depth"] not in shown:
        continue
      mean, half = np.asarray(e["log10_mean"]), np.asarray(e["log10_ci95"])
      color = _COLORS.get(e["init"], "gray")
      style = styles[shown.index(e["depth"]) % len(styles)]
      ax.plot(steps + 1, 10**mean, style, color=color, lw=1.3,
              label=f"{e['init']}, {part['depth_label'].split(' (')[0]} {e['depth']}")
      ax.fill_between(steps + 1, 10**(mean - half), 10**(mean + half), color=color, alpha=0.15)
    ax.axhline(part["threshold"], color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step + 1")
    ax.set_ylabel(part["loss_label"])
    ax.set_title(part["title"], fontsize=9)
    ax.legend(fontsize=7, ncol=2)
  fig.suptitle("Training curves (geometric mean over seeds, band 95% CI); dotted: threshold",
               fontsize=10)
  fig.tight_layout()
  return fig


FIGURES = {"B1_steps_vs_depth.png": plot_steps, "B2_loss_curves.png": plot_curves}


def run(config: StudyConfig, out_dir: str, *, overwrite: bool = False) -> dict:
  """Runs both parts; writes convergence.json, curves.npz and the two figures into out_dir.

  Args:
    config: the study.
    out_dir: results folder.
    overwrite: replace a finished study in out_dir (else refused before any work).

  Returns:
    The JSON content: {"config", "linear": {...}, "tanh": {...}, "seconds"}.

  Raises:
    data.DataUnavailableError, train.SetupError: part 2's dataset cannot be read, or out_dir
      holds a finished study (before anything is written).
  """
  start = time.perf_counter()
  # The data first, so that missing data fails before any work.
  x, y = harness.start(out_dir, SUMMARY, overwrite, lambda: load_tanh_data(config))
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", config.q_star))

  t0 = time.perf_counter()
  linear_curves = deep_linear_sweep(config)
  linear_seconds = time.perf_counter() - t0
  linear_steps = steps_to_threshold(linear_curves, config.linear_threshold)
  t0 = time.perf_counter()
  tanh_curves = tanh_sweep(config, x, y)
  tanh_seconds = time.perf_counter() - t0
  tanh_steps = steps_to_threshold(tanh_curves, config.tanh_threshold)

  result = {
      "config": dataclasses.asdict(config),
      "linear": {
          "title": (f"deep linear (Saxe et al. 2014), N={config.linear_width}, "
                    f"N_out={config.linear_out},\nfull-batch GD, lr={config.linear_lr:g}/D"),
          "depth_label": "D (weight matrices)", "loss_label": "relative error",
          "threshold": config.linear_threshold, "max_steps": config.linear_steps,
          "inits": config.inits, "depths": config.linear_depths,
          "summary": summarize_steps(linear_steps, config.linear_depths, config.inits),
          "final_error_max": linear_curves[..., -1].max(axis=-1),
          "curves": _curve_summary(linear_curves, config.linear_depths, config.inits),
          "seconds": linear_seconds},
      "tanh": {
          "title": (f"tanh at chi=1 (q*={config.q_star:.4g}: sigma_w={sigma_w:.4f}, "
                    f"sigma_b={sigma_b:.4g}), width {config.tanh_width},\n"
                    f"{'synthetic' if config.synthetic else config.dataset} "
                    f"n={config.tanh_examples}, full-batch GD, lr={config.tanh_lr:g}/(depth+1)"),
          "depth_label": "depth (hidden layers)", "loss_label": "train cross-entropy",
          "threshold": config.tanh_threshold, "max_steps": config.tanh_steps,
          "inits": config.inits, "depths": config.tanh_depths,
          "sigma_w": sigma_w, "sigma_b": sigma_b,
          "dataset": "synthetic" if config.synthetic else config.dataset,
          "data_dir": config.train_data()["data_dir"],
          "summary": summarize_steps(tanh_steps, config.tanh_depths, config.inits),
          "final_loss_max": tanh_curves[..., -1].max(axis=-1),
          "curves": _curve_summary(tanh_curves, config.tanh_depths, config.inits),
          "seconds": tanh_seconds},
  }
  for task in ("linear", "tanh"):
    for e in result[task]["summary"]:
      logging.info("%s depth %d %s: steps %s", task, e["depth"], e["init"], e["steps"])
  result["seconds"] = time.perf_counter() - start
  if processes.is_writer():
    with io.atomic_path(os.path.join(out_dir, "curves.npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez_compressed(f, linear=linear_curves.astype(np.float32),
                            tanh=tanh_curves.astype(np.float32),
                            linear_depths=np.asarray(config.linear_depths),
                            tanh_depths=np.asarray(config.tanh_depths),
                            inits=np.asarray(config.inits))
  harness.save(out_dir, SUMMARY, result, FIGURES)
  logging.info("study B done in %.0fs: %s", result["seconds"], out_dir)
  return result
