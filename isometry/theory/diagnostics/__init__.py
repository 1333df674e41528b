"""Jacobian-spectrum diagnostics for any JAX function f: R^n -> R^m.

What is measured. J = df/dx (m x n) at one input x; its squared singular values are taken to be
the m eigenvalues lambda_1 <= ... <= lambda_m of J J^T (for m > n, m - n of them are zero). For a
square J, the case of a deep network's hidden-to-hidden map, this is exactly the law that
`isometry.theory.freeprob` predicts, and its moments are

  m_k = tr((J J^T)^k) / m,   mean = m_1,   variance = m_2 - m_1**2,   spread = variance / mean**2.

Two ways to get them:
  - Dense (`jacobian_spectrum`): J by `jax.jacfwd` when n <= m, else `jax.jacrev` (the cost is one
    pass per column or per row), evaluated in x's dtype, then its SVD in float64 numpy. For
    widths up to a few thousand.
  - Matrix-free (everything else): J is never formed. `jax.linearize` gives v -> J v and
    `jax.linear_transpose` of it u -> J^T u, both after one primal pass; memory is that of f's
    residuals plus O(m x probes) (or O(m x probes x Lanczos steps) for the quadrature).
      * `spectral_moments`: Hutchinson's estimator (Hutchinson 1990) with probes u in R^m,
        E[u u^T] = I (Rademacher by default, which has the smaller variance; or Gaussian):
        a_i = ||J^T u_i||^2 / m and b_i = ||J J^T u_i||^2 / m are unbiased for m_1 and m_2.
        Standard errors are the probe-level sample standard deviations over sqrt(P); m_1**2 is
        estimated without bias by mean(a)**2 - s_a**2 / P (distinct probes are independent), and
        the variance's standard error comes from the delta method,
        Var(b_bar - a_bar**2) ~ (s_b**2 - 4 a_bar s_ab + 4 a_bar**2 s_a**2) / P.
      * `lanczos_quadrature` / `spectral_density`: stochastic Lanczos quadrature (Golub & Meurant
        2010; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019 for network Hessians).
        For each of P unit probes u, k steps of Lanczos on A = J J^T (matvec u -> J (J^T u)) with
        full reorthogonalization (classical Gram-Schmidt, twice, against the whole basis) give a
        k x k tridiagonal T; with T = Y diag(theta) Y^T, the nodes theta_j and weights
        tau_j = Y_{0j}**2 are the k-point Gauss quadrature of the probe's spectral measure
        sum_i (u . e_i)**2 delta(lambda - lambda_i), whose expectation over probes is the
        spectral law (1/m) sum_i delta(lambda - lambda_i). Averaging over probes gives the
        estimate of the CDF (`quadrature_cdf`); by the Chebyshev-Markov-Stieltjes inequalities
        each probe's step CDF is within one node weight of the truth at the nodes. The nodes
        are spaced as for polynomial approximation on [0, lambda_max]: near 0 they resolve only
        ~lambda_max / k**2, so the bottom of a law spread over decades is lumped into the first
        node (measure KS distances above the smallest node, or use more steps). A k-node rule
        is exact for polynomials of degree <= 2k - 1, so for k >= 2 its first two moments are
        the Hutchinson estimates of the same probes (`summary` uses this). If the Krylov space
        is exhausted (k >= m, or an invariant subspace), the next Lanczos vector is rounding
        noise orthogonal to the basis (a restart whose nodes carry weight ~0) or exactly zero
        (a zero block of weight 0).
        The density (`spectral_density`) smooths the nodes with a Gaussian kernel in
        log10(lambda) (see `smooth_density`).
      * `largest_squared_singular_value`: the top Ritz value of one Lanczos run, a lower bound on
        s_max**2, with the residual norm ||A z - theta z|| = beta_k |Y_{k-1, top}| that bounds the
        distance from theta to the nearest eigenvalue (Parlett, The Symmetric Eigenvalue
        Problem, 1998, Sec. 13.2).

Dtypes. f is evaluated in x's dtype (float32 unless x is float64 inside `jax.enable_x64`), and the
matrix-free estimates are computed in that dtype: in float32, Lanczos resolves eigenvalues down to
~1e-7 lambda_max only, and the smaller ones come out as noise near zero. The dense SVD is always
float64, of a J computed in x's dtype.

Batching and jit. Every matrix-free function is a pure, traceable function of (x, key) for a fixed
Python callable f and static sizes: wrap it in `jax.jit`, and `jax.vmap` it over a batch of inputs
(and keys). To keep a large model's parameters as arguments of the compiled program rather than
constants baked into it, close over them inside the jitted function:
  jax.jit(lambda params, x, key: spectral_moments(lambda x: model.apply(params, x), x, key))

`summary` combines all of this for one input (or a pooled batch) with the free-probability
prediction where the network is one the theory covers; `summary_figure` draws it.

Modules: `estimators` (everything above but the summary) and `summary` (`summary`, `Summary`,
`Theory`, `summary_figure`); their public names are re-exported here.
"""
from isometry.theory.diagnostics.estimators import (PROBES, DensityEstimate, Extreme, Moments,
                                                    Quadrature, jacobian_spectrum,
                                                    lanczos_quadrature,
                                                    largest_squared_singular_value,
                                                    moments_from_probes, quadrature_cdf,
                                                    smooth_density, spectral_density,
                                                    spectral_moments)
from isometry.theory.diagnostics.summary import (DENSE_AUTO_MAX, Summary, Theory, summary,
                                                 summary_figure)

__all__ = ["DENSE_AUTO_MAX", "PROBES", "DensityEstimate", "Extreme", "Moments", "Quadrature",
           "Summary", "Theory", "jacobian_spectrum", "lanczos_quadrature",
           "largest_squared_singular_value", "moments_from_probes", "quadrature_cdf",
           "smooth_density", "spectral_density", "spectral_moments", "summary", "summary_figure"]
