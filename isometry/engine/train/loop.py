"""The run loop: check the folder, train epoch by epoch, write after each, stop on a signal.

`run` validates out_dir before any work (a run there is never replaced silently), holds its
lock, compiles the sweep once, then per epoch calls `run_epoch`, logs one line and writes the
records; SIGINT/SIGTERM stop it after the epoch (a second signal at once), and a watchdog logs a
run that makes no progress.

Where the program spans processes (`isometry.processes`), every process runs `run` with the same
arguments: they check that they agree (config, what out_dir holds) before any work, each feeds
the members of its own devices, all of them fetch the results, and only process 0 writes
out_dir and holds its lock; a stop asked on any process stops all of them after the epoch.
"""
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable, NamedTuple, Optional

from absl import logging
import numpy as np

from isometry import processes
from isometry.engine.train import feed
from isometry.engine.train import programs
from isometry.engine.train import records
from isometry.engine.train import sweep
from isometry.results import io
from isometry.results import stats


class StopRequest:
  """SIGINT/SIGTERM handler: the first signal asks to stop after this epoch, a second stops now."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __call__(self, signum, frame):
    del frame
    if self.signal is not None:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    logging.warning("%s: stopping after this epoch (send it again to stop now)", self.signal)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGINT, signal.SIGTERM):
        self._previous[s] = signal.signal(s, self)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


# The no-progress rule of `run` (module constants, so a test can shorten them): a warning when
# nothing finished for max(WATCHDOG_FACTOR x the last epoch's seconds, WATCHDOG_MIN_SECONDS).
WATCHDOG_FACTOR = 10.0


WATCHDOG_MIN_SECONDS = 300.0


class Watchdog:
  """Warns in the log when a run stops making progress; a daemon thread that only reads clocks.

  The run calls `progress(next_step, expected_seconds)` each time it finishes something (data
  and compilation, a measurement, an epoch). When `next_step` has not finished after
  `limit(expected_seconds)` seconds, the thread logs one warning -- and another each time that
  span passes again -- with the process's CPU time since the previous warning (near zero: every
  thread idle, as in a deadlock) and the Python stack of the waiting thread. It never stops the
  run: a slow epoch is no error, and a deadlocked XLA program cannot be interrupted from Python
  anyway. Use as a context manager; the thread ends with the block.
  """

  def __init__(self, name: str):
    self._name = name
    self._owner = threading.get_ident()
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="isometry-watchdog", daemon=True)
    self.progress("loading the data, compiling and initializing", None)

  @staticmethod
  def limit(expected_seconds: Optional[float]) -> float:
    """Seconds without progress before a warning: max(WATCHDOG_FACTOR x expected_seconds,
    WATCHDOG_MIN_SECONDS), and WATCHDOG_MIN_SECONDS alone when nothing is known yet."""
    if expected_seconds is None:
      return WATCHDOG_MIN_SECONDS
    return max(WATCHDOG_FACTOR * expected_seconds, WATCHDOG_MIN_SECONDS)

  def progress(self, next_step: str, expected_seconds: Optional[float]) -> None:
    with self._lock:
      self._step, self._expected = next_step, expected_seconds
      self._since = self._window = time.monotonic()
      self._window_cpu = time.process_time()
      self._warnings = 0

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    return False

  def _watch(self):
    while not self._done.wait(min(5.0, WATCHDOG_MIN_SECONDS / 10)):
      with self._lock:
        now, cpu_now = time.monotonic(), time.process_time()
        waited = now - self._since
        if waited < (self._warnings + 1) * self.limit(self._expected):
          continue
        self._warnings += 1
        step, expected = self._step, self._expected
        # CPU over the span since the last warning (the first span includes any compilation).
        window, cpu = now - self._window, cpu_now - self._window_cpu
        self._window, self._window_cpu = now, cpu_now
      logging.warning(
          "%s: no progress for %.0f s waiting on %s (expected %s; warning after max(%g x that, "
          "%g s)); the process used %.1f s of CPU in the last %.0f s%s. Waiting in:\n%s",
          self._name, waited, step,
          (f"about {expected:.1f} s, the last epoch's time" if expected is not None
           else "unknown before the first epoch"),
          WATCHDOG_FACTOR, WATCHDOG_MIN_SECONDS, cpu, window,
          (" -- nearly idle, as in a deadlock (see benchmarks/xla_cpu_hang_repro.py)"
           if cpu < 0.05 * window else ""),
          self._stack())

  def _stack(self) -> str:
    """The waiting thread's Python stack from `_run` inward (all of it if `_run` is not on it)."""
    frame = sys._current_frames().get(self._owner)  # pylint: disable=protected-access
    if frame is None:
      return "(the thread is gone)"
    frames = traceback.extract_stack(frame)
    starts = [i for i, f in enumerate(frames) if f.name == "_run" and f.filename == __file__]
    return "".join(traceback.format_list(frames[starts[0] if starts else 0:]))


def initial_params(config: sweep.TrainConfig, dataset=None):
  """The members' parameters at init exactly as `run` draws them (the sweep's own compiled init,
  on the data shaped as for training).

  Args:
    config: the sweep.
    dataset: as in `run` (default: config.dataset).

  Returns:
    A pytree of numpy arrays, member axis first, in the order of config.members.
  """
  host = feed.prepare_arrays(config, dataset)
  program = programs.make_train(config, host)
  states = program.init(programs.padded_hparams(config, program))
  return records.strip(states["params"], len(config.members))


def _progress_line(config: sweep.TrainConfig, epoch: int, seconds: float, steps: int,
                   out: dict) -> str:
  """Per label, means over its seeds of train loss, val accuracy and the singular-value range."""
  parts = [f"epoch {epoch}/{config.epochs} {seconds:.1f}s "
           f"({1e3 * seconds / steps:.1f} ms/step, {len(config.members)} members)"]
  for label, idx in records.labels(config).items():
    sv = [records.tracked_singular_values(config, out["spectra"], i) for i in idx]
    with np.errstate(all="ignore"):
      loss = np.nanmean(out["train_loss"][idx]) if np.any(np.isfinite(out["train_loss"][idx])) \
          else float("nan")
    diverged = int(np.sum(out["diverged"][idx]))
    parts.append(f"{label}: loss {loss:.4f} val_acc {np.mean(out['val_accuracy'][idx]):.4f} "
                 f"sv [{np.mean([s.min() for s in sv]):.3f}, {np.mean([s.max() for s in sv]):.3f}]"
                 + (f" diverged {diverged}/{len(idx)}" if diverged else ""))
  return " | ".join(parts)


def _check_out_dir(config: sweep.TrainConfig, out_dir: str, resume: bool, overwrite: bool) -> bool:
  """Validates out_dir before any work; True where the run continues from its checkpoint.

  Raises:
    SetupError: out_dir is a file; another process runs there; it holds a run and neither
      `resume` nor `overwrite` says what to do with it (nothing is changed then); or `resume`
      meets a checkpoint of another config.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise sweep.SetupError(f"out_dir {out_dir!r} is a file, not a folder")
  if records.held_by_a_live_run(out_dir):
    raise sweep.SetupError(f"out_dir {out_dir!r} is in use: another process is training there")
  status = records.read_status(out_dir)
  holds_a_run = status is not None or any(
      os.path.exists(os.path.join(out_dir, name)) for name in ("metrics.json", records.CHECKPOINT))
  checkpoint = os.path.join(out_dir, records.CHECKPOINT)
  if resume and os.path.exists(checkpoint):
    records.check_checkpoint_config(checkpoint, config)
    return True
  if not holds_a_run or overwrite:
    return False
  if resume:
    raise sweep.SetupError(
        f"out_dir {out_dir!r} holds {records.describe(status)} but no {records.CHECKPOINT} to "
        f"resume from: start over with --overwrite, or choose another out_dir")
  raise sweep.SetupError(
      f"out_dir {out_dir!r} holds {records.describe(status)}: continue it with --resume, "
      f"start over with --overwrite, or choose another out_dir")


class RunResult(NamedTuple):
  """What `run` returns, so that nothing needs to read the run's files back."""
  status: str
  metrics: dict
  out_dir: str


def run(config: sweep.TrainConfig, out_dir: str, *, resume: bool = False, overwrite: bool = False,
        dataset=None, callback: Optional[Callable[[int, dict], bool]] = None, devices=None,
        plots: bool = True) -> RunResult:
  """Trains the sweep `config`, writing results to `out_dir` after every epoch.

  A folder that holds a run is never silently replaced: with neither `resume` nor `overwrite`
  the call stops before any work, changing nothing.

  Args:
    config: the sweep.
    out_dir: results folder (created).
    resume: continue from out_dir/checkpoint.npz if it exists (an interrupted run, also one
      that was killed; or a finished one whose `epochs` the config raises); the config must be
      the same but for `epochs`. Without a checkpoint the run starts afresh.
    overwrite: replace a run found in out_dir (without `resume`, or where it cannot resume).
    dataset: optional preloaded data (see `feed.prepare_arrays`); default loads config.dataset.
    callback: called as callback(epoch, epoch_outputs) after each epoch's files are written;
      returning True stops the run as an interruption would (status "interrupted").
    devices: devices of the member mesh (default: every process's devices, `jax.devices()`).
    plots: write the figures of `isometry.results.training_plots` at the end.

  Across processes (`isometry.processes.initialize` first), every process calls `run` with the
  same arguments; process 0 alone writes out_dir, which every process reads to resume (on
  several hosts it must be one shared folder), and every process returns the same RunResult
  once the files are written.

  Returns:
    `RunResult`: the status ("done", "diverged" when every member diverged, or "interrupted"),
    the final metrics.json content and out_dir.

  Raises:
    SetupError: before anything is written: out_dir is a file or in use by another run, holds
      a run and neither resume nor overwrite is set, holds a checkpoint of another config;
      bad data for this config (missing or corrupt files, too few examples); across processes,
      any of these on any process, or processes that disagree (`_agree_across_processes`).

  A run that makes no progress says so in its log (`Watchdog`): when no epoch (or the
  measurement before the first, or the test measurement after the last) has finished for
  max(WATCHDOG_FACTOR x the last epoch's time, WATCHDOG_MIN_SECONDS) seconds -- 10x and 300 s;
  300 s alone before the first epoch, which includes compilation -- it logs a warning with the
  CPU time used meanwhile and the Python stack, and again each time that span passes again.
  """
  problem = None
  try:
    resume = _check_out_dir(config, out_dir, resume, overwrite)
    try:
      host = feed.prepare_arrays(config, dataset)
    except ValueError as e:
      raise sweep.SetupError(str(e)) from e
  except sweep.SetupError as e:
    if processes.count() == 1:
      raise
    problem = str(e)
  _agree_across_processes(config, out_dir, resume, problem)
  writer = processes.is_writer()
  with records.RunLock(out_dir) if writer else contextlib.nullcontext():
    if not resume and writer:
      for name in records.RUN_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
          os.remove(os.path.join(out_dir, name))
    with Watchdog(out_dir) as watchdog:
      result = _train(config, out_dir, host, watchdog, resume, callback, devices, plots)
  # Every process returns once process 0 has written the run's last file.
  processes.barrier("isometry.engine.train.run")
  return result


# Longest message of a process's setup error that the others are told (characters).
_PROBLEM_CHARS = 600


def _agree_across_processes(config: sweep.TrainConfig, out_dir: str, resume: bool,
                            problem: Optional[str]) -> None:
  """Where the program spans processes: raises the same SetupError on every process when any
  process met a setup `problem` or when they disagree on the config (its hash), on whether
  out_dir holds a run to resume, or on the checkpoint they would resume from. Nothing on one
  process.
  """
  if processes.count() == 1:
    return
  checkpoint = os.path.join(out_dir, records.CHECKPOINT)
  mine = {"problem": problem and problem[:_PROBLEM_CHARS],
          "config": processes.fingerprint(config.to_dict()),
          "resume": bool(resume) and problem is None,
          "checkpoint": processes.file_digest(checkpoint) if resume and problem is None else ""}
  every = [json.loads(text) for text in processes.allgather_text(json.dumps(mine))]
  for index, state in enumerate(every):
    if state["problem"]:
      raise sweep.SetupError(f"process {index}: {state['problem']}")
  shared = " (on several hosts out_dir must be one shared folder)"
  for key, what in (("config", "the sweep (a hash of its TrainConfig)"),
                    ("resume", "whether out_dir holds a run to resume" + shared),
                    ("checkpoint", "the checkpoint in out_dir" + shared)):
    message = processes.disagreement([state[key] for state in every], what)
    if message:
      raise sweep.SetupError(message)


def _train(config: sweep.TrainConfig, out_dir: str, host: feed.Arrays, watchdog: Watchdog,
           resume: bool, callback, devices, plots: bool) -> RunResult:
  """The body of `run`, with out_dir checked and locked and the data on the host;
  `watchdog.progress` marks each finished step."""
  paths = {name: os.path.join(out_dir, name) for name in
           ("config.json", "status.json", "metrics.json", "spectra.npz", records.CHECKPOINT)}
  program = programs.make_train(config, host, devices)
  num_members = len(config.members)
  steps = host.train_x.shape[0] // config.batch_size

  writer = processes.is_writer()
  arrays = processes.put(host, program.replicated)
  states = program.init(programs.padded_hparams(config, program))

  if writer:
    os.makedirs(out_dir, exist_ok=True)
    io.write_json(paths["config.json"], config.to_dict())
  if resume:
    # Every process reads the checkpoint (`_agree_across_processes` checked it is the same file).
    states, initial, history, epoch_seconds = records.load_checkpoint(paths[records.CHECKPOINT],
                                                                      config, states)
    states = processes.put(states, program.member_sharding)
    logging.info("resuming %s from epoch %d", out_dir, len(history))
  else:
    watchdog.progress("the initial measurement", None)
    initial = records.strip(program.measure(states, arrays.val, arrays.probe_x, arrays.probe_y),
                     num_members)
    initial["val_loss"] = initial.pop("loss")
    initial["val_accuracy"] = initial.pop("accuracy")
    history, epoch_seconds = [], []
  # The divergence rule's reference, padded like the members.
  reference = np.asarray(initial["val_loss"], np.float32)
  initial_loss = processes.put(
      np.concatenate([reference, np.repeat(reference[-1:], program.num_padded - num_members)]),
      program.member_sharding)

  def write(status: str, test=None, **extra):
    finished = status in ("done", "diverged")
    metrics = records.metrics_json(config, initial, history, test, epoch_seconds, finished)
    if not writer:
      return metrics
    io.write_json(paths["metrics.json"], metrics)
    records.save_spectra(paths["spectra.npz"], config, initial, history)
    diverged = [m["config"]["label"] + f" seed {m['config']['seed']}"
                for m in metrics["members"] if m["status"] == "diverged"]
    io.write_json(paths["status.json"], {
        "status": status, "epochs_done": len(history), "epochs": config.epochs,
        "diverged_members": diverged, "num_members": num_members,
        "num_devices": len(program.member_sharding.mesh.devices.flat),
        "num_processes": processes.count(),
        "steps_per_epoch": steps, "epoch_seconds": epoch_seconds, **extra})
    return metrics

  status = "running"
  with StopRequest() as stop:
    try:
      for epoch in range(len(history), config.epochs):
        watchdog.progress(f"epoch {epoch + 1}", epoch_seconds[-1] if epoch_seconds else None)
        start = time.perf_counter()
        states, out = program.run_epoch(states, initial_loss, arrays,
                                        processes.put(np.int32(epoch), program.replicated))
        out = records.strip(out, num_members)
        seconds = time.perf_counter() - start
        history.append(out)
        epoch_seconds.append(seconds)
        write("running")
        host_states = records.strip(states, num_members)
        if writer:
          records.save_checkpoint(paths[records.CHECKPOINT], config, host_states, initial,
                                  history, epoch_seconds)
        logging.info(_progress_line(config, epoch + 1, seconds, steps, out))
        asked = callback is not None and callback(epoch + 1, out)
        # A stop asked on any process (callback or signal) stops every one after this epoch.
        if processes.any_process(asked or stop.signal is not None):
          status = "interrupted"
          break
        if np.all(out["diverged"]):
          logging.warning("every member diverged; stopping")
          break
    except KeyboardInterrupt:
      status = "interrupted"

  if status == "interrupted":
    metrics = write("interrupted")
    logging.info("interrupted after %d epochs; continue with --resume (resume=True)",
                 len(history))
  else:
    watchdog.progress("the test measurement", epoch_seconds[-1] if epoch_seconds else None)
    test = records.strip(program.measure(states, arrays.test, arrays.probe_x, arrays.probe_y),
                  num_members)
    all_diverged = bool(history) and bool(np.all(history[-1]["diverged"]))
    status = "diverged" if all_diverged else "done"
    metrics = write(status, test=test)
    for summary in metrics["configs"]:
      nan_if_none = lambda x: float("nan") if x is None else x
      kept = summary["seeds"] - summary["diverged"]
      logging.info("%s: test accuracy %s%s", summary["label"],
                   stats.format_interval(nan_if_none(summary["test_accuracy_mean"]),
                                         nan_if_none(summary["test_accuracy_ci95"]), kept),
                   f"; {summary['diverged']} diverged seeds left out" if summary["diverged"]
                   else "")
  if plots and writer:
    watchdog.progress("the plots", None)
    try:
      from isometry.results import training_plots  # Deferred: matplotlib takes a second to import.
      training_plots.plot_run(out_dir)
    except Exception:  # pylint: disable=broad-except
      # The results are on disk; a failing figure must not turn a finished run into a failed one.
      logging.exception("plotting %s failed", out_dir)
  return RunResult(status, metrics, out_dir)
