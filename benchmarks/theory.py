#!/usr/bin/env python3
"""Time of the theory code: the free-probability density and the Monte-Carlo Jacobian spectrum.

  - `isometry.theory.freeprob.jacobian_spectral_density` for tanh at the critical point with q* = 1
    (`meanfield.critical_point`), depth 32, orthogonal weights, on the 1000-point
    `freeprob.spectral_grid` below the spectral edge: the first call (compilation included)
    and the median of the calls after it; then the same for both weights at each of
    --case_depths (the issue's target: < 0.1 s after compilation for all of them).
  - the density across the phase diagram (issue 14): tanh, erf, hard_tanh, relu, linear at
    their critical points for q* in {1e-6, ..., 100}, L in {1, 2, 16, 256, 10000}, both weight
    laws, on `freeprob.spectral_grid_for(..., --grid)`: every case called twice, the second
    timed (after compilation; target 0.5 s), with the mass budget (trapezoid of the density in
    log lambda + mass_below + atoms - 1) and the count of ValueErrors (chi**L overflow, atoms).
    Skipped with --no_phase_diagram.
  - `correlations.phase_diagram` for tanh on the 121 x 121 grid of `scripts/phase_diagram.py`.
  - `isometry.theory.jacobian.jacobian_squared_singular_values` at the same point, width 1000, depth
    128, one network (float64: 128 QR draws, 128 products 1000 x 1000 x 1000 and one SVD).

The float64 1000 x 1000 matmul rate is measured in the same run for scale. Writes
results/benchmarks/theory.json.

  python benchmarks/theory.py
  python benchmarks/theory.py --repeats 1 --width 200 --out /tmp/theory.json
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from benchmarks import common


def _times(fn, repeats: int) -> dict:
  """First call (compile + run) and the median / all of `repeats` calls after it, seconds."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  after = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    after.append(time.perf_counter() - start)
  return {"first_call_s": round(first, 4), "median_s": round(statistics.median(after), 4),
          "min_s": round(min(after), 4), "calls_s": [round(t, 4) for t in after]}


def _phase_diagram_sweep(num: int) -> dict:
  """Density timings and mass budgets over issue 14's grid (see the module docstring)."""
  import numpy as np
  from isometry.theory import freeprob
  from isometry.theory import meanfield
  times, budgets, refused, no_critical = [], [], {}, 0
  slowest = None
  for act in ("tanh", "erf", "hard_tanh", "relu", "linear"):
    for q in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0):
      try:
        sigma_w, sigma_b = (float(v) for v in meanfield.critical_point(act, q))
      except ValueError:
        no_critical += 1
        continue
      for depth in (1, 2, 16, 256, 10000):
        for weights in freeprob.WEIGHTS:
          args = (act, sigma_w, sigma_b, depth, weights)
          try:
            grid = freeprob.spectral_grid_for(*args, num)
            freeprob.jacobian_spectral_density(*args, grid)
          except ValueError as error:
            reason = str(error).split(":")[0][:60]
            refused[reason] = refused.get(reason, 0) + 1
            continue
          start = time.perf_counter()
          result = freeprob.jacobian_spectral_density(*args, grid)
          elapsed = time.perf_counter() - start
          times.append(elapsed)
          budgets.append(float(np.trapezoid(result.density * grid, np.log(grid))
                               + result.mass_below + result.point_mass + result.top_mass - 1.0))
          if slowest is None or elapsed > slowest["s"]:
            slowest = {"s": round(elapsed, 4), "activation": act, "q_star": q, "depth": depth,
                       "weights": weights}
  row = {
      "call": f"freeprob.jacobian_spectral_density(..., spectral_grid_for(..., {num})) at the "
              "critical points of tanh, erf, hard_tanh, relu, linear; q* in {1e-6, ..., 100}, "
              "L in {1, 2, 16, 256, 10000}, both weight laws",
      "grid_points": num, "target_s": 0.5, "solved": len(times),
      "refused_value_errors": refused, "q_star_without_critical_point": no_critical,
      "max_s": round(max(times), 4), "median_s": round(statistics.median(times), 4),
      "slowest": slowest,
      "worst_mass_budget": float(max(budgets, key=abs)),
  }
  print(f"phase-diagram sweep: {row['solved']} densities, max {row['max_s']} s, median "
        f"{row['median_s']} s, worst mass budget {row['worst_mass_budget']:.2e}", file=sys.stderr,
        flush=True)
  return row


def _mean_field_phase_diagram() -> dict:
  import numpy as np
  from isometry.theory import correlations
  sigma_w2, sigma_b2 = np.linspace(0.5, 4.0, 121), np.linspace(0.0, 0.5, 121)
  times = _times(lambda: correlations.phase_diagram("tanh", sigma_w2, sigma_b2), 2)
  print(f"correlations.phase_diagram tanh 121 x 121: {times}", file=sys.stderr, flush=True)
  return {"call": "correlations.phase_diagram('tanh', linspace(0.5, 4, 121), linspace(0, 0.5, 121))",
          **times}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--grid", type=int, default=1000, help="points of the density's grid")
  p.add_argument("--density_depth", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5, help="density calls after the first")
  p.add_argument("--case_depths", default="2,8,32,128",
                 help="comma-separated depths of the per-case density timings ('' for none)")
  p.add_argument("--width", type=int, default=1000)
  p.add_argument("--depth", type=int, default=128)
  p.add_argument("--jacobian_repeats", type=int, default=2,
                 help="Monte-Carlo spectrum calls after the first")
  p.add_argument("--no_phase_diagram", action="store_true",
                 help="skip the density sweep over the phase diagram and the mean-field diagram")
  p.add_argument("--max_load", type=float, default=2.0)
  p.add_argument("--wait_s", type=float, default=0.0)
  p.add_argument("--out", default=os.path.join(common.RESULTS, "theory.json"))
  a = p.parse_args(argv)
  if min(a.grid - 1, a.density_depth, a.repeats, a.width, a.depth, a.jacobian_repeats) < 1:
    p.error("--grid must be >= 2 and the other sizes >= 1")
  try:
    a.case_depths = tuple(int(d) for d in a.case_depths.split(",") if d.strip())
  except ValueError:
    p.error(f"--case_depths must be comma-separated integers, got {a.case_depths!r}")
  if any(d < 1 for d in a.case_depths):
    p.error("--case_depths must be >= 1")
  return a


def main(argv=None) -> dict:
  a = parse_args(argv)
  quiet = common.wait_for_quiet(a.max_load, a.wait_s)
  import jax
  import numpy as np
  from isometry.theory import freeprob
  from isometry.results import io
  from isometry.theory import jacobian
  from isometry.theory import meanfield

  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point("tanh", 1.0))
  edge = freeprob.max_squared_singular_value("tanh", sigma_w, sigma_b, a.density_depth,
                                             "orthogonal")
  grid = freeprob.spectral_grid(edge, a.grid)
  last = {}

  def density():
    last["density"] = freeprob.jacobian_spectral_density(
        "tanh", sigma_w, sigma_b, a.density_depth, "orthogonal", grid)

  density_times = _times(density, a.repeats)
  result_density = last["density"]
  print(f"density: {density_times}", file=sys.stderr, flush=True)

  cases = []
  for weights in freeprob.WEIGHTS:
    for depth in a.case_depths:
      case_grid = freeprob.spectral_grid(
          freeprob.max_squared_singular_value("tanh", sigma_w, sigma_b, depth, weights), a.grid)

      def case():
        last["case"] = freeprob.jacobian_spectral_density(
            "tanh", sigma_w, sigma_b, depth, weights, case_grid)

      times = _times(case, a.repeats)
      cases.append({"weights": weights, "depth": depth, **times,
                    "max_residual": float(np.max(last["case"].residual))})
      print(f"density {weights} L={depth}: {times}", file=sys.stderr, flush=True)

  grid_sweep = None if a.no_phase_diagram else _phase_diagram_sweep(a.grid)
  mean_field = None if a.no_phase_diagram else _mean_field_phase_diagram()

  key = jax.random.key(0)

  def spectrum():
    last["spectrum"] = jacobian.jacobian_squared_singular_values(
        key, "tanh", "orthogonal", sigma_w, sigma_b, a.depth, a.width, 1)

  spectrum_times = _times(spectrum, a.jacobian_repeats)
  print(f"spectrum: {spectrum_times}", file=sys.stderr, flush=True)
  n = 1000
  with jax.enable_x64(True):
    rates = common.matmul_rates(sizes=(n,), repeats=3, dtype="float64")
  matmul_flops = 2 * a.depth * a.width**3

  result = {
      "benchmark": "theory timings", "machine": common.machine_info(),
      "load_at_start": quiet["load"], "quiet_at_start": quiet["quiet"], "max_load": a.max_load,
      "spectral_density": {
          "call": "freeprob.jacobian_spectral_density('tanh', sigma_w, sigma_b, "
                  f"{a.density_depth}, 'orthogonal', spectral_grid(edge, {a.grid}))",
          "sigma_w": sigma_w, "sigma_b": sigma_b, "q_star": 1.0, "grid_points": a.grid,
          "depth": a.density_depth, **density_times, "target_s": 0.1,
          "max_residual": float(np.max(result_density.residual)),
      },
      "spectral_density_cases": {
          "call": "freeprob.jacobian_spectral_density('tanh', sigma_w, sigma_b, depth, weights, "
                  f"spectral_grid(edge, {a.grid})) at q* = 1",
          "target_s": 0.1,
          "cases": cases,
          "worst_median_s": max((c["median_s"] for c in cases), default=None),
      },
      "spectral_density_phase_diagram": grid_sweep,
      "meanfield_phase_diagram": mean_field,
      "jacobian_spectrum": {
          "call": "jacobian.jacobian_squared_singular_values(key, 'tanh', 'orthogonal', "
                  f"sigma_w, sigma_b, {a.depth}, {a.width}, 1)",
          "width": a.width, "depth": a.depth, "num_networks": 1, "dtype": "float64",
          **spectrum_times,
          "layer_product_gflops": round(matmul_flops / spectrum_times["median_s"] / 1e9, 2),
          "note": "layer_product_gflops counts only the depth products W_l @ J (2 N^3 each); "
                  "the QR draws of the orthogonal weights and the final SVD are extra work",
          "squared_singular_values_range": [float(np.min(last["spectrum"])),
                                            float(np.max(last["spectrum"]))],
      },
      "matmul_rate_float64": rates,
      "load_at_end": common.load_average(),
  }
  io.write_json(a.out, result)
  print(json.dumps({"density_s": density_times["median_s"],
                    "density_first_call_s": density_times["first_call_s"],
                    "density_cases_worst_median_s":
                        result["spectral_density_cases"]["worst_median_s"],
                    "jacobian_s": spectrum_times["median_s"]}))
  return result


if __name__ == "__main__":
  main()
