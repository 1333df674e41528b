"""The studies: uses of the library that answer the research questions (results/README.md).

Every study is a config, the sweeps it trains (or the computations it runs) and an analysis; the
running, resuming, reading back, per-seed statistics and the scripts' command line live once, in
`harness` and `cli`. The library never imports this package, and no study imports another
(but C, which takes A's critical_sigma_w until `meanfield.critical_sigma_w` is on main).

  gradients (A)     gradient norms through depth (MLPs at init, against mean field) and
                    through time (gradients_rnn: the RNN, trained).
  convergence (B)   steps to a loss threshold, deep vs shallow, orthogonal vs Gaussian.
  accuracy (C)      accuracy vs depth with and without dynamical isometry.
  constraints (D)   hard orthogonality constraints against soft penalties and none.
  benefit (E)       how depth and sequence length change the penalty's benefit.
  rnn_gain          the data-driven critical gain of the seed's RNN, trained (its mean
                    field, measured growth and spectra: rnn_gain_theory).
  seed_claim        the seed's gain-adjusted-penalty claim.

Thread settings. Python runs this file before any module of the package, so this is the one
place the studies set them: jax's CPU QR and SVD (orthogonal draws, spectra) call OpenBLAS,
whose own threads fight XLA's for the cores (a width-1000 QR took 4.4 s with OpenBLAS's default
threads and 0.6 s with one, 2-core machine, loaded). It must be set before numpy loads OpenBLAS;
an explicit setting wins.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def single_threaded_xla() -> None:
  """Turns XLA:CPU's Eigen thread pool off (before the first computation; a user's XLA_FLAGS
  setting of it wins).

  With jaxlib 0.10.2 on CPU a training sweep of study C hung for good after its last epoch
  (every XLA worker idle, the caller waiting on a batched LAPACK call; seen once in two tries);
  with the Eigen pool off it has not. On 2 shared cores the lost intra-op parallelism costs little.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()
