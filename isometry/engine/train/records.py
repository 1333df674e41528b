"""What a run writes and reads back: metrics.json, spectra.npz, checkpoint.npz, status.json,
and the lock a live run holds on its folder (every file written atomically)."""
import dataclasses
import fcntl
import json
import math
import os
from typing import Optional

import jax
import numpy as np

from isometry import processes
from isometry.engine.train import sweep
from isometry.results import io
from isometry.results import stats


# JSON keeps the gradient norm through time at most at this many time steps (all of them in
# spectra.npz), so pixel-by-pixel runs (T = 784) keep metrics.json small.
MAX_JSON_TIME_STEPS = 64


CHECKPOINT = "checkpoint.npz"


# Every file a run writes into its out_dir (figures from `isometry.results.training_plots`).
RUN_FILES = ("config.json", "status.json", "metrics.json", "spectra.npz", CHECKPOINT,
             "singular_values.png", "curves.png", "gradients.png", "monitor.png")


# A live run holds an exclusive flock on this file; a run whose status.json says "running" but
# whose lock nobody holds was killed.
LOCK = ".lock"


def _finite_or_none(x) -> Optional[float]:
  x = float(x)
  return x if math.isfinite(x) else None


def _sv_summary(values: np.ndarray) -> dict:
  return {"mean": float(np.mean(values)), "std": float(np.std(values)),
          "min": float(np.min(values)), "max": float(np.max(values))}


def tracked_singular_values(config: sweep.TrainConfig, spectra: dict, member: int) -> np.ndarray:
  """The singular values summarised in metrics.json for one member, pooled into one vector.

  RNN: the recurrent kernel; LSTM: its four gate blocks; MLP: the input kernel and the active
  hidden kernels (layers l < depth).
  """
  if config.model in ("rnn", "lstm"):
    return np.ravel(spectra["recurrent"][member])
  depth = config.members[member].depth
  return np.concatenate([spectra["input"][member], np.ravel(spectra["hidden"][member][:depth - 1])])


def _time_indices(num_steps: int) -> np.ndarray:
  if num_steps <= MAX_JSON_TIME_STEPS:
    return np.arange(num_steps)
  return np.unique(np.round(np.linspace(0, num_steps - 1, MAX_JSON_TIME_STEPS)).astype(int))


def _record(config: sweep.TrainConfig, out: dict, i: int) -> dict:
  """One member's JSON entry for one epoch (or the initial point) from fetched outputs."""
  entry = {}
  for key in ("train_loss", "train_accuracy", "train_penalty", "val_loss", "val_accuracy"):
    if key in out:
      entry[key] = _finite_or_none(out[key][i])
  entry["singular_values"] = _sv_summary(tracked_singular_values(config, out["spectra"], i))
  if "grad_norm_through_time" in out:
    g = out["grad_norm_through_time"][i]
    entry["grad_norm_through_time"] = [_finite_or_none(v) for v in g[_time_indices(len(g))]]
  if "grad_norm_weights" in out:
    depth = config.members[i].depth
    weights = out["grad_norm_weights"][i]
    # Active layers only: the input kernel, hidden kernels 1..depth-1, the read-out.
    entry["grad_norm_by_layer"] = {
        "weights": [_finite_or_none(v) for v in np.concatenate([weights[:depth], weights[-1:]])],
        "activations": [_finite_or_none(v) for v in out["grad_norm_activations"][i][:depth]]}
  if "jacobian" in out:
    entry["jacobian"] = {k: _finite_or_none(v[i]) for k, v in out["jacobian"].items()}
  return entry


def strip(tree, num_members: int):
  """Fetches a (padded) member-major pytree to numpy and drops the padding members; where its
  arrays span processes, a collective that every process calls (`processes.to_host`)."""
  return jax.tree.map(lambda x: np.asarray(x)[:num_members], processes.to_host(tree))


def _flatten_dict(d: dict, prefix: str = "") -> dict:
  flat = {}
  for k, v in d.items():
    if isinstance(v, dict):
      flat.update(_flatten_dict(v, f"{prefix}{k}/"))
    else:
      flat[f"{prefix}{k}"] = np.asarray(v)
  return flat


def _unflatten_dict(flat: dict) -> dict:
  d = {}
  for k, v in flat.items():
    node = d
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return d


def _stack_history(history: list) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *history) if history else {}


def _unstack_history(stacked: dict, num_epochs: int) -> list:
  return [jax.tree.map(lambda x: x[e], stacked) for e in range(num_epochs)]


def _config_summaries(config: sweep.TrainConfig, test: Optional[dict],
                      diverged: np.ndarray) -> list:
  """Test accuracy per label over its seeds that did not diverge: mean and 95% t-interval
  half-width (None below two seeds), the seeds counted and the diverged ones left out."""
  if test is None:
    return []
  summaries = []
  for label, idx in labels(config).items():
    kept = [i for i in idx if not diverged[i]]
    values = np.asarray(test["accuracy"])[kept]
    mean, half = stats.mean_ci(values[None, :], axis=1) if kept else ([np.nan], [np.nan])
    summaries.append({"label": label, "seeds": len(idx), "diverged": len(idx) - len(kept),
                      "test_accuracy_mean": _finite_or_none(mean[0]),
                      "test_accuracy_ci95": _finite_or_none(half[0])})
  return summaries


def labels(config: sweep.TrainConfig) -> dict:
  groups = {}
  for i, m in enumerate(config.members):
    groups.setdefault(m.label, []).append(i)
  return groups


def metrics_json(config: sweep.TrainConfig, initial: dict, history: list, test: Optional[dict],
                  epoch_seconds: list, finished: bool) -> dict:
  """metrics.json; a diverged member keeps its history but reports no test metrics."""
  diverged = (np.asarray(history[-1]["diverged"], bool) if history
              else np.zeros(len(config.members), bool))
  members = []
  for i, m in enumerate(config.members):
    tested = test is not None and not diverged[i]
    entry = {
        "config": {**dataclasses.asdict(m), "penalty_gain": m.penalty_gain},
        "status": "diverged" if diverged[i] else ("done" if finished else "running"),
        "diverged_epoch": int(history[-1]["diverged_epoch"][i]) if diverged[i] else None,
        "initial": _record(config, initial, i),
        "epochs": [{"epoch": e + 1, **_record(config, h, i)} for e, h in enumerate(history)],
        "test_loss": _finite_or_none(test["loss"][i]) if tested else None,
        "test_accuracy": _finite_or_none(test["accuracy"][i]) if tested else None,
    }
    members.append(entry)
  metrics = {"members": members, "configs": _config_summaries(config, test, diverged),
             "epoch_seconds": epoch_seconds}
  if config.model != "mlp" and "grad_norm_through_time" in initial:
    metrics["grad_norm_time_steps"] = _time_indices(
        initial["grad_norm_through_time"].shape[-1]).tolist()
  return metrics


def save_spectra(path: str, config: sweep.TrainConfig, initial: dict, history: list) -> None:
  keep = ("spectra", "grad_norm_through_time", "grad_norm_weights", "grad_norm_activations",
          "jacobian")
  per_epoch = [{k: v for k, v in h.items() if k in keep} for h in [initial] + history]
  arrays = _flatten_dict(_stack_history(per_epoch))
  arrays["labels"] = np.array([m.label for m in config.members])
  arrays["seeds"] = np.array([m.seed for m in config.members])
  with io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


def _comparable(config_dict: dict) -> dict:
  """The config as compared on resume: all of it but the epoch count, which may grow."""
  return {k: v for k, v in config_dict.items() if k != "epochs"}


def save_checkpoint(path: str, config: sweep.TrainConfig, states, initial: dict, history: list,
                     epoch_seconds: list) -> None:
  # Without the padding members, so a run can resume on another number of devices.
  leaves = jax.tree.leaves(strip(states, len(config.members)))
  arrays = {f"state/{i}": x for i, x in enumerate(leaves)}
  arrays.update(_flatten_dict({"initial": initial}))
  if history:
    arrays.update(_flatten_dict({"history": _stack_history(history)}))
  arrays["epoch"] = np.array(len(history))
  arrays["epoch_seconds"] = np.array(epoch_seconds, np.float64)
  arrays["config"] = np.array(json.dumps(config.to_dict(), sort_keys=True))
  with io.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def check_checkpoint_config(path: str, config: sweep.TrainConfig) -> None:
  with np.load(path) as f:
    written = json.loads(str(f["config"]))
  # Fields added to sweep.TrainConfig since the checkpoint was written take their defaults, so older
  # runs still resume; through JSON both sides, so tuples and lists compare equal.
  defaults = {f.name: f.default for f in dataclasses.fields(sweep.TrainConfig)
              if f.default is not dataclasses.MISSING}
  known = {f.name for f in dataclasses.fields(sweep.TrainConfig)}
  written = {**defaults, **{k: v for k, v in written.items() if k in known}}
  current = json.loads(json.dumps(config.to_dict()))
  if _comparable(json.loads(json.dumps(written))) != _comparable(current):
    raise sweep.SetupError(f"{path} was written by a different config; remove it or drop resume")


def load_checkpoint(path: str, config: sweep.TrainConfig, states_like):
  """Reads a checkpoint into the structure (and padded member count) of `states_like`."""
  check_checkpoint_config(path, config)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  treedef = jax.tree.structure(states_like)
  num_padded = jax.tree.leaves(states_like)[0].shape[0]

  def pad(x):
    return np.concatenate([x, np.repeat(x[-1:], num_padded - len(x), axis=0)])

  states = jax.tree.unflatten(treedef, [pad(arrays[f"state/{i}"])
                                        for i in range(treedef.num_leaves)])
  nested = _unflatten_dict({k: v for k, v in arrays.items()
                            if k.startswith(("initial/", "history/"))})
  epochs = int(arrays["epoch"])
  history = _unstack_history(nested.get("history", {}), epochs)
  return states, nested["initial"], history, list(arrays["epoch_seconds"])


def held_by_a_live_run(out_dir: str) -> bool:
  """Whether a running process holds out_dir's lock (opening it read-only changes nothing)."""
  try:
    fd = os.open(os.path.join(out_dir, LOCK), os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
  except OSError:
    return True
  finally:
    os.close(fd)


def read_status(out_dir: str) -> Optional[dict]:
  """The status.json of the run in out_dir, or None where there is none.

  A run whose status says "running" while no process holds its lock was killed (SIGKILL, a
  crash, a lost machine): it is reported as "interrupted", with "killed": True, like a run
  stopped by a signal; `run(..., resume=True)` continues it from its last checkpoint.
  """
  path = os.path.join(out_dir, "status.json")
  if not os.path.isfile(path):
    return None
  status = io.read_json(path)
  if status.get("status") == "running" and not held_by_a_live_run(out_dir):
    status = {**status, "status": "interrupted", "killed": True}
  return status


def describe(status: Optional[dict]) -> str:
  if status is None:
    return "an earlier run's files"
  done, total = status.get("epochs_done"), status.get("epochs")
  how = " (killed: its status said running, and no process holds it)" if status.get(
      "killed") else ""
  return f"a {status['status']} run ({done} of {total} epochs){how}"


class RunLock:
  """Holds an exclusive flock on out_dir/.lock while a run writes there."""

  def __init__(self, out_dir: str):
    self._path = os.path.join(out_dir, LOCK)
    self._fd = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self._path), exist_ok=True)
    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self._fd)
      raise sweep.SetupError(f"out_dir {os.path.dirname(self._path)!r} is in use: another process "
                       f"is training there") from None
    return self

  def __exit__(self, *exc):
    os.close(self._fd)   # Closing the descriptor releases the lock.
    return False
