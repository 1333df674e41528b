"""The harness every study runs on: its images, its training sweeps, their results in memory.

A study is a config, the `isometry.engine.train` sweeps it trains and an analysis. Its config extends
`DataConfig` (dataset, data_dir, synthetic: declared once for every study) and validates itself
with the config checks below; the harness does the rest, once for all of them:

    images = start(out_dir, "study.json", overwrite,      # a finished study is refused,
                   lambda: config.images(config.val_size))   # then the data, before any work
    sweeps = run_sweeps({"none": none_config, "soft": soft_config}, out_dir, dataset=images)
    if sweeps is None:                                     # interrupted: run again to continue
      return None
    test = sweeps["soft"].per_seed("test_accuracy", label="soft")    # (seeds,), NaN = missing
    difference = compare(test, sweeps["none"].per_seed("test_accuracy", label="none"))
    family = compare_family({"soft": (test, none), ...})   # the same, with Holm's p_holm
    save(out_dir, "study.json", summary, figures)          # the summary last: the study is done

A finished study's summary gains a statistic of its stored per-seed values without retraining
through `resummarize(out_dir, "study.json", update)`.

Across processes (`isometry.processes`; the study scripts' --coordinator_address,
--num_processes, --process_id) every process runs the study, each sweep's members spread over
all their devices, and process 0 alone writes out_dir.

Every sweep trains in its own folder out_dir/<name>/. Running the study again continues where it
stopped: a finished sweep of the same config is read back, an interrupted one resumes from its
checkpoint. A folder holding a finished study (its summary file) is not run into again unless
`overwrite` says so; then the old summary goes as soon as the data has loaded and every sweep
trains afresh (so an overwriting run that is interrupted is continued without overwrite).

Results are selected by the fields of the sweep's own `train.Member`s, compared exactly as the
config holds them (never as numbers read back from JSON), and come back as arrays over seeds
0..S-1, NaN where no member has that seed or where it diverged.

The figure helpers the studies share with the training figures live in `isometry.results.plots`, which
the library's `training_plots` uses too (the library never imports a study).
"""
import dataclasses
import json
import os
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

from absl import logging
import numpy as np

from isometry import data
from isometry import processes
from isometry.results import io
from isometry.results import stats
from isometry.engine import train

# What a paired comparison calls a difference whose 95% interval lies above 0, below 0, or
# covers 0.
VERDICTS = ("better", "worse", "no difference resolved")


# -------------------------------------------------------------------------------- config checks
# A study's config validates itself on construction with these, so that every study words the
# same mistake the same way (and `isometry.cli` can name the flag: a message starts with, or
# names, the field).

def check(condition: bool, message: str) -> None:
  """ValueError(message) unless condition."""
  if not condition:
    raise ValueError(message)


def check_at_least(config, names: Sequence[str], low: int = 1) -> None:
  """Each field in names is >= low."""
  for name in names:
    value = getattr(config, name)
    check(value >= low, f"{name} must be >= {low}, got {value}")


def check_positive(config, names: Sequence[str]) -> None:
  """Each field in names is finite and > 0."""
  for name in names:
    value = getattr(config, name)
    check(value > 0 and np.isfinite(value), f"{name} must be > 0, got {value}")


def check_seeds(config, names: Sequence[str] = ("seeds",)) -> None:
  """Each field in names (a number of seeds) is >= 2, so that there is an interval."""
  for name in names:
    value = getattr(config, name)
    check(value >= 2, f"{name} must be >= 2 for a confidence interval, got {value}")


def check_choices(config, name: str, choices: Sequence[str], *, distinct: bool = True,
                  allow_empty: bool = True) -> None:
  """The tuple field `name` holds values among choices (each once, if distinct)."""
  values = getattr(config, name)
  for value in values:
    check(value in choices, f"unknown {name} entry {value!r}; choose from {', '.join(choices)}")
  check(not distinct or len(set(values)) == len(values), f"{name} repeat: {values}")
  check(allow_empty or bool(values), f"{name} is empty")


def check_examples(config, examples: str, batch_size: str) -> None:
  """The training-set size field `examples` (None: all) holds at least one batch."""
  n, b = getattr(config, examples), getattr(config, batch_size)
  check(n is None or n >= b, f"{examples} ({n}) must be >= {batch_size} ({b})")


def check_data(config, choices: Sequence[str] = data.NAMES, why: str = "") -> None:
  """config.dataset is among choices; config.data_dir (empty: none) is a folder."""
  check(config.dataset in choices, f"unknown dataset {config.dataset!r}; choose one of "
        f"{', '.join(choices)}" + (f" ({why})" if why else ""))
  check(not config.data_dir or os.path.isdir(config.data_dir),
        f"data_dir {config.data_dir!r} is not a directory")


# ----------------------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class Synthetic:
  """A small synthetic image set (`data.synthetic_dataset`, seed 0) for smoke runs.

  Attributes:
    num_train, num_val, num_test: examples per split.
    side: images are side x side (row task: side steps of side pixels).
    learnable: labels readable from the images; else random labels on uniform noise.
  """
  num_train: int = 64
  num_val: int = 16
  num_test: int = 16
  side: int = 28
  learnable: bool = False


def load_images(dataset: str, data_dir: Optional[str], val_size=0.2, *,
                synthetic: Optional[Synthetic] = None) -> data.Dataset:
  """The one image loader of the studies.

  Args:
    dataset: a `data.NAMES` name.
    data_dir: IDX folder or TFDS dir; None or empty: this machine's offline copy of `dataset`
      (`data.resolve_data_dir`), else TFDS.
    val_size: training examples moved to validation (a fraction or a count).
    synthetic: the images of a smoke run instead of `dataset`.

  Raises:
    data.DataUnavailableError: the dataset cannot be read here (the message says what to do).
  """
  if synthetic is not None:
    return data.synthetic_dataset(synthetic.num_train, synthetic.num_val, synthetic.num_test,
                                  side=synthetic.side, learnable=synthetic.learnable)
  return data.load_dataset(dataset, data.resolve_data_dir(dataset, data_dir or None),
                           val_size=val_size)


def data_fields(dataset: str, data_dir: Optional[str], synthetic: bool) -> dict:
  """A sweep's `TrainConfig` dataset and data_dir. Synthetic images are handed to `train.run`,
  so the name only labels the run then and no folder is read."""
  return {"dataset": dataset,
          "data_dir": None if synthetic else data.resolve_data_dir(dataset, data_dir or None)}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The images of a study, declared once: every study's config extends this.

  Attributes:
    dataset: the images (a `data.NAMES` name; a study may allow fewer).
    data_dir: IDX folder or TFDS data dir; None (or empty): this machine's offline copy of the
      dataset (`data.OFFLINE_DIRS`) where there is one, else TFDS.
    synthetic: small synthetic images instead of the dataset (smoke runs, --quick); each study
      says which.
    monitor_probes: probes of the engine's isometry monitor in every sweep (0: off; the quick
      smoke runs turn it off, its compile would dominate them).
  """
  dataset: str = "fashion_mnist"
  data_dir: Optional[str] = None
  synthetic: bool = False
  monitor_probes: int = 8

  def images(self, val_size=0.2, smoke: Synthetic = Synthetic()) -> data.Dataset:
    """`load_images` of this config: the dataset, or the `smoke` images where synthetic."""
    return load_images(self.dataset, self.data_dir, val_size,
                       synthetic=smoke if self.synthetic else None)

  def train_data(self) -> dict:
    """`data_fields` of this config and its monitor setting: a sweep's TrainConfig dataset,
    data_dir and monitor_probes."""
    return {**data_fields(self.dataset, self.data_dir, self.synthetic),
            "monitor_probes": self.monitor_probes}


# -------------------------------------------------------------------------------------- results

@dataclasses.dataclass(frozen=True)
class SweepResult:
  """One finished training sweep, in memory.

  Attributes:
    config: the sweep; metrics["members"][i] belongs to config.members[i].
    metrics: its metrics.json content (`train.run`'s return value).
    status: its status.json content (`train.read_status`).
    folder: its folder, where spectra.npz is read on demand.
    seconds: wall time this run spent on it (about 0 where a finished sweep was read back).
  """
  config: train.TrainConfig
  metrics: dict
  status: Optional[dict] = None
  folder: Optional[str] = None
  seconds: float = 0.0

  def __post_init__(self):
    written = [(m["config"]["label"], m["config"]["seed"]) for m in self.metrics["members"]]
    if written != [(m.label, m.seed) for m in self.config.members]:
      raise ValueError("the metrics' members are not the config's members")

  @property
  def num_seeds(self) -> int:
    """S: results come as arrays over seeds 0..S-1, S the largest seed in the sweep + 1."""
    return 1 + max(m.seed for m in self.config.members)

  def select(self, **fields) -> Dict[int, int]:
    """{seed: member index} of the members whose `train.Member` fields equal `fields`.

    Raises:
      ValueError: a field Member does not have, no member matches, or two matching members
        share a seed (name more fields).
    """
    names = {f.name for f in dataclasses.fields(train.Member)}
    unknown = sorted(set(fields) - names)
    if unknown:
      raise ValueError(f"Member has no field {unknown[0]!r}; choose from "
                       f"{', '.join(sorted(names))}")
    chosen = {}
    for i, member in enumerate(self.config.members):
      if all(getattr(member, name) == value for name, value in fields.items()):
        if member.seed in chosen:
          raise ValueError(f"{fields} selects two members with seed {member.seed}; name more "
                           "fields")
        chosen[member.seed] = i
    if not chosen:
      raise ValueError(f"no member of the sweep has {fields}")
    return chosen

  def _stack(self, rows: Mapping[int, np.ndarray]) -> np.ndarray:
    """(S, ...) from {seed: row}, NaN rows for the seeds without one."""
    shape = next(iter(rows.values())).shape
    out = np.full((self.num_seeds,) + shape, np.nan)
    for seed, row in rows.items():
      out[seed] = row
    return out

  def per_seed(self, metric: str, **fields) -> np.ndarray:
    """(S,) float64 values of `metric` for the selected members; NaN where diverged or missing.

    Args:
      metric: "test_accuracy", "test_loss" (after the last epoch), or "best_val_accuracy" (the
        best validation accuracy over epochs 1..E).
      **fields: `select`'s selection.
    """
    if metric not in ("test_accuracy", "test_loss", "best_val_accuracy"):
      raise ValueError(f"unknown metric {metric!r}")
    values = np.full(self.num_seeds, np.nan)
    for seed, i in self.select(**fields).items():
      member = self.metrics["members"][i]
      if member["status"] != "done":
        continue
      if metric == "best_val_accuracy":
        seen = [e["val_accuracy"] for e in member["epochs"] if e["val_accuracy"] is not None]
        value = max(seen) if seen else None
      else:
        value = member[metric]
      if value is not None:
        values[seed] = value
    return values

  def history(self, key: str, **fields) -> np.ndarray:
    """(S, E + 1, ...) float64: a per-epoch record of the selected members, index 0 at init.

    Args:
      key: a metrics.json record field ("val_accuracy", "train_loss", "grad_norm_through_time",
        ...); "a.b" reads field b of record field a ("singular_values.max"). None reads as NaN.
      **fields: `select`'s selection.
    """
    path = key.split(".")

    def read(record):
      for name in path:
        record = record[name]
      if isinstance(record, list):
        return np.array([np.nan if v is None else v for v in record], np.float64)
      return np.float64(np.nan if record is None else record)

    rows = {}
    for seed, i in self.select(**fields).items():
      member = self.metrics["members"][i]
      rows[seed] = np.stack([read(r) for r in [member["initial"]] + member["epochs"]])
    return self._stack(rows)

  def spectra(self, name: str, **fields) -> np.ndarray:
    """(S, E + 1, ...) singular values of tracked weights from spectra.npz: "recurrent" (RNN,
    (H,); LSTM (4, H)), "input" or "hidden" (MLP, (L - 1, H)); index 0 at init."""
    with np.load(os.path.join(self.folder, "spectra.npz")) as f:
      values = np.asarray(f[f"spectra/{name}"], np.float64)   # (E + 1, members, ...)
    return self._stack({seed: values[:, i] for seed, i in self.select(**fields).items()})

  def diverged(self, **fields) -> np.ndarray:
    """(S,) bool: the selected members that diverged (False where missing)."""
    out = np.zeros(self.num_seeds, bool)
    for seed, i in self.select(**fields).items():
      out[seed] = self.metrics["members"][i]["status"] == "diverged"
    return out


Sweeps = Dict[str, SweepResult]


# --------------------------------------------------------------------------------------- running

def check_out_dir(out_dir: str, summary: str, overwrite: bool) -> None:
  """Stops before any work where out_dir holds a finished study (the summary file a study writes
  last), unless `overwrite`; creates nothing.

  Raises:
    train.SetupError: out_dir is a file, or holds `summary` and overwrite is False.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise train.SetupError(f"out_dir {out_dir!r} is a file, not a folder")
  if not overwrite and os.path.exists(os.path.join(out_dir, summary)):
    raise train.SetupError(f"out_dir {out_dir!r} holds a finished study ({summary}): replace it "
                           "with --overwrite, or choose another out_dir")


def start(out_dir: str, summary: str, overwrite: bool, load: Callable[[], object],
          dataset=None):
  """A study's first step, before any work: `check_out_dir`, then its data (`dataset` where
  the caller preloaded it, else load()); with overwrite, the old summary is removed once the
  data is there.

  Raises:
    train.SetupError: out_dir is a file or holds a finished study (and overwrite is False).
    data.DataUnavailableError: the data cannot be read here (nothing is written).
  """
  check_out_dir(out_dir, summary, overwrite)
  loaded = load() if dataset is None else dataset
  path = os.path.join(out_dir, summary)
  if overwrite and os.path.exists(path) and processes.is_writer():
    # Replaced from here on: if this run stops, running again without overwrite continues it.
    os.remove(path)
  return loaded


def _finished(folder: str, config: train.TrainConfig) -> bool:
  """Whether folder holds a finished run of exactly this config (epochs included)."""
  status = train.read_status(folder)
  if status is None or status["status"] not in ("done", "diverged"):
    return False
  paths = [os.path.join(folder, name) for name in ("config.json", "metrics.json")]
  # Through JSON both sides, so tuples and lists compare equal.
  return all(os.path.isfile(p) for p in paths) and io.read_json(paths[0]) == json.loads(
      json.dumps(config.to_dict()))


def run_sweeps(sweeps: Mapping[str, train.TrainConfig], out_dir: str, *, dataset=None,
               overwrite: bool = False, plots: bool = False, keep_checkpoints: bool = True,
               callback: Optional[Callable[[int, dict], bool]] = None) -> Optional[Sweeps]:
  """Trains the named sweeps in turn, each in out_dir/<name>/, and returns their results.

  Args:
    sweeps: {folder name: sweep}, in run order.
    out_dir: the study's folder.
    dataset: preloaded images for every sweep (default: each loads its config's dataset).
    overwrite: train every sweep afresh, replacing what its folder holds; without it a finished
      sweep of the same config is read back and an interrupted one resumes.
    plots: write each sweep's training figures (`isometry.results.training_plots`).
    keep_checkpoints: keep checkpoint.npz of the finished sweeps (a finished sweep is read back
      without it).
    callback: `train.run`'s per-epoch callback; returning True stops the sweep as an interrupt.

  Returns:
    {name: SweepResult} in the order of `sweeps`; None, after one log line, where a sweep was
    interrupted (SIGINT/SIGTERM or the callback): running the same study again continues it.

  Raises:
    train.SetupError, data.DataUnavailableError: before a sweep trains (bad data, a folder that
      holds another config's checkpoint, ...); the sweeps before it stay finished.
  """
  results = {}
  for name, config in sweeps.items():
    folder = os.path.join(out_dir, name)
    start = time.perf_counter()
    finished = not overwrite and _finished(folder, config)
    # Across processes, all of them must either train the sweep or read it back.
    disagreement = processes.disagreement(processes.allgather_text(str(finished)),
                                          f"whether {folder} holds this sweep, finished")
    if disagreement:
      raise train.SetupError(disagreement + " (on several hosts out_dir must be one shared "
                             "folder)")
    if finished:
      logging.info("sweep %s: finished earlier, read back from %s", name, folder)
      metrics = io.read_json(os.path.join(folder, "metrics.json"))
    else:
      logging.info("sweep %s: %d members into %s", name, len(config.members), folder)
      metrics = train.run(config, folder, resume=not overwrite, overwrite=overwrite,
                          dataset=dataset, plots=plots, callback=callback).metrics
    status = train.read_status(folder)
    if status["status"] == "interrupted":
      logging.info("interrupted in %s: run the same command again to continue", folder)
      return None
    checkpoint = os.path.join(folder, train.CHECKPOINT)
    if not keep_checkpoints and os.path.exists(checkpoint) and processes.is_writer():
      os.remove(checkpoint)
    results[name] = SweepResult(config, metrics, status, folder, time.perf_counter() - start)
  return results


def save(out_dir: str, summary_name: str, summary: dict,
         figures: Mapping[str, Callable[[dict], object]] = ()) -> None:
  """Writes each figure (name: function of the summary returning a Figure), then the summary
  JSON: last, because its presence says the study finished (`check_out_dir`). Across processes
  process 0 writes, and every process returns once it has."""
  if processes.is_writer():
    os.makedirs(out_dir, exist_ok=True)
    for name, figure in dict(figures).items():
      io.save_figure(figure(summary), os.path.join(out_dir, name))
    io.write_json(os.path.join(out_dir, summary_name), summary)
  processes.barrier("isometry.studies.harness.save")


# ----------------------------------------------------------------------------------- statistics

def compare(a, b, words: Sequence[str] = VERDICTS) -> dict:
  """a - b paired by seed (`stats.paired_difference`: NaN drops the pair) with a verdict.

  Args:
    a, b: (seeds,) values, seed i of a paired with seed i of b.
    words: the verdicts where the 95% interval of the mean difference lies above 0, below 0,
      or covers it.

  Returns:
    `stats.paired_difference`'s record and "verdict": one of `words`, or "undetermined" where
    there is no interval (fewer than two pairs).
  """
  result = stats.paired_difference(a, b)
  mean, half = result["mean_difference"], result["ci95"]
  if not np.isfinite(half):
    result["verdict"] = "undetermined"
  elif mean - half > 0:
    result["verdict"] = words[0]
  elif mean + half < 0:
    result["verdict"] = words[1]
  else:
    result["verdict"] = words[2]
  return result


def compare_family(pairs: Mapping, words: Sequence[str] = VERDICTS) -> dict:
  """`compare` for each (a, b) of one family of paired comparisons, with Holm's adjustment.

  The verdicts stay those of each comparison's own 95% interval; "p_holm" is its p-value
  adjusted over the family (`stats.holm`), so that a reader can see which differences survive
  the number of comparisons made. A study names its family: every comparison that answers its
  question, not only the ones that came out small.

  Args:
    pairs: {key: (a, b)}, (seeds,) values each, seed i of a paired with seed i of b.
    words: `compare`'s verdicts.

  Returns:
    {key: `compare`'s record + "p_holm" + "family_size" (the number of comparisons with a
    p-value, Holm's m)}, in the order of `pairs`.
  """
  records = {key: compare(a, b, words) for key, (a, b) in pairs.items()}
  adjusted = stats.holm([r["p_value"] for r in records.values()])
  size = int(np.sum(np.isfinite(adjusted)))
  return {key: _beside(record, "p_value", {"p_holm": float(p_holm), "family_size": size})
          for (key, record), p_holm in zip(records.items(), adjusted)}


def _beside(record: dict, after: str, fields: dict) -> dict:
  """record with `fields` inserted right after its key `after` (so the JSON reads p, p_holm)."""
  out = {}
  for key, value in record.items():
    out[key] = value
    if key == after:
      out.update(fields)
  return out


def resummarize(out_dir: str, summary_name: str, update: Callable[[dict], dict]) -> dict:
  """Rewrites a finished study's summary as update(summary), without training: how a new
  statistic of the stored per-seed values (a Holm column, say) reaches a committed study.

  Args:
    out_dir: the study's folder.
    summary_name: its summary file.
    update: the study's function from the old summary to the new one (the per-seed values,
      and every number that does not depend on the new statistic, unchanged).

  Returns:
    The new summary, written atomically in place of the old.

  Raises:
    FileNotFoundError: out_dir holds no finished study.
  """
  path = os.path.join(out_dir, summary_name)
  old = io.read_json(path)
  summary = _in_order_of(old, update(old))
  io.write_json(path, summary)
  return summary


def _in_order_of(old, new):
  """new with the keys of its objects in old's order (a key old lacks right after the key that
  precedes it in new), so that a rewritten summary differs from the old one only where its
  values do."""
  if not (isinstance(old, dict) and isinstance(new, dict)):
    return new
  order = [key for key in old if key in new]
  previous = None
  for key in new:
    if key not in old:
      order.insert(order.index(previous) + 1 if previous is not None else 0, key)
    previous = key
  return {key: _in_order_of(old.get(key), new[key]) for key in order}
