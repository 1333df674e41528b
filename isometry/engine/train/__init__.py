"""Sweeps of RNN / LSTM / deep-MLP classifiers trained in ONE compiled program.

A sweep is a tuple of `Member`s: per-member scalars (gain, penalty strength, learning rate, seed,
init choice, gain-adjusted penalty, MLP depth) that differ only in value, so that

    run_epoch = jit(vmap(one member's epoch))

trains all of them at once. One epoch is a `lax.scan` over the steps, batches are gathered by
index from the dataset kept on device, and each epoch ends with the validation metrics, the
singular values of the tracked weights (one SVD per epoch, not per step) and gradient norms on a
fixed probe batch (RNN: ||dL/dh_t|| for every t, read as the gradient w.r.t. a zero perturbation
added to h_t; MLP: ||dL/dW_l|| and ||dL/dh_l|| for every layer). With several local devices the
member axis is sharded over a 1-d mesh (members padded to a multiple of the device count).

A Python loop over epochs calls `run_epoch` (compiled once for the whole sweep), logs one line,
and writes atomically, after every epoch, to `out_dir`:
  config.json   the TrainConfig.
  status.json   {"status": "running" | "done" | "diverged" | "interrupted", ...}; "diverged" when
                every member diverged (a sweep with some diverged members is "done" and lists them).
  metrics.json  {"members": [{"config", "status", "diverged_epoch", "initial", "epochs": [...],
                "test_loss", "test_accuracy"}], "configs": per-label test summary over seeds}.
  spectra.npz   full singular-value spectra and gradient norms per epoch (index 0 = init).
  checkpoint.npz the full training state and history; `run(..., resume=True)` continues from it to
                the same final metrics as an uninterrupted run (epoch e's batches come from
                fold_in(key(seed), e), nothing depends on the Python loop's history).
SIGINT/SIGTERM stop the run after the current epoch with status "interrupted" (a second signal
stops at once); finished epochs stay on disk. A run with no finished epoch for max(10x the last
epoch's time, 300 s) logs a warning (see `run`). A member whose loss or parameters turn non-finite
is marked diverged at that epoch and its parameters are frozen (`jnp.where` keeps the last finite
values), so it cannot poison the others.

References:
  M. Hlav, Dynamical isometry as a consequence of weight orthogonality, 2019 (the seed notebook

Modules: `sweep` (Member, TrainConfig, sweep builders), `feed` (the data as the programs read
it), `programs` (the compiled programs), `records` (the files a run writes and reads back),
`loop` (`run`). The names below are the public face; import this package, not its modules.
"""
from isometry.engine.train.feed import Arrays, EvalSet, num_classes, prepare_arrays
from isometry.engine.train.loop import RunResult, initial_params, run
from isometry.engine.train.programs import (KERNELS, MONITOR_INPUTS, Program, hparams_of,
                                            make_optimizer, make_train, materialize)
from isometry.engine.train.records import (CHECKPOINT, LOCK, MAX_JSON_TIME_STEPS, RUN_FILES,
                                           read_status, tracked_singular_values)
from isometry.engine.train.sweep import (MODELS, NUM_CLASSES, OPTIMIZERS, Member, SetupError,
                                         SweepAxes, TrainConfig, preset_members,
                                         product_members)

__all__ = ["Arrays", "CHECKPOINT", "EvalSet", "KERNELS", "LOCK", "MAX_JSON_TIME_STEPS", "MODELS",
           "MONITOR_INPUTS", "Member", "NUM_CLASSES", "OPTIMIZERS", "Program", "RUN_FILES",
           "RunResult", "SetupError", "SweepAxes", "TrainConfig", "hparams_of", "initial_params",
           "make_optimizer", "make_train", "materialize", "num_classes", "prepare_arrays",
           "preset_members", "product_members", "read_status", "run", "tracked_singular_values"]
