#!/usr/bin/env python3
"""The GPU suite: three measurements that want an accelerator, in one command of at most ~10 min.

  (a) Sweep scaling. Member-steps per second of K = 1, 8, 64 vmapped members of the row RNN
      (hidden 128, batch 128, T = 28 steps of 28 pixels, orthogonal init, SO penalty, Adam)
      against K separate runs of the one-member program, by `benchmarks/sweep_scaling.py`
      (imported, run with these sizes). Its inputs are uniform random rows of the Fashion-MNIST
      shape: the timed program does not depend on pixel values. Target: at K = 64 the sweep
      trains at least 6x the member-steps per second of one member run alone (the `ratio`).
  (b) Study C at the paper's scale (Pennington, Schoenholz & Ganguli 2017, figures 5-6): tanh
      MLPs of width 400 and depth 200 (hidden layers), Haar-orthogonal and Gaussian kernels at
      chi = 1, against ReLU with He init, 3 seeds, on Fashion-MNIST; everything else is
      `isometry.studies.accuracy.StudyConfig`'s default (SGD 0.01, batch 128, 8 epochs, 8192
      training examples, 5000 validation), trained by `isometry.engine.train.run`.
  (c) The pixel-by-pixel (T = 784) RNN members of study E (`isometry.studies.benefit`: orthogonal
      recurrent kernel, with and without the SO penalty, 5 seeds, its defaults), trained until
      the validation accuracy stops rising: early stopping with patience 10 (`StopRule`: stop
      once every member has gone 10 epochs without a validation accuracy above its best so far),
      at most 200 epochs.

Parts b and c also stop on a time budget (--budget_b_s, --budget_c_s, each cut so that the
suite ends within --total_s, 570 s by default; the JSON says which rule stopped them); a stopped
run is then finished at the epochs it did, so it has test numbers. Those are the last epoch's,
not the best epoch's (runs keep no parameters of earlier epochs).

Writes to --out_dir (default results/gpu): suite.json (devices, jax version, wall time per
part, each part's numbers; rewritten after each part), a_sweep_scaling.png,
b_learning_curves.png, c_learning_curves.png, and the training runs under a/, b/, c/
(checkpoints removed at the end of each part). A folder that holds a suite.json is refused
unless --overwrite.

Data: --data_dir, a folder with the four Fashion-MNIST IDX files (plain or .gz), read offline;
nothing here imports or downloads through TFDS. --smoke runs tiny sizes on synthetic images (or
on --data_dir's, the first 256 of each split): about a minute on 2 CPU cores, two to three when
other work loads them. Everything runs on what jax sees (JAX_PLATFORMS=cpu forces the CPU). On a
GPU machine, from the repository root:

  PYTHONPATH=. python benchmarks/gpu_suite.py --data_dir=/path/to/fashion-mnist --out_dir=results/gpu

and before it, as a pre-flight check of a minute or so:

  PYTHONPATH=. python benchmarks/gpu_suite.py --smoke --out_dir=/tmp/gpu_smoke
  PYTHONPATH=. python benchmarks/gpu_suite.py --parts=a --data_dir=... --out_dir=results/gpu_a
"""
import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common
from benchmarks import sweep_scaling

SUMMARY = "suite.json"
PARTS = ("a", "b", "c")
DEFAULT_OUT = os.path.join(common.REPO, "results", "gpu")
# Part a's target: at K = TARGET_K members, TARGET_RATIO x the member-steps/s of one member.
TARGET_K = 64
TARGET_RATIO = 6.0
# Part b: study C's inits at chi = 1 (the orthogonal off-critical one is left out).
B_INITS = ("orthogonal_critical", "gaussian_critical", "relu_he")
# Part b's tanh sweep (6 of the 9 members) may use this share of the part's budget.
TANH_SHARE = 2 / 3
# The studies' synthetic test sets hold 64 images (harness.Synthetic in their load_data).
SMOKE_EVAL_EXAMPLES = 64


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The suite's sizes.

  Attributes:
    ks, hidden, batch, iters, repeats: part a, as sweep_scaling.py's flags.
    width, depth, seeds, epochs: part b's MLPs (depth = hidden layers) and training length.
    folder_examples: where set, parts b and c keep only the first n examples of each split
      of a folder of images (smoke runs; synthetic images are used whole).
    max_epochs, patience: part c's early stopping.
    budget_b_s, budget_c_s: seconds parts b and c may take (`StopRule`).
    total_s: seconds the suite may take: a part that starts late gets less than its budget
      (part b leaves part c its budget). Part a is not cut; it is sized to take a minute or two.
  """
  ks: Tuple[int, ...] = (1, 8, TARGET_K)
  hidden: int = 128
  batch: int = 128
  iters: int = 50
  repeats: int = 3
  width: int = 400
  depth: int = 200
  seeds: int = 3
  epochs: int = 8
  folder_examples: Optional[int] = None
  max_epochs: int = 200
  patience: int = 10
  budget_b_s: float = 180.0
  budget_c_s: float = 210.0
  total_s: float = 570.0


FULL = Sizes()
SMOKE = Sizes(ks=(1, 2), hidden=8, batch=8, iters=2, repeats=2, width=16, depth=4, epochs=2,
              folder_examples=256, max_epochs=5, patience=2, budget_b_s=120.0, budget_c_s=120.0,
              total_s=600.0)


def log(message: str) -> None:
  print(f"[gpu_suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


class StopRule:
  """`train.run`'s callback: stops a sweep when its validation accuracy stops rising or its time
  is up.

  Patience P (None: off): stop once every member that has not diverged has gone P epochs without
  a validation accuracy strictly above its best so far. Deadline: stop when the next epoch
  would end after it, the next epoch estimated to last as long as the time between the last two
  calls (after the first epoch, whose time includes compilation, only a deadline already passed
  stops). Neither stops the run at max_epochs, where it ends by itself.

  Attributes:
    reason: None, "patience" or "budget": why the rule stopped the run.
    epochs: the last epoch seen.
    best, best_epoch: (members,) best validation accuracy so far and its epoch (0: never rose).
  """

  def __init__(self, name: str, deadline: float, patience: Optional[int] = None,
               max_epochs: Optional[int] = None, clock: Callable[[], float] = time.perf_counter):
    self.name, self.deadline, self.patience, self.max_epochs = name, deadline, patience, max_epochs
    self.clock = clock
    self.reason = None
    self.epochs = 0
    self.best = self.best_epoch = None
    self._last = None

  def __call__(self, epoch: int, out: dict) -> bool:
    import numpy as np
    now = self.clock()
    next_epoch_s = 0.0 if self._last is None else now - self._last
    self._last = now
    accuracy = np.asarray(out["val_accuracy"], np.float64)
    diverged = np.asarray(out["diverged"], bool)
    if self.best is None:
      self.best = np.full(accuracy.shape, -np.inf)
      self.best_epoch = np.zeros(accuracy.shape, np.int64)
    rose = accuracy > self.best  # NaN never rises
    self.best = np.where(rose, accuracy, self.best)
    self.best_epoch = np.where(rose, epoch, self.best_epoch)
    self.epochs = epoch
    rising = ~diverged
    if self.patience is not None:
      rising &= epoch - self.best_epoch < self.patience
    last = self.max_epochs is not None and epoch >= self.max_epochs
    if not last and self.patience is not None and not rising.any():
      self.reason = "patience"
    elif not last and now + next_epoch_s > self.deadline:
      self.reason = "budget"
    still = (f"{int(rising.sum())}/{len(rising)} members still rising, "
             if self.patience is not None else "")
    stop = f"; stop: {self.reason}" if self.reason else ""
    log(f"{self.name} epoch {epoch}: val accuracy mean {np.nanmean(accuracy):.4f} "
        f"(min {np.nanmin(accuracy):.4f}, max {np.nanmax(accuracy):.4f}), {still}"
        f"{self.deadline - now:.0f} s of budget left{stop}")
    return self.reason is not None

  def stopped_by(self) -> str:
    """Why training ended: the rule's reason, else "max_epochs", else "diverged" (every member)."""
    if self.reason is not None:
      return self.reason
    return "max_epochs" if self.max_epochs is not None and self.epochs >= self.max_epochs \
        else "diverged"


def train_until(config, folder: str, dataset, rule: StopRule, overwrite: bool):
  """Trains the sweep `config` in `folder` with `rule` as the callback; where the rule stops it,
  finishes the run at the epochs done (`train.run` resumed with that epoch count: no more
  training, the test measurement). Removes the checkpoint at the end.

  Returns:
    `harness.SweepResult` of the finished run (its config holds the epochs trained).
  """
  from isometry.engine import train
  from isometry.studies import harness
  start = time.perf_counter()
  run = train.run(config, folder, overwrite=overwrite, dataset=dataset, callback=rule,
                  plots=False)
  if run.status == "interrupted":
    if rule.reason is None:
      raise KeyboardInterrupt(f"{folder} was interrupted by a signal")
    config = dataclasses.replace(config, epochs=train.read_status(folder)["epochs_done"])
    run = train.run(config, folder, resume=True, dataset=dataset, plots=False)
  os.remove(os.path.join(folder, train.CHECKPOINT))
  return harness.SweepResult(config, run.metrics, train.read_status(folder), folder,
                             time.perf_counter() - start)


def first_examples(dataset, sizes: Sizes, synthetic: bool):
  """`dataset` with each split cut to its first sizes.folder_examples examples, where that is
  set and the images come from a folder (a smoke run on real images)."""
  if synthetic or sizes.folder_examples is None:
    return dataset
  return type(dataset)(*(split[:sizes.folder_examples] for split in dataset))


def save_figure(figure, path: str) -> None:
  from isometry.results import io
  io.save_figure(figure, path)
  log(f"wrote {path}")


# ----------------------------------------------------------------------------------- part a

def scaling_figure(result: dict):
  """Member-steps/s against K: vmapped, separate, and K x one member (perfect scaling)."""
  import numpy as np
  from isometry.results import plots
  plt = plots.pyplot()
  rows = result["rows"]
  ks = np.array([r["K"] for r in rows], np.float64)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(ks, [r["vmapped_steps_per_s"] for r in rows], "o-", label="K vmapped members")
  ax.plot(ks, [r["separate_steps_per_s"] for r in rows], "s-", label="K separate runs")
  one = np.median([r["separate_steps_per_s"] for r in rows])
  ax.plot(ks, ks * one, "k:", lw=1, label="K x one member")
  if TARGET_K in ks:
    ax.plot([TARGET_K], [TARGET_RATIO * one], "r*", ms=10, label=f"target {TARGET_RATIO:g}x")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("members K")
  ax.set_ylabel("member-steps per second")
  s = result["settings"]
  ax.set_title(f"row RNN, hidden {s['hidden']}, batch {s['batch']}, T = 28 "
               f"({result['device']['device_kind']})", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def part_a(sizes: Sizes, out_dir: str, device: dict) -> dict:
  argv = ["--ks", ",".join(map(str, sizes.ks)), "--hidden", str(sizes.hidden),
          "--batch", str(sizes.batch), "--iters", str(sizes.iters),
          "--repeats", str(sizes.repeats),
          "--out", os.path.join(out_dir, "a", "sweep_scaling.json")]
  log(f"part a: sweep_scaling.py {' '.join(argv)}")
  scaling = sweep_scaling.main(argv)
  keep = ("K", "vmapped_steps_per_s", "separate_steps_per_s", "ratio", "ratio_with_measurement",
          "vmapped_compile_s", "load_1min_during")
  rows = [{k: r[k] for k in keep} for r in scaling["rows"]]
  one = next((r for r in rows if r["K"] == 1), None)
  for r in rows:
    r["vmapped_over_vmapped_k1"] = (r["vmapped_steps_per_s"] / one["vmapped_steps_per_s"]
                                    if one else None)
  at_target = next((r for r in rows if r["K"] == TARGET_K), None)
  result = {"settings": scaling["settings"], "device": device, "rows": rows,
            "single_compile_s": scaling["single_compile_s"],
            "inputs": "uniform random rows (N, 28, 28): the timed program does not depend on "
                      "pixel values",
            "target": {"K": TARGET_K, "min_ratio": TARGET_RATIO,
                       "ratio": at_target["ratio"] if at_target else None,
                       "met": at_target["ratio"] >= TARGET_RATIO if at_target else None},
            "file": os.path.join("a", "sweep_scaling.json")}
  save_figure(scaling_figure(result), os.path.join(out_dir, "a_sweep_scaling.png"))
  return result


# ----------------------------------------------------------------------------------- part b

def accuracy_config(sizes: Sizes, data_dir: Optional[str], smoke: bool):
  from isometry.studies import accuracy
  overrides = dict(depths=(sizes.depth,), seeds=sizes.seeds, width=sizes.width,
                   epochs=sizes.epochs, data_dir=data_dir, synthetic=data_dir is None)
  if smoke:
    # As many validation as synthetic test images: one shape, so `measure` compiles once.
    overrides["val_size"] = SMOKE_EVAL_EXAMPLES
  return (accuracy.StudyConfig.quick if smoke else accuracy.StudyConfig)(**overrides)


def b_train_configs(study) -> dict:
  """{activation: the sweep of study C at study's (one) depth, with the inits B_INITS only}."""
  from isometry.studies import accuracy
  (depth,) = study.depths
  configs = {}
  for activation in ("tanh", "relu"):
    full = accuracy.train_config(study, activation, depth)
    configs[activation] = dataclasses.replace(full, members=tuple(
        m for m in full.members if m.label in B_INITS))
  return configs


def part_b(sizes: Sizes, data_dir: Optional[str], smoke: bool, out_dir: str, overwrite: bool,
           deadline: float) -> dict:
  from isometry.studies import accuracy
  from isometry.studies import harness
  start = time.perf_counter()
  study = accuracy_config(sizes, data_dir, smoke)
  specs = [s for s in accuracy.init_specs(study) if s["name"] in B_INITS]
  dataset = first_examples(accuracy.load_data(study), sizes, study.synthetic)
  train_size = min(len(dataset.train_x), study.max_train_examples or len(dataset.train_x))
  log(f"part b: {train_size} train / {len(dataset.val_x)} val / "
      f"{len(dataset.test_x)} test images; inits " + ", ".join(
          f"{s['name']} sigma_w={s['sigma_w']:.4f} chi={s['chi']:.4f}" for s in specs))
  sweeps, runs, epochs = {}, {}, study.epochs
  # ReLU trains for exactly the epochs tanh reached, so both are compared at one length.
  for activation, share in (("tanh", TANH_SHARE), ("relu", 1.0)):
    config = dataclasses.replace(b_train_configs(study)[activation], epochs=epochs)
    name = accuracy.run_name(activation, sizes.depth)
    rule = StopRule(f"b/{name}", start + share * (deadline - start), max_epochs=epochs)
    sweeps[activation] = train_until(config, os.path.join(out_dir, "b", name), dataset, rule,
                                     overwrite)
    epochs = sweeps[activation].config.epochs
    runs[name] = {"stopped_by": rule.stopped_by(), "epochs_done": epochs,
                  "seconds": sweeps[activation].seconds,
                  "epoch_seconds": sweeps[activation].status["epoch_seconds"],
                  "steps_per_epoch": sweeps[activation].status["steps_per_epoch"]}
  by_init = {s["name"]: [{"depth": sizes.depth, **accuracy.summarize(
      sweeps[s["activation"]], s["name"])}] for s in specs}
  comparisons = {}
  for metric in ("test_accuracy", "best_val_accuracy"):
    for other in ("gaussian_critical", "relu_he"):
      comparisons[f"{metric}: orthogonal_critical - {other}"] = harness.compare(
          by_init["orthogonal_critical"][0][metric], by_init[other][0][metric])
  label = "synthetic (learnable)" if study.synthetic else study.dataset
  result = {"config": dataclasses.asdict(study), "inits": specs, "depths": [sizes.depth],
            "by_init": by_init, "comparisons": comparisons, "runs": runs,
            "dataset_label": f"{label}, {train_size} train examples, width {sizes.width}, "
                             f"depth {sizes.depth}"}
  save_figure(accuracy.plot_learning_curves(result), os.path.join(out_dir, "b_learning_curves.png"))
  for s in specs:
    row = by_init[s["name"]][0]
    log(f"part b: {s['name']}: test accuracy {row['test_accuracy_mean']:.4f} "
        f"+- {row['test_accuracy_ci95']:.4f}, best val {row['best_val_accuracy_mean']:.4f}")
  return result


# ----------------------------------------------------------------------------------- part c

def benefit_config(sizes: Sizes, data_dir: Optional[str], smoke: bool):
  from isometry.studies import benefit
  overrides = dict(depths=(), tasks=("pixel",), epochs=sizes.max_epochs, data_dir=data_dir,
                   synthetic=data_dir is None)
  if smoke:
    overrides["val_size"] = SMOKE_EVAL_EXAMPLES
  return (benefit.StudyConfig.quick if smoke else benefit.StudyConfig)(**overrides)


def part_c(sizes: Sizes, data_dir: Optional[str], smoke: bool, out_dir: str, overwrite: bool,
           deadline: float) -> dict:
  from isometry.studies import benefit
  start = time.perf_counter()
  study = benefit_config(sizes, data_dir, smoke)
  config = benefit.rnn_train_config(study, "pixel")
  dataset = first_examples(benefit.load_data(study), sizes, study.synthetic)
  train_size = min(len(dataset.train_x), config.max_train_examples or len(dataset.train_x))
  log(f"part c: {len(config.members)} pixel RNN members (hidden {config.hidden}), "
      f"{train_size} train / {len(dataset.val_x)} val images, at most "
      f"{study.epochs} epochs, patience {sizes.patience}")
  rule = StopRule("c/rnn_pixel", deadline, patience=sizes.patience,
                  max_epochs=study.epochs)
  sweep = train_until(config, os.path.join(out_dir, "c", "rnn_pixel"), dataset, rule, overwrite)
  trained = dataclasses.replace(study, epochs=sweep.config.epochs)
  result = benefit.analyse(trained, {"rnn_pixel": sweep})
  members = [{"label": m.label, "seed": m.seed, "reg_strength": m.reg_strength,
              "best_val_accuracy": float(rule.best[i]), "best_epoch": int(rule.best_epoch[i]),
              "test_accuracy": sweep.metrics["members"][i]["test_accuracy"],
              "status": sweep.metrics["members"][i]["status"]}
             for i, m in enumerate(sweep.config.members)]
  result["early_stopping"] = {
      "rule": "stop once every member has gone `patience` epochs without a validation "
              "accuracy strictly above its best so far; test numbers are the last epoch's",
      "patience": sizes.patience, "max_epochs": study.epochs, "budget_s": deadline - start,
      "stopped_by": rule.stopped_by(), "epochs_done": sweep.config.epochs, "members": members}
  result["seconds"] = {"run": sweep.seconds, "epoch_seconds": sweep.status["epoch_seconds"],
                       "steps_per_epoch": sweep.status["steps_per_epoch"]}
  save_figure(benefit.plot_learning_curves(result), os.path.join(out_dir, "c_learning_curves.png"))
  d = result["tasks"]["pixel"]["difference"]["best_val_accuracy"]
  log(f"part c: stopped by {rule.stopped_by()} after {sweep.config.epochs} epochs; best val "
      f"accuracy with - without penalty {d['mean']:+.4f} +- {d['ci95']:.4f}")
  return result


# ----------------------------------------------------------------------------------- the suite

def has_idx_files(folder: str) -> bool:
  from isometry import data
  return all(os.path.isfile(os.path.join(folder, stem)) or
             os.path.isfile(os.path.join(folder, stem + ".gz"))
             for stem in data.IDX_FILES.values())


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts among a,b,c")
  p.add_argument("--data_dir", default=None,
                 help="folder with the Fashion-MNIST IDX files (required without --smoke)")
  p.add_argument("--out_dir", default=DEFAULT_OUT, help="results folder")
  p.add_argument("--smoke", action="store_true", help="tiny sizes: a check in about a minute")
  p.add_argument("--overwrite", action="store_true", help="replace a suite found in out_dir")
  p.add_argument("--matmul_precision", default=None, choices=("default", "high", "highest"),
                 help="jax_default_matmul_precision (unset: the backend's default)")
  p.add_argument("--patience", type=int, default=None, help="part c's early-stopping patience")
  p.add_argument("--budget_b_s", type=float, default=None, help="seconds part b may take")
  p.add_argument("--budget_c_s", type=float, default=None, help="seconds part c may take")
  p.add_argument("--total_s", type=float, default=None, help="seconds the suite may take")
  a = p.parse_args(argv)
  parts = [x.strip() for x in a.parts.split(",") if x.strip()]
  if not parts or any(x not in PARTS for x in parts) or len(set(parts)) != len(parts):
    p.error(f"--parts must be distinct entries among {','.join(PARTS)}, got {a.parts!r}")
  a.parts = [x for x in PARTS if x in parts]
  if a.data_dir is None and not a.smoke and set(a.parts) - {"a"}:
    p.error("--data_dir is required for parts b and c (a folder with the Fashion-MNIST IDX "
            "files); or run --smoke on synthetic images")
  if a.data_dir is not None and not (os.path.isdir(a.data_dir) and has_idx_files(a.data_dir)):
    p.error(f"--data_dir {a.data_dir!r} does not hold the four Fashion-MNIST IDX files")
  base = SMOKE if a.smoke else FULL
  changes = {k: v for k, v in (("patience", a.patience), ("budget_b_s", a.budget_b_s),
                               ("budget_c_s", a.budget_c_s), ("total_s", a.total_s))
             if v is not None}
  if any(v <= 0 for v in changes.values()):
    p.error(f"--{next(k for k, v in changes.items() if v <= 0)} must be > 0")
  a.sizes = dataclasses.replace(base, **changes)
  from isometry.results import io
  try:
    io.prepare_out_dir(a.out_dir, [SUMMARY], overwrite=a.overwrite)
  except ValueError as e:
    p.error(f"--out_dir: {e}")
  return a


def main(argv=None) -> dict:
  a = parse_args(argv)
  import jax
  from isometry import data
  from isometry.engine import train
  from isometry.results import io
  if a.matmul_precision is not None:
    jax.config.update("jax_default_matmul_precision", a.matmul_precision)
  device = common.device_info()
  log(f"jax {device['jax']} sees {device['device_count']} {device['backend']} device(s): "
      f"{', '.join(device['devices'])} ({device['device_kind']})")
  start = time.perf_counter()
  suite = {"suite": "isometry GPU suite (benchmarks/gpu_suite.py)", "status": "running",
           "argv": sys.argv[1:] if argv is None else list(argv), "smoke": a.smoke,
           "parts": a.parts, "sizes": dataclasses.asdict(a.sizes), "device": device,
           "machine": common.machine_info(), "load_at_start": common.load_average(),
           "data": {"data_dir": a.data_dir, "synthetic": a.data_dir is None}, "wall_s": {}}
  path = os.path.join(a.out_dir, SUMMARY)
  end = start + a.sizes.total_s
  later_c = a.sizes.budget_c_s if "c" in a.parts else 0.0
  # Deadlines computed when a part starts, from its budget and the suite's end.
  run_part = {
      "a": lambda: part_a(a.sizes, a.out_dir, device),
      "b": lambda: part_b(a.sizes, a.data_dir, a.smoke, a.out_dir, a.overwrite, min(
          time.perf_counter() + a.sizes.budget_b_s, end - later_c)),
      "c": lambda: part_c(a.sizes, a.data_dir, a.smoke, a.out_dir, a.overwrite, min(
          time.perf_counter() + a.sizes.budget_c_s, end))}
  try:
    for part in a.parts:
      log(f"part {part}: start")
      part_start = time.perf_counter()
      suite[part] = run_part[part]()
      suite["wall_s"][part] = time.perf_counter() - part_start
      log(f"part {part}: done in {suite['wall_s'][part]:.1f} s")
      io.write_json(path, suite)
    suite["status"] = "done"
  except KeyboardInterrupt:
    suite["status"] = "interrupted"
  except (data.DataUnavailableError, train.SetupError) as e:
    log(f"stopped: {e}")
    suite["status"] = "failed"
    suite["error"] = str(e)
  suite["wall_s"]["total"] = time.perf_counter() - start
  suite["load_at_end"] = common.load_average()
  # The promise to the GPU image, which has no TFDS: nothing on this path imported it.
  suite["tfds_imported"] = "tensorflow_datasets" in sys.modules
  io.write_json(path, suite)
  log(f"{suite['status']} in {suite['wall_s']['total']:.1f} s: {path}")
  if suite["status"] != "done":
    raise SystemExit(130 if suite["status"] == "interrupted" else 2)
  return suite


if __name__ == "__main__":
  main()
