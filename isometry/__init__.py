"""isometry: dynamical isometry of deep tanh networks and RNNs in JAX.

The package in parts, each importing only those above it in this list:

  theory    mean field, free-probability spectra, empirical Jacobians, diagnostics of any
            function's Jacobian spectrum (`isometry.theory.meanfield`, `freeprob`, `jacobian`,
            `diagnostics`, `rnn_meanfield`, `activations`, `initializers`)
  data      images and text as arrays (`isometry.data`)
  results   result files, statistics over seeds, figures (`isometry.results`)
  engine    models, penalties, constraints, flax faces, sweeps trained in one compiled program
            (`isometry.engine`)
  studies   the research questions answered with all of the above (`isometry.studies`)

`linalg` (XLA:CPU-safe batched linear algebra) serves every part; `processes` (one program over
several processes, `jax.distributed`) serves the engine, the studies and the scripts; `cli` and
`runtime` serve the scripts. The main entry points are attributes of this package, loaded on first use so that
`import isometry` is cheap and changes nothing (no environment variable, no jax import):

  isometry.critical_point, isometry.q_star, isometry.chi          mean field
  isometry.jacobian_spectral_density, isometry.jacobian_moments   free probability
  isometry.jacobian_squared_singular_values                       Monte-Carlo Jacobians
  isometry.jacobian_spectrum, isometry.spectral_moments,
  isometry.diagnostics_summary                                    any JAX function
  isometry.critical_mlp, isometry.RNNCell                         flax modules made critical
  isometry.riemannian_adam, isometry.select_leaves                constraints on any parameter tree
  isometry.TrainConfig, isometry.train                            the training engine
  isometry.paired_difference, isometry.holm                       statistics over paired seeds

The parts themselves (`isometry.theory`, `isometry.engine`, ...) load the same way.
"""
import importlib

_ENTRY_POINTS = {
    "critical_point": ("isometry.theory.meanfield", "critical_point"),
    "q_star": ("isometry.theory.meanfield", "q_star"),
    "chi": ("isometry.theory.meanfield", "chi"),
    "jacobian_spectral_density": ("isometry.theory.freeprob", "jacobian_spectral_density"),
    "jacobian_moments": ("isometry.theory.freeprob", "jacobian_moments"),
    "jacobian_squared_singular_values": ("isometry.theory.jacobian",
                                         "jacobian_squared_singular_values"),
    "jacobian_spectrum": ("isometry.theory.diagnostics", "jacobian_spectrum"),
    "spectral_moments": ("isometry.theory.diagnostics", "spectral_moments"),
    "diagnostics_summary": ("isometry.theory.diagnostics", "summary"),
    "critical_mlp": ("isometry.engine.nn", "critical_mlp"),
    "RNNCell": ("isometry.engine.nn", "RNNCell"),
    "riemannian_adam": ("isometry.engine.constraints", "riemannian_adam"),
    "select_leaves": ("isometry.engine.selection", "mask"),
    "TrainConfig": ("isometry.engine.train", "TrainConfig"),
    "train": ("isometry.engine.train", None),
    "paired_difference": ("isometry.results.stats", "paired_difference"),
    "holm": ("isometry.results.stats", "holm"),
}
_PARTS = ("theory", "data", "results", "engine", "studies", "cli", "linalg", "runtime",
          "processes")

__all__ = sorted(_ENTRY_POINTS) + list(_PARTS)


def __getattr__(name):
  if name in _ENTRY_POINTS:
    module, attribute = _ENTRY_POINTS[name]
    value = importlib.import_module(module)
    if attribute is not None:
      value = getattr(value, attribute)
    globals()[name] = value
    return value
  if name in _PARTS:
    return importlib.import_module(f"isometry.{name}")
  raise AttributeError(f"module 'isometry' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
