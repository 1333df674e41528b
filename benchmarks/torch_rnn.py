#!/usr/bin/env python3
"""PyTorch peer of benchmarks/rnn_step.py: the same model, loss and optimizer in torch.nn.RNN.

One tanh RNN layer (torch.nn.RNN, batch_first) with an orthogonal recurrent kernel of gain g, a
linear read-out of the last hidden state, cross-entropy plus lam * mean((W^T W / g^2 - I)^2) on
the recurrent kernel, Adam at 1e-3; random inputs (timing only). Flags and output fields match
/work/shared/bench/torch_rnn_baseline.py. Needs the `bench` extra (torch).

  python benchmarks/torch_rnn.py --steps_per_seq 28 --hidden 128 --batch 128
  python benchmarks/torch_rnn.py --steps_per_seq 784 --iters 5

Prints one JSON line.
"""
import argparse
import json
import time

LEARNING_RATE = 1e-3
WARMUP_STEPS = 5


class TorchStep:
  """A torch train step on fixed random data; `time()` runs `iters` steps and times them."""

  def __init__(self, steps_per_seq: int, hidden: int, batch: int, gain: float = 1.0,
               lam: float = 0.1, iters: int = 50, threads: int = 0, seed: int = 0):
    import numpy as np
    import torch
    if 784 % steps_per_seq:
      raise ValueError(f"steps_per_seq must divide 784, got {steps_per_seq}")
    if threads:
      torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.torch = torch
    self.iters = iters
    rng = np.random.default_rng(seed)
    inputs = 784 // steps_per_seq
    self.x = torch.from_numpy(rng.random((batch, steps_per_seq, inputs), dtype=np.float32))
    self.y = torch.from_numpy(rng.integers(0, 10, batch))
    self.rnn = torch.nn.RNN(inputs, hidden, nonlinearity="tanh", batch_first=True)
    self.readout = torch.nn.Linear(hidden, 10)
    with torch.no_grad():
      torch.nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
    self.optimizer = torch.optim.Adam(
        list(self.rnn.parameters()) + list(self.readout.parameters()), lr=LEARNING_RATE)
    self.identity = torch.eye(hidden)
    self.gain, self.lam = gain, lam
    for _ in range(WARMUP_STEPS):
      self.step()

  def step(self) -> float:
    torch = self.torch
    self.optimizer.zero_grad()
    _, last = self.rnn(self.x)  # last: (num_layers = 1, B, H)
    w = self.rnn.weight_hh_l0
    # torch computes h w^T, so w is the library's W^T and w w^T is its W^T W.
    gram = w @ w.T / self.gain**2
    loss = (torch.nn.functional.cross_entropy(self.readout(last[0]), self.y)
            + self.lam * torch.mean(torch.square(gram - self.identity)))
    loss.backward()
    self.optimizer.step()
    return loss.item()

  def time(self) -> dict:
    """{"step_s": seconds per step over `iters` steps, "cpu_s": process CPU time per step}."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(self.iters):
      self.step()
    return {"step_s": (time.perf_counter() - start) / self.iters,
            "cpu_s": (time.process_time() - cpu) / self.iters}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps_per_seq", type=int, default=28, help="28: row by row, 784: pixel by pixel")
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--gain", type=float, default=1.0)
  p.add_argument("--lam", type=float, default=0.1)
  p.add_argument("--iters", type=int, default=50,
                 help=f"timed steps, after {WARMUP_STEPS} warm-up steps")
  p.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
  a = p.parse_args(argv)
  if a.steps_per_seq < 1 or 784 % a.steps_per_seq:
    p.error(f"--steps_per_seq must divide 784, got {a.steps_per_seq}")
  for name in ("hidden", "batch", "iters"):
    if getattr(a, name) < 1:
      p.error(f"--{name} must be >= 1")
  if a.threads < 0 or not a.gain > 0:
    p.error("--threads must be >= 0 and --gain > 0")
  return a


def main(argv=None) -> dict:
  """Runs the benchmark, prints its JSON line and returns it as a dict."""
  a = parse_args(argv)
  import torch
  step = TorchStep(a.steps_per_seq, a.hidden, a.batch, a.gain, a.lam, a.iters, a.threads)
  dt = step.time()["step_s"]
  result = {"impl": "torch.nn.RNN", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "steps_per_seq": a.steps_per_seq,
            "hidden": a.hidden, "batch": a.batch, "step_ms": round(dt * 1e3, 3),
            "sequences_per_s": round(a.batch / dt, 1), "iters": a.iters}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
