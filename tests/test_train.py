"""The sweep trainer on a tiny synthetic task: one compiled program, vmapped members equal to
lone runs, divergence isolation, multi-device equality, resume, result files.

One reference run (module fixture: three members, two epochs) is shared by most tests, since a
compile of the epoch program costs seconds. Tolerances: members computed alone vs. inside a
vmapped batch (or on another device) run the same float32 ops, but XLA may pick other kernels
for batched matmuls; after 16 Adam steps the metrics agree to ~1e-6, and rtol 1e-4 still fails
on any real difference (a wrong key, batch order or hyperparameter moves the loss by > 1e-2).
"""
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isometry.engine import constraints
from isometry.theory import diagnostics
from isometry.theory import initializers
from isometry.results import io
from isometry.engine import models
from isometry.engine import presets
from isometry.engine import train
from isometry.engine.train import loop

import small_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = small_sweep.SIDE
_config = small_sweep.config


class _CompileCounter(logging.Handler):
  """Counts jax's "Compiling jit(run_epoch)" log records (emitted under jax.log_compiles)."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.count = 0

  def emit(self, record):
    if "Compiling jit(run_epoch)" in record.getMessage():
      self.count += 1


@pytest.fixture(scope="module")
def dataset():
  return small_sweep.dataset()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
  """The uninterrupted two-epoch run of `_config()`, with its compile count."""
  out = str(tmp_path_factory.mktemp("reference"))
  counter = _CompileCounter()
  logger = logging.getLogger("jax")
  logger.addHandler(counter)
  try:
    with jax.log_compiles(True):
      metrics = train.run(_config(), out, dataset=dataset, plots=False).metrics
  finally:
    logger.removeHandler(counter)
  return {"dir": out, "metrics": metrics, "compiles": counter.count}


def _numbers(member):
  """The numeric content of a member's metrics (None for missing / non-finite values)."""
  rows = [member["initial"]] + member["epochs"]
  keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
  values = [[r[k] for k in keys if k in r] +
            [r["singular_values"][s] for s in ("mean", "min", "max")] +
            r["grad_norm_through_time"] for r in rows]
  values.append([member["test_loss"], member["test_accuracy"]])
  return [np.nan if v is None else v for row in values for v in row]


def _assert_members_close(got, want, rtol):
  np.testing.assert_allclose(_numbers(got), _numbers(want), rtol=rtol, atol=1e-6)


def test_sweep_compiles_run_epoch_once(reference):
  assert reference["compiles"] == 1
  assert len(reference["metrics"]["members"][0]["epochs"]) == 2


def test_result_files(reference):
  out = reference["dir"]
  status = io.read_json(os.path.join(out, "status.json"))
  assert status["status"] == "done" and status["epochs_done"] == 2
  assert status["diverged_members"] == ["overflow seed 0"]
  assert train.TrainConfig.from_dict(io.read_json(os.path.join(out, "config.json"))) == _config()
  metrics = io.read_json(os.path.join(out, "metrics.json"))
  assert len(metrics["members"]) == 3
  member = metrics["members"][0]
  assert set(member) >= {"config", "status", "epochs", "test_accuracy", "initial"}
  assert member["config"]["label"] == "ortho_reg" and member["config"]["gain"] == 1.0
  epoch = member["epochs"][-1]
  assert set(epoch) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy",
                        "singular_values", "grad_norm_through_time"}
  assert set(epoch["singular_values"]) == {"mean", "std", "min", "max"}
  assert len(epoch["grad_norm_through_time"]) == SIDE
  assert 0 <= member["test_accuracy"] <= 1
  # It learns: 16 steps lower the validation loss (2.37 -> 2.07 measured).
  assert epoch["val_loss"] < member["initial"]["val_loss"] - 0.1
  assert {c["label"] for c in metrics["configs"]} == {"ortho_reg", "glorot", "overflow"}
  with np.load(os.path.join(out, "spectra.npz")) as spectra:
    # Epoch 0 (init) + 2 epochs, 3 members, H = 8 singular values; matches the JSON summary.
    assert spectra["spectra/recurrent"].shape == (3, 3, 8)
    np.testing.assert_allclose(spectra["spectra/recurrent"][2, 0].max(),
                               epoch["singular_values"]["max"], rtol=1e-6)
    assert spectra["grad_norm_through_time"].shape == (3, 3, SIDE)
  # At init the orthogonal member's singular values are all its gain (float32 QR).
  init_sv = member["initial"]["singular_values"]
  assert abs(init_sv["min"] - 1) < 1e-5 and abs(init_sv["max"] - 1) < 1e-5


def test_diverged_member_is_isolated(reference):
  ortho, glorot, overflow = reference["metrics"]["members"]
  assert overflow["status"] == "diverged" and overflow["diverged_epoch"] == 1
  # Frozen at its last finite parameters (the init, since the first step overflowed).
  assert overflow["epochs"][-1]["singular_values"] == overflow["initial"]["singular_values"]
  assert overflow["epochs"][0]["train_loss"] is None  # No step was taken.
  # No test metrics for a diverged member, and none in its label's summary.
  assert overflow["test_accuracy"] is None and overflow["test_loss"] is None
  summary = {c["label"]: c for c in reference["metrics"]["configs"]}
  assert summary["overflow"]["diverged"] == 1 and summary["overflow"]["test_accuracy_mean"] is None
  assert summary["glorot"] == {"label": "glorot", "seeds": 1, "diverged": 0,
                               "test_accuracy_mean": glorot["test_accuracy"],
                               "test_accuracy_ci95": None}
  for member in (ortho, glorot):
    assert member["status"] == "done" and member["diverged_epoch"] is None
    assert all(np.isfinite(_numbers(member)))


def test_a_finite_loss_far_above_the_initial_one_is_divergence(dataset, tmp_path):
  # Adam at rate 50 saturates every unit and blows the logits up: the loss stays finite
  # (hundreds of nats, against ln 10 at init) but is far past divergence_factor x initial.
  members = (train.Member("exploded", "orthogonal", 1.0, 0.0, True, 50.0, seed=0),
             train.Member("calm", "orthogonal", 1.0, 0.0, True, 1e-3, seed=0))
  metrics = train.run(_config(members=members, hidden=4, epochs=1), str(tmp_path),
                      dataset=dataset, plots=False).metrics
  exploded, calm = metrics["members"]
  assert exploded["status"] == "diverged" and exploded["diverged_epoch"] == 1
  first = exploded["epochs"][0]["train_loss"]
  assert np.isfinite(first) and first > 10 * exploded["initial"]["val_loss"]
  assert exploded["test_accuracy"] is None
  assert calm["status"] == "done" and calm["test_accuracy"] is not None


def test_vmapped_member_equals_lone_run(reference, dataset, tmp_path):
  config = _config()
  alone = dataclass_replace(config, members=config.members[1:2])
  metrics = train.run(alone, str(tmp_path), dataset=dataset, plots=False).metrics
  _assert_members_close(metrics["members"][0], reference["metrics"]["members"][1], rtol=1e-4)


def dataclass_replace(config, **changes):
  import dataclasses
  return dataclasses.replace(config, **changes)


def test_interrupt_then_resume_matches_uninterrupted_run(reference, dataset, tmp_path):
  out = str(tmp_path)
  stopped = train.run(_config(), out, dataset=dataset, plots=False,
                      callback=lambda epoch, outputs: epoch == 1).metrics
  assert io.read_json(os.path.join(out, "status.json"))["status"] == "interrupted"
  assert len(stopped["members"][0]["epochs"]) == 1
  assert stopped["members"][0]["test_accuracy"] is None
  resumed = train.run(_config(), out, dataset=dataset, plots=False, resume=True).metrics
  assert io.read_json(os.path.join(out, "status.json"))["status"] == "done"
  for got, want in zip(resumed["members"], reference["metrics"]["members"]):
    assert got["status"] == want["status"]
    # Same program, same inputs, same device: bitwise equal.
    np.testing.assert_array_equal(_numbers(got), _numbers(want))
  # A finished run extends to more epochs; the first two stay as they were.
  extended = train.run(_config(epochs=3), out, dataset=dataset, plots=False, resume=True).metrics
  assert [len(m["epochs"]) for m in extended["members"]] == [3, 3, 3]
  assert extended["members"][0]["epochs"][:2] == resumed["members"][0]["epochs"]


def test_resume_refuses_a_different_config(reference, dataset):
  before = io.read_json(os.path.join(reference["dir"], "metrics.json"))
  with pytest.raises(train.SetupError, match="different config"):
    train.run(_config(hidden=4), reference["dir"], dataset=dataset, plots=False, resume=True)
  # Refused before touching the folder.
  assert io.read_json(os.path.join(reference["dir"], "metrics.json")) == before


# argv: device count, dataset .npz, config.json, then output folders (each run with resume).
_RUN_ON_DEVICES = """
import sys
import numpy as np
import jax
from isometry import data
from isometry.results import io
from isometry.engine import train
assert jax.local_device_count() == int(sys.argv[1]), jax.devices()
arrays = np.load(sys.argv[2])
dataset = data.Dataset(*(arrays[k] for k in data.Dataset._fields))
config = train.TrainConfig.from_dict(io.read_json(sys.argv[3]))
for out in sys.argv[4:]:
  train.run(config, out, dataset=dataset, plots=False, resume=True)
"""


def _devices_env(count: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
              PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


@pytest.mark.slow
def test_four_devices_equal_one_device(reference, dataset, tmp_path):
  """3 members padded to 4 and sharded over 4 CPU devices give the 1-device metrics, both
  from scratch and resuming a 1-device checkpoint."""
  data_path = str(tmp_path / "data.npz")
  np.savez(data_path, **dataset._asdict())
  fresh, resumed = str(tmp_path / "fresh"), str(tmp_path / "resumed")
  train.run(_config(), resumed, dataset=dataset, plots=False,
            callback=lambda epoch, outputs: epoch == 1)
  result = subprocess.run(
      [sys.executable, "-c", _RUN_ON_DEVICES, "4", data_path,
       os.path.join(reference["dir"], "config.json"), fresh, resumed],
      env=_devices_env(4), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for out in (fresh, resumed):
    status = io.read_json(os.path.join(out, "status.json"))
    assert status["num_devices"] == 4 and status["status"] == "done"
    metrics = io.read_json(os.path.join(out, "metrics.json"))
    for got, want in zip(metrics["members"], reference["metrics"]["members"]):
      assert got["status"] == want["status"]
      _assert_members_close(got, want, rtol=1e-4)


@pytest.mark.slow
def test_two_devices_finish_at_a_size_that_deadlocked(dataset, tmp_path):
  """8 members at hidden 32 on 2 CPU devices finish, with the 1-device metrics.

  Before `linalg.one_matrix_per_call` this run never returned (3 of 3 tries on 2 cores): the
  first measurement's SVD of 4 32x32 matrices per device went to jaxlib's parallel batch path,
  which blocks an XLA:CPU pool thread per device until every pool thread waits (see
  benchmarks/xla_cpu_hang_repro.py; jaxlib splits a batch of 4 from hidden 19 up). A hard
  timeout turns a regression into a failure instead of a stuck suite. The two runs do the same
  float32 operations but for the per-device batch size of the batched matmuls, so they may differ
  in the last bits: measured max relative difference 2.4e-7 (46 of 208 numbers differ at
  all); rtol 1e-5 still fails on any real
  difference (another member's hyperparameters or batch order moves the loss by > 1e-2).
  """
  config = _config(members=train.product_members(gains=(1.0, 1.2), seeds=4, lrs=(1e-2,)),
                   hidden=32, epochs=1)
  data_path, config_path = str(tmp_path / "data.npz"), str(tmp_path / "config.json")
  np.savez(data_path, **dataset._asdict())
  io.write_json(config_path, config.to_dict())
  two = str(tmp_path / "two")
  # Started first, so the in-process 1-device run overlaps its startup and compilation.
  child = subprocess.Popen([sys.executable, "-c", _RUN_ON_DEVICES, "2", data_path, config_path,
                            two], env=_devices_env(2), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    one = train.run(config, str(tmp_path / "one"), dataset=dataset, plots=False).metrics
    try:
      _, stderr = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      pytest.fail("the 2-device run did not finish in 120 s (normally ~15 s): deadlock?")
  finally:
    child.kill()
    child.wait()
  assert child.returncode == 0, stderr[-3000:]
  assert io.read_json(os.path.join(two, "status.json"))["num_devices"] == 2
  got = io.read_json(os.path.join(two, "metrics.json"))["members"]
  for g, w in zip(got, one["members"]):
    assert g["status"] == w["status"] == "done"
    _assert_members_close(g, w, rtol=1e-5)


# A LAPACK/BLAS custom call and its operand types in lowered StableHLO text.
_LINALG_CALL = re.compile(r"custom_call @((?:lapack|blas)_\w+)\(.*?\)\s.*?:\s*\(([^)]*)\)")


@pytest.mark.parametrize("model,constraint,depths", [
    ("rnn", "projection", (1,)), ("rnn", "cayley", (1,)), ("rnn", "expm", (1,)),
    ("lstm", "none", (1,)), ("mlp", "none", (1, 3))])
def test_every_lapack_call_takes_one_matrix(dataset, model, constraint, depths):
  """On CPU no LAPACK call of the sweep's programs gets a batch, the shape that deadlocks
  jaxlib 0.10 (see linalg.one_matrix_per_call): init's orthogonal draws (vmapped over MLP layers
  and LSTM gate blocks), the constraints' SVDs and solves, the expm (forward and backward) and
  the spectra. The unfixed programs had e.g. gesdd on (4, 8, 8) and (8, 2, 8, 8) batches."""
  config = _config(members=train.product_members(gains=(1.0, 1.5), seeds=2, depths=depths),
                   model=model, constraint=constraint)
  host = train.prepare_arrays(config, dataset)
  program = train.make_train(config, host)
  hparams = train.hparams_of(config.members, ("orthogonal",))
  states = jax.eval_shape(program.init, hparams)
  texts = [program.init.lower(hparams).as_text(),
           program.run_epoch.lower(states, np.ones(len(config.members), np.float32), host,
                                   np.int32(0)).as_text(),
           program.measure.lower(states, host.val, host.probe_x, host.probe_y).as_text()]
  calls = [call for text in texts for call in _LINALG_CALL.findall(text)]
  assert {name for name, _ in calls} >= {"lapack_sgesdd_ffi", "lapack_sgeqrf_ffi"}
  for name, operands in calls:
    ranks = [t.count("x") for t in re.findall(r"tensor<([^>]*)>", operands)]
    assert ranks[0] == 2 and max(ranks) <= 2, (name, operands)


def test_looped_linear_algebra_equals_batched(key):
  """The looped expm parametrization (values and reverse-mode gradients) and the looped
  constraint updates equal the batched ones under vmap. Same LAPACK calls on the same
  matrices, so to rounding (measured equal; atol 1e-6 on entries of size ~1)."""
  n, batch = 6, 3
  k_base, k_a, k_g = jax.random.split(key, 3)
  base = jax.vmap(lambda k: initializers.get_initializer("orthogonal")(k, (n, n)))(
      jax.random.split(k_base, batch))
  a = 0.1 * jax.random.normal(k_a, (batch, n, n))
  gain = jnp.array([1.0, 1.1, 1.2])
  config = _config(members=(train.Member("m"),), constraint="expm")

  def loss(a, base, gain, looped):
    params = {"recurrent": {"base": base, "a": a}}
    w = train.materialize(config, params, gain, one_matrix_per_call=looped)["recurrent"]
    return jnp.sum(jnp.sin(w))

  (want_value, want_grad), (value, grad) = [
      jax.jit(jax.vmap(jax.value_and_grad(functools.partial(loss, looped=looped))))(a, base, gain)
      for looped in (False, True)]
  np.testing.assert_allclose(value, want_value, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, atol=1e-6)
  assert float(jnp.max(jnp.abs(want_grad))) > 1e-2

  w = base * gain[:, None, None]
  g = jax.random.normal(k_g, (batch, n, n))
  for constraint in ("projection", "cayley"):
    config = _config(members=(train.Member("m"),), constraint=constraint)

    def step(g, w, gain, looped):
      params = {"recurrent": w}
      tx = train.make_optimizer(config, jnp.float32(0.05), gain, one_matrix_per_call=looped)
      updates, _ = tx.update({"recurrent": g}, tx.init(params), params)
      return updates["recurrent"]

    want, got = (jax.jit(jax.vmap(functools.partial(step, looped=looped)))(g, w, gain)
                 for looped in (False, True))
    assert float(jnp.max(jnp.abs(want))) > 1e-2
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=constraint)


def _watchdog_threads():
  return [t for t in threading.enumerate() if t.name == "isometry-watchdog"]


def test_watchdog_rule():
  """A warning after 10x the last epoch's time, never before 300 s (compiles take a while)."""
  assert loop.Watchdog.limit(None) == 300.0
  assert loop.Watchdog.limit(100.0) == 1000.0
  assert loop.Watchdog.limit(2.0) == 300.0


def test_watchdog_warns_while_nothing_finishes_and_stops_with_its_block(monkeypatch, caplog):
  monkeypatch.setattr(loop, "WATCHDOG_MIN_SECONDS", 0.2)
  caplog.set_level(logging.WARNING)
  with loop.Watchdog("runs/x") as watchdog:
    watchdog.progress("epoch 3", 0.01)  # limit = max(10 x 0.01, 0.2) = 0.2 s.
    time.sleep(1.0)
    assert len(_watchdog_threads()) == 1
  assert not _watchdog_threads()
  warnings = [r.getMessage() for r in caplog.records if "no progress" in r.getMessage()]
  assert warnings, caplog.text
  first = warnings[0]
  assert re.match(r"runs/x: no progress for \d+ s waiting on epoch 3 \(expected about 0\.0 s",
                  first), first
  assert "nearly idle, as in a deadlock" in first  # This thread slept: no CPU time.
  assert "time.sleep(1.0)" in first  # The waiting thread's stack.
  time.sleep(0.5)
  assert len([r for r in caplog.records if "no progress" in r.getMessage()]) == len(warnings)


def test_stalled_run_warns_and_keeps_its_results(reference, dataset, tmp_path, monkeypatch,
                                                   caplog):
  """A stall after epoch 1 (a callback that sleeps past the limit) is logged; the run's
  results are the reference's, bit for bit (same program, inputs and device), and the watchdog
  thread ends with the run."""
  monkeypatch.setattr(loop, "WATCHDOG_MIN_SECONDS", 1.0)
  caplog.set_level(logging.WARNING)

  def stall(epoch, outputs):
    del outputs
    if epoch == 1:
      time.sleep(2.5)
    return False

  metrics = train.run(
      _config(), str(tmp_path), dataset=dataset, plots=False, callback=stall).metrics
  assert not _watchdog_threads()
  assert any("no progress for" in r.getMessage() and "waiting on epoch 1" in r.getMessage()
             for r in caplog.records), caplog.text
  for got, want in zip(metrics["members"], reference["metrics"]["members"]):
    np.testing.assert_array_equal(_numbers(got), _numbers(want))


def test_mlp_depths_share_one_program(dataset, tmp_path):
  members = train.product_members(inits=("orthogonal",), gains=(1.0,), depths=(1, 3), lrs=(0.05,))
  config = train.TrainConfig(members=members, model="mlp", hidden=8, batch_size=16, epochs=1,
                             optimizer="sgd", eval_batch_size=48, val_size=48)
  metrics = train.run(config, str(tmp_path), dataset=dataset, plots=False).metrics
  shallow, deep = metrics["members"]
  assert shallow["config"]["depth"] == 1 and deep["config"]["depth"] == 3
  # Active layers only: input (+ hidden) + read-out weights; one activation per hidden layer.
  assert len(shallow["epochs"][0]["grad_norm_by_layer"]["weights"]) == 2
  assert len(deep["epochs"][0]["grad_norm_by_layer"]["weights"]) == 4
  assert len(deep["epochs"][0]["grad_norm_by_layer"]["activations"]) == 3
  assert all(m["status"] == "done" and np.isfinite(m["test_loss"]) for m in (shallow, deep))


# "projection" is the same chain-and-mask path as "margin" (margin 0), with a slower polar.
@pytest.mark.parametrize("constraint", ["cayley", "margin"])
def test_constraint_optimizers_constrain_only_the_recurrent_kernel(key, constraint):
  gain, margin, lr = 1.1, 0.05, 3e-2
  config = _config(constraint=constraint, margin=margin)
  params = models.init_rnn(key, SIDE, 8, 10, initializers.get_initializer("orthogonal", gain))
  tx = train.make_optimizer(config, jnp.float32(lr), jnp.float32(gain))
  state = tx.init(params)
  new = params
  for step in range(3):
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(key, step), p.shape), new)
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  sv = np.linalg.svd(np.asarray(new["recurrent"], np.float64), compute_uv=False)
  if constraint == "margin":
    # Clipped into the band (float32 SVD and reconstruction: 1e-5), and not all at the gain.
    assert sv.min() > gain * (1 - margin) - 1e-5 and sv.max() < gain * (1 + margin) + 1e-5
    assert np.ptp(sv) > 1e-3
  else:
    np.testing.assert_allclose(sv, gain, atol=1e-5)
  assert np.abs(np.asarray(new["recurrent"] - params["recurrent"])).max() > 1e-3
  # The other parameters take plain Adam steps: |first step| = lr per entry (up to Adam's eps).
  np.testing.assert_allclose(np.abs(np.asarray(new["bias"] - params["bias"])).max(), 3 * lr,
                             rtol=0.5)


def test_expm_materializes_a_gain_orthogonal_kernel_with_frozen_base(key):
  gain = 1.1
  config = _config(constraint="expm", members=(train.Member("expm"),))
  w0 = initializers.get_initializer("orthogonal", gain)(key, (8, 8))
  expm = constraints.init_expm(w0, gain)
  a = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (8, 8))
  params = {"recurrent": {"base": expm.base, "a": a}, "bias": jnp.zeros(8)}

  def loss(p):
    return jnp.sum(jnp.sin(train.materialize(config, p, gain)["recurrent"]))

  w = train.materialize(config, params, gain)["recurrent"]
  np.testing.assert_allclose(np.linalg.svd(np.asarray(w), compute_uv=False), gain, atol=1e-5)
  grads = jax.grad(loss)(params)
  np.testing.assert_array_equal(grads["recurrent"]["base"], 0.0)  # Frozen.
  assert np.abs(np.asarray(grads["recurrent"]["a"])).max() > 1e-3
  # a = 0 gives back the initial kernel.
  params["recurrent"]["a"] = jnp.zeros((8, 8))
  np.testing.assert_allclose(train.materialize(config, params, gain)["recurrent"], w0, atol=1e-5)
  # Without expm, params are the weights.
  assert train.materialize(_config(), params, gain) is params


def test_lstm_trains(dataset, tmp_path):
  members = (train.Member("lstm", "orthogonal", 1.0, 0.1, True, 1e-2, seed=0),)
  config = train.TrainConfig(members=members, model="lstm", hidden=4, batch_size=16, epochs=1,
                             unroll=1, eval_batch_size=48, val_size=48)
  metrics = train.run(config, str(tmp_path), dataset=dataset, plots=False).metrics
  member = metrics["members"][0]
  assert member["status"] == "done" and np.isfinite(member["test_loss"])
  with np.load(os.path.join(tmp_path, "spectra.npz")) as spectra:
    assert spectra["spectra/recurrent"].shape == (2, 1, 4, 4)  # (epochs + 1, members, gates, H)


def test_presets_and_products():
  members = train.preset_members("configs2", seeds=3)
  assert len(members) == 18 and len({m.label for m in members}) == 6
  assert {m.lr for m in members} == {presets.SEED_LEARNING_RATE}
  adjusted = [m for m in members if m.label == "Orthogonal_Gain1.025_adj_Reg1"][0]
  unadjusted = [m for m in members if m.label == "Orthogonal_Gain1.025_Reg1"][0]
  assert adjusted.penalty_gain == 1.025 and unadjusted.penalty_gain == 1.0
  assert unadjusted.gain == 1.025
  assert len(train.preset_members("configs3", seeds=1)) == 7
  assert len(train.preset_members("configs", seeds=2, lrs=(1e-4, 1e-3))) == 20
  product = train.product_members(gains=(1.0, 1.1), reg_strengths=(0.0, 0.5), seeds=2)
  assert len(product) == 8 and len({m.label for m in product}) == 4


@pytest.mark.parametrize("overrides, match", [
    (dict(hidden=0), "hidden must be > 0"),
    (dict(batch_size=-1), "batch_size must be > 0"),
    (dict(model="gru"), "unknown model"),
    (dict(regularizer="l2"), "unknown regularizer"),
    (dict(constraint="projection", model="lstm"), "rnn only"),
    (dict(members=(train.Member("x", gain=0.0),)), "gain must be > 0"),
    (dict(members=(train.Member("x", init="he"),)), "unknown initializer"),
    (dict(members=(train.Member("x"), train.Member("x"))), "two members"),
    (dict(data_dir="/nonexistent/dir"), "not a directory"),
])
def test_bad_configs_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    _config(**overrides)


@pytest.mark.parametrize("overrides, message", [
    (dict(gains=(1.0, -1.0)), "gains must be > 0, got 1,-1"),
    (dict(gains=(float("nan"),)), "gains must be > 0, got nan"),
    (dict(reg_strengths=(0.0, -0.5)), "reg_strengths must be >= 0, got 0,-0.5"),
    (dict(lr=(0.0,)), "lr must be > 0, got 0"),
    (dict(depths=(2, 0)), "depths must be >= 1, got 2,0"),
])
def test_bad_sweep_axes_name_the_axis(overrides, message):
  # The message starts with the field's name, so the scripts' flag errors name the flag.
  with pytest.raises(ValueError) as info:
    train.SweepAxes(**overrides)
  assert str(info.value) == message


def test_setup_errors_before_any_file(dataset, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(train.SetupError, match="batch_size"):
    train.run(_config(batch_size=1000), str(out), dataset=dataset, plots=False)
  assert not out.exists()


def test_signals_request_a_stop_then_force_it():
  previous = signal.getsignal(signal.SIGTERM)
  with loop.StopRequest() as stop:  # pylint: disable=protected-access
    assert stop.signal is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == "SIGTERM"  # First signal: finish the epoch, then stop.
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # Second: stop now.
  assert signal.getsignal(signal.SIGTERM) is previous


def _snapshot(folder):
  return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
          if os.path.isfile(os.path.join(folder, name))}


def test_rerun_into_a_run_stops_before_any_work_and_changes_nothing(reference, dataset):
  before = _snapshot(reference["dir"])
  with pytest.raises(train.SetupError, match="holds a done run .2 of 2 epochs.*--resume.*"
                                             "--overwrite"):
    train.run(_config(), reference["dir"], dataset=dataset, plots=False)
  assert _snapshot(reference["dir"]) == before


def test_out_dir_that_is_a_file_is_refused(dataset, tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(train.SetupError, match="is a file"):
    train.run(_config(), str(path), dataset=dataset, plots=False)


def test_killed_run_is_recognised_as_interrupted_and_resumes(reference, dataset, tmp_path):
  # SIGKILL leaves status.json at "running", and the lock dies with the process.
  out = str(tmp_path / "killed")
  shutil.copytree(reference["dir"], out)
  status = io.read_json(os.path.join(out, "status.json"))
  io.write_json(os.path.join(out, "status.json"), {**status, "status": "running"})
  seen = train.read_status(out)
  assert seen["status"] == "interrupted" and seen["killed"]
  with pytest.raises(train.SetupError, match="interrupted run .*killed.*--resume"):
    train.run(_config(), out, dataset=dataset, plots=False)
  resumed = train.run(_config(), out, dataset=dataset, plots=False, resume=True).metrics
  for got, want in zip(resumed["members"], reference["metrics"]["members"]):
    _assert_members_close(got, want, rtol=1e-6)
  assert train.read_status(out)["status"] == "done"


def test_a_live_run_keeps_its_folder(dataset, tmp_path):
  out = tmp_path / "live"
  out.mkdir()
  io.write_json(str(out / "status.json"), {"status": "running", "epochs_done": 1, "epochs": 2})
  fd = os.open(str(out / train.LOCK), os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)   # As a training process holds it.
    assert train.read_status(str(out))["status"] == "running"
    for kwargs in ({}, {"resume": True}, {"overwrite": True}):
      with pytest.raises(train.SetupError, match="in use"):
        train.run(_config(), str(out), dataset=dataset, plots=False, **kwargs)
  finally:
    os.close(fd)


def test_overwrite_replaces_a_run(reference, dataset, tmp_path):
  out = str(tmp_path / "replaced")
  shutil.copytree(reference["dir"], out)
  replaced = train.run(_config(), out, dataset=dataset, plots=False, overwrite=True).metrics
  for got, want in zip(replaced["members"], reference["metrics"]["members"]):
    _assert_members_close(got, want, rtol=1e-6)


def test_isometry_monitor_matches_the_dense_jacobian_at_init(dataset, tmp_path):
  """The monitor's moments of dh_T/dh_0 (matrix-free, 4 inputs x 8 probes) against the dense
  spectrum of the same map at the same inputs, for the orthogonal member at init."""
  config = _config(monitor_probes=8)
  metrics = train.run(config, str(tmp_path), dataset=dataset, plots=False).metrics
  params = jax.tree.map(lambda a: a[0], train.initial_params(config, dataset))
  probe_x = train.prepare_arrays(config, dataset).probe_x[:train.MONITOR_INPUTS]
  dense = [diagnostics.jacobian_spectrum(
      lambda h: models.rnn_final_state(params, x, h), np.zeros(8, np.float32)) for x in probe_x]
  mean = np.mean([d.mean() for d in dense])
  variance = np.mean([d.var() for d in dense])
  recorded = metrics["members"][0]["initial"]["jacobian"]
  assert abs(recorded["mean"] - mean) <= 5 * recorded["mean_se"] + 1e-6
  assert abs(recorded["variance"] - variance) <= 5 * recorded["variance_se"] + 1e-6
  # And after training, a record per epoch.
  assert all("jacobian" in e for e in metrics["members"][0]["epochs"])
