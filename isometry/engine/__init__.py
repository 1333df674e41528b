"""The training engine: models as pure functions (`models`, and flax faces in `nn`), penalties
(`regularizers`) and constraints (`constraints`, optax transformations) chosen by parameter path
(`selection`), the seed's presets (`presets`) and sweeps trained in one compiled program
(`train`). It imports the theory (initializers, activations, diagnostics), the data and the
results parts, never a study.
"""
