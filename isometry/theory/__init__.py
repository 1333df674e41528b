"""The theory: what random deep networks do at initialization, and how to measure it.

  activations     phi and phi' by name; `homogeneous`, `bernoulli_derivative` properties.
  initializers    weight initializers f(key, shape, dtype) with a gain (orthogonal, Gaussian, ...).
  gaussian        Gaussian expectations of phi and phi' (closed forms or quadrature).
  meanfield       the variance map, q*, chi, the critical line (Poole et al. 2016).
  correlations    the correlation map, c*, depth scales, the phase diagram (Schoenholz et al. 2016).
  derivative_law, continuation, freeprob
                  the free-probability law of the Jacobian's squared singular values
                  (Pennington, Schoenholz & Ganguli 2017, 2018); `freeprob` is the face.
  jacobian        Monte-Carlo: exact Jacobian spectra of sampled networks and RNNs.
  rnn_meanfield   mean field of vanilla RNNs driven by inputs (Chen, Pennington & Schoenholz 2018).
  diagnostics     the Jacobian spectrum of any JAX function: dense, Hutchinson, Lanczos, summary.
  x64             how these functions take and give numbers (float64, tracing, checks).

This part imports nothing of the package but `isometry.linalg`.
"""
