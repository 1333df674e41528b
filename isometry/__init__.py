"""isometry: dynamical isometry of deep tanh networks and RNNs in JAX.

The package in parts, each importing only those above it in this list:

  theory    mean field, free-probability spectra, empirical Jacobians, diagnostics of any
            function's Jacobian spectrum (`isometry.meanfield`, `freeprob`, `jacobian`,
            `diagnostics`, `rnn_meanfield`, `activations`, `initializers`)
  data      images and text as arrays (`isometry.data`)
  results   result files, statistics over seeds, figures (`isometry.results`)
  engine    models, penalties, constraints, flax faces, sweeps trained in one compiled program
            (`isometry.engine`)
  studies   the research questions answered with all of the above (`isometry.studies`)

`linalg` (XLA:CPU-safe batched linear algebra) serves every part; `cli` and `runtime` serve the
scripts. The main entry points are attributes of this package, loaded on first use so that
`import isometry` is cheap and changes nothing (no environment variable, no jax import):

  isometry.critical_point, isometry.q_star, isometry.chi          mean field
  isometry.jacobian_spectral_density, isometry.jacobian_moments   free probability
  isometry.jacobian_squared_singular_values                       Monte-Carlo Jacobians
  isometry.jacobian_spectrum, isometry.spectral_moments,
  isometry.diagnostics_summary                                    any JAX function
  isometry.TrainConfig, isometry.train                            the training engine
"""
import importlib

_ENTRY_POINTS = {
    "critical_point": ("isometry.meanfield", "critical_point"),
    "q_star": ("isometry.meanfield", "q_star"),
    "chi": ("isometry.meanfield", "chi"),
    "jacobian_spectral_density": ("isometry.freeprob", "jacobian_spectral_density"),
    "jacobian_moments": ("isometry.freeprob", "jacobian_moments"),
    "jacobian_squared_singular_values": ("isometry.jacobian", "jacobian_squared_singular_values"),
    "jacobian_spectrum": ("isometry.diagnostics", "jacobian_spectrum"),
    "spectral_moments": ("isometry.diagnostics", "spectral_moments"),
    "diagnostics_summary": ("isometry.diagnostics", "summary"),
    "TrainConfig": ("isometry.engine.train", "TrainConfig"),
    "train": ("isometry.engine.train", None),
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name):
  if name in _ENTRY_POINTS:
    module, attribute = _ENTRY_POINTS[name]
    value = importlib.import_module(module)
    if attribute is not None:
      value = getattr(value, attribute)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'isometry' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
