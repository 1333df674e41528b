"""The studies: uses of the library that answer the research questions (results/README.md).

Every study is a config, the sweeps it trains (or the computations it runs) and an analysis; the
running, resuming, reading back, per-seed statistics and the scripts' command line live once, in
`harness` and `cli`. The library never imports this package, and no study imports another.

  gradients (A)     gradient norms through depth (MLPs at init, against mean field) and
                    through time (gradients_rnn: the RNN, trained).
  convergence (B)   steps to a loss threshold, deep vs shallow, orthogonal vs Gaussian.
  accuracy (C)      accuracy vs depth with and without dynamical isometry.
  constraints (D)   hard orthogonality constraints against soft penalties and none.
  benefit (E)       how depth and sequence length change the penalty's benefit.
  rnn_gain          the data-driven critical gain of the seed's RNN, trained (its mean
                    field, measured growth and spectra: rnn_gain_theory).
  seed_claim        the seed's gain-adjusted-penalty claim.
"""
