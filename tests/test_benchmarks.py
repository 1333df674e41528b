"""Smoke tests of the benchmarks: rnn_step.py's and torch_rnn.py's JSON lines at tiny size, and
the analytic FLOP count against the matrix products jax actually traces for the RNN's gradient.
"""
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common
from benchmarks import rnn_step
from isometry.theory import initializers
from isometry.engine import models
from isometry.engine import regularizers

TINY = ["--steps_per_seq", "28", "--hidden", "8", "--batch", "4", "--iters", "2"]
# The fields of /work/shared/bench/torch_rnn_baseline.py's JSON line, minus the library version.
SHARED_FIELDS = {"impl", "threads", "steps_per_seq", "hidden", "batch", "step_ms",
                 "sequences_per_s"}


def _check_line(line: str, result: dict):
  assert json.loads(line) == result
  assert SHARED_FIELDS <= set(result)
  assert (result["steps_per_seq"], result["hidden"], result["batch"]) == (28, 8, 4)
  assert result["threads"] >= 1
  # step_ms is (epoch - measurement) / 2 for ours, a difference of two timings: positive and
  # finite, and sequences_per_s must be the batch over it (rounding: 1 decimal of ~1e3..1e6).
  assert math.isfinite(result["step_ms"]) and result["step_ms"] > 0
  assert result["sequences_per_s"] == pytest.approx(4 / (result["step_ms"] * 1e-3), rel=2e-3)


def test_rnn_step_json_line(capsys):
  result = rnn_step.main(TINY)
  _check_line(capsys.readouterr().out.strip(), result)
  assert result["impl"] == "isometry.engine.train"
  assert result["iters"] == 2 and result["unroll"] >= 1


def test_torch_json_line(capsys):
  pytest.importorskip("torch")
  from benchmarks import torch_rnn
  result = torch_rnn.main(TINY)
  _check_line(capsys.readouterr().out.strip(), result)
  assert result["impl"] == "torch.nn.RNN"


def test_bad_steps_per_seq_exits_2():
  # The library has row (28) and pixel (784) tasks only: anything else is a usage error.
  with pytest.raises(SystemExit) as e:
    rnn_step.parse_args(["--steps_per_seq", "7"])
  assert e.value.code == 2


def _dot_flops(jaxpr) -> int:
  """2 * (multiply-adds) of every dot_general in a closed jaxpr, scan bodies times length."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * int(np.prod(out)) * int(np.prod([lhs[d] for d in lhs_contract]))
    for name, param in eqn.params.items():
      subs = param if isinstance(param, (tuple, list)) else (param,)
      for sub in subs:
        inner = getattr(sub, "jaxpr", None)
        if inner is None:
          continue
        inner = inner if hasattr(inner, "eqns") else getattr(inner, "jaxpr", None)
        if inner is None or not hasattr(inner, "eqns"):
          continue
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        total += times * _dot_flops(inner)
  return total


@pytest.mark.parametrize("steps_per_seq", [28, 784])
def test_flop_count_matches_traced_gradient(steps_per_seq, key):
  # The analytic count must equal, exactly, the matrix-product FLOPs in the jaxpr of the
  # library model's loss gradient (traced only, nothing runs): a missing or double-counted
  # product of any size changes the integer.
  hidden, batch = 8, 4
  inputs = 784 // steps_per_seq
  params = models.init_rnn(key, inputs, hidden, common.NUM_CLASSES,
                           initializers.get_initializer("orthogonal", 1.0))
  x = jnp.zeros((batch, steps_per_seq, inputs), jnp.float32)
  y = jnp.zeros((batch,), jnp.int32)

  def loss(p):
    logits = models.rnn_apply(p, x, unroll=4)
    return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            + 0.1 * regularizers.soft_orthogonality(p["recurrent"], 1.0))

  traced = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  assert traced == common.rnn_step_flops(steps_per_seq, hidden, batch)["total"]
