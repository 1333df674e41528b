"""isometry: dynamical isometry of deep tanh networks and RNNs in JAX."""
