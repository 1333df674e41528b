"""The seed experiment's named configurations (Hlav 2019, notebook OrthogonalRegRNNSV.ipynb).

A Keras SimpleRNN (tanh, 128 units) reads row-by-row sequential MNIST (28 steps of 28 pixels),
48k/12k/10k train/val/test, Adam at lr 1e-4, batch 128, 50 epochs. The recurrent kernel W starts
orthogonal with gain g (or Glorot) and is penalised with

    reg * mean((W^T W / g_p^2 - 1)^2)                        (the notebook's Keras regularizer)

where g_p is the init gain ("gain-adjusted") or 1 ("unadjusted"). The paper's eq. 11 writes
reg * ||W W^T / g^2 - I||_F^2 instead; the notebook subtracts 1 from every entry of the Gram
matrix, not the identity. The presets reproduce the notebook, so they name the regularizer
"notebook_so"; pass another name (e.g. "so", eq. 11) to run the same sweep with that penalty.

Each preset is a tuple of `PresetConfig`s; `isometry.engine.train` turns them into sweep members
(one per config and seed) that share one compiled program.
"""
import dataclasses

# Training settings of the seed notebook (the flags' defaults in scripts/train_rnn.py).
SEED_LEARNING_RATE = 1e-4
SEED_BATCH_SIZE = 128
SEED_HIDDEN = 128
SEED_EPOCHS = 50
SEED_REGULARIZER = "notebook_so"


@dataclasses.dataclass(frozen=True)
class PresetConfig:
  """One named configuration of the recurrent kernel.

  Attributes:
    label: the notebook's name for it.
    init: initializer name (isometry.theory.initializers) of the recurrent kernel.
    gain: init gain g.
    reg_strength: penalty strength (0: no penalty).
    gain_adjusted: penalty on W^T W / g^2 (True) or on W^T W (False, the "unadjusted" runs).
  """
  label: str
  init: str
  gain: float
  reg_strength: float = 0.0
  gain_adjusted: bool = True


def _gain_study(gain: float) -> tuple:
  """configs2/configs3's four regularized runs at init gain `gain`."""
  return (
      PresetConfig(f"Orthogonal_Gain{gain}_adj_Reg1", "orthogonal", gain, 1.0, True),
      PresetConfig(f"Orthogonal_Gain{gain}_adj_Reg0.5", "orthogonal", gain, 0.5, True),
      PresetConfig(f"Orthogonal_Gain{gain}_Reg1", "orthogonal", gain, 1.0, False),
      PresetConfig(f"Orthogonal_Gain{gain}_Reg0.5", "orthogonal", gain, 0.5, False),
  )


PRESETS = {
    "configs": (
        PresetConfig("Orthogonal_Reg_0.01", "orthogonal", 1.0, 0.01),
        PresetConfig("Orthogonal_Reg_0.1", "orthogonal", 1.0, 0.1),
        PresetConfig("Orthogonal_Reg_0.5", "orthogonal", 1.0, 0.5),
        PresetConfig("Orthogonal_NoReg", "orthogonal", 1.0),
        PresetConfig("NoOrthogonal", "glorot_uniform", 1.0),
    ),
    "configs2": _gain_study(1.025) + (
        PresetConfig("Orthogonal_NoReg", "orthogonal", 1.0),
        PresetConfig("NoOrthogonal", "glorot_normal", 1.0),
    ),
    "configs3": _gain_study(1.25) + (
        PresetConfig("Orthogonal_Gain1.25_NoReg", "orthogonal", 1.25),
        PresetConfig("Orthogonal_NoReg", "orthogonal", 1.0),
        PresetConfig("NoOrthogonal", "glorot_uniform", 1.0),
    ),
}

NAMES = tuple(PRESETS)


def get_preset(name: str) -> tuple:
  """The configurations of preset `name`; raises ValueError naming the known ones otherwise."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)}") from None
