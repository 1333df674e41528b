"""Jacobian-spectrum diagnostics for any JAX function f: R^n -> R^m.

What is measured. J = df/dx (m x n) at one input x; its squared singular values are taken to be
the m eigenvalues lambda_1 <= ... <= lambda_m of J J^T (for m > n, m - n of them are zero). For a
square J, the case of a deep network's hidden-to-hidden map, this is exactly the law that
`isometry.freeprob` predicts, and its moments are

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
"""
import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from isometry import freeprob

PROBES = ("rademacher", "gaussian")
DENSE_AUTO_MAX = 1024   # `summary` computes the dense spectrum when max(n, m) is at most this


# ----------------------------------------------------------------------------------- helpers

def _check_input(x) -> None:
  if x.ndim != 1:
    raise ValueError(f"x must be one input vector (n,), got shape {x.shape}; vmap for a batch")


def _linear_maps(f: Callable, x: jax.Array):
  """(f(x), v -> J v, u -> J^T u) from one linearization of f at x."""
  _check_input(x)
  y, jvp = jax.linearize(f, x)
  if y.ndim != 1:
    raise ValueError(f"f must map a 1-d array to a 1-d array, got output shape {y.shape}")
  transpose = jax.linear_transpose(jvp, x)
  return y, jvp, lambda u: transpose(u)[0]


def _probes(key, num: int, size: int, dtype, probe: str) -> jax.Array:
  if probe == "rademacher":
    return jax.random.rademacher(key, (num, size), dtype)
  if probe == "gaussian":
    return jax.random.normal(key, (num, size), dtype)
  raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")


def _check_count(name: str, value: int, least: int) -> None:
  if int(value) != value or value < least:
    raise ValueError(f"{name} must be an integer >= {least}, got {value}")


# ------------------------------------------------------------------------------------ dense

def jacobian_spectrum(f: Callable, x) -> np.ndarray:
  """Squared singular values of J = df/dx at x, from the dense Jacobian.

  Args:
    f: maps an (n,) array to an (m,) array.
    x: (n,) input, or (B, n) inputs (J at each row, by `jax.vmap`). f is evaluated in x's dtype.

  Returns:
    float64 numpy array (m,) (or (B, m)), ascending: the eigenvalues of J J^T, i.e. the
    min(m, n) squared singular values of J from its float64 SVD, and m - n zeros when m > n.
  """
  x = jnp.asarray(x)
  if x.ndim not in (1, 2):
    raise ValueError(f"x must be (n,) or (B, n), got shape {x.shape}")
  n = x.shape[-1]
  m = jax.eval_shape(f, jax.ShapeDtypeStruct((n,), x.dtype)).shape
  if len(m) != 1:
    raise ValueError(f"f must map a 1-d array to a 1-d array, got output shape {m}")
  jacobian = jax.jacfwd(f) if n <= m[0] else jax.jacrev(f)
  # One compiled program rather than op-by-op dispatch of the n (or m) passes.
  jac = np.asarray(jax.jit(jax.vmap(jacobian) if x.ndim == 2 else jacobian)(x), np.float64)
  s = np.linalg.svd(jac, compute_uv=False)
  pad = m[0] - s.shape[-1]
  lam = np.concatenate([np.zeros(s.shape[:-1] + (pad,)), np.square(s)], axis=-1)
  return np.sort(lam, axis=-1)


# ---------------------------------------------------------------------------------- moments

class Moments(NamedTuple):
  """Moments of the eigenvalues of J J^T (m_k = tr((J J^T)^k) / m), each with its standard error.

  All fields are scalars in x's dtype (leading batch axes under vmap).
  """
  mean: jax.Array
  mean_se: jax.Array
  second_moment: jax.Array
  second_moment_se: jax.Array
  variance: jax.Array
  variance_se: jax.Array


def spectral_moments(f: Callable, x: jax.Array, key: jax.Array, num_probes: int = 32,
                     probe: str = "rademacher") -> Moments:
  """Mean and variance of the squared singular values of df/dx, matrix-free (Hutchinson).

  Cost: one linearization of f, then one transposed pass (J^T U) and one forward-mode pass
  (J (J^T U)) for all probes at once, as matrix-matrix products of width num_probes; memory
  O(m x num_probes) beyond f's own residuals.

  Args:
    f: maps an (n,) array to an (m,) array.
    x: (n,) input.
    key: PRNG key of the probes.
    num_probes: P >= 2.
    probe: "rademacher" (Var[u^T A u] = 2 (||A||_F^2 - sum_i A_ii^2)) or "gaussian"
      (2 ||A||_F^2).

  Returns:
    `Moments` (see the module docstring for the estimators and their standard errors).
  """
  _check_count("num_probes", num_probes, 2)
  y, jvp, vjp = _linear_maps(f, x)
  m = y.shape[0]
  u = _probes(key, num_probes, m, y.dtype, probe)
  ju = jax.vmap(vjp)(u)                       # (P, n): J^T u
  aju = jax.vmap(jvp)(ju)                     # (P, m): J J^T u
  return moments_from_probes(jnp.sum(jnp.square(ju), axis=-1) / m,
                             jnp.sum(jnp.square(aju), axis=-1) / m)


def moments_from_probes(a: jax.Array, b: jax.Array) -> Moments:
  """`Moments` from per-probe unbiased estimates a_i of m_1 and b_i of m_2.

  Args:
    a, b: (P,) one estimate per probe; or (B, P), P probes at each of B inputs, for the moments
      of the law averaged over the inputs (standard errors stratified by input: inputs are
      fixed, only probes are random).

  Returns:
    mean = mean(a), second_moment = mean(b), variance = mean(b) - (mean(a)**2 - Var(mean(a)))
    (the bracket is unbiased for m_1**2 over independent probes), standard errors from the
    per-input sample (co)variances over sqrt(P) (and B), and for the variance the delta method:
    Var(mean(b) - mean(a)**2) ~ Var(mean(b)) - 4 mean(a) Cov + 4 mean(a)**2 Var(mean(a)).
  """
  a2, b2 = jnp.atleast_2d(a), jnp.atleast_2d(b)
  inputs, num = a2.shape
  a_bar, b_bar = jnp.mean(a2, axis=-1), jnp.mean(b2, axis=-1)
  da, db = a2 - a_bar[:, None], b2 - b_bar[:, None]
  scale = (num - 1) * num * inputs**2      # sample (co)variance / P, summed over inputs / B**2
  var_m1 = jnp.sum(jnp.square(da)) / scale
  var_m2 = jnp.sum(jnp.square(db)) / scale
  cov = jnp.sum(da * db) / scale
  m1, m2 = jnp.mean(a_bar), jnp.mean(b_bar)
  variance_var = var_m2 - 4.0 * m1 * cov + 4.0 * jnp.square(m1) * var_m1
  return Moments(mean=m1, mean_se=jnp.sqrt(var_m1), second_moment=m2,
                 second_moment_se=jnp.sqrt(var_m2),
                 variance=m2 - (jnp.square(m1) - var_m1),
                 variance_se=jnp.sqrt(jnp.maximum(variance_var, 0.0)))


# ------------------------------------------------------------------------------- Lanczos

class Quadrature(NamedTuple):
  """Gauss quadrature of the spectral law of J J^T, one row per probe.

  Attributes:
    nodes: (P, k) Ritz values theta (ascending per row).
    weights: (P, k) tau >= 0, each row summing to 1; the estimated law is
      (1/P) sum_p sum_j tau_pj delta(lambda - theta_pj). Being a k-node Gauss rule, a row
      integrates polynomials of degree <= 2k - 1 exactly: sum_j tau_j theta_j = q^T A q and
      sum_j tau_j theta_j**2 = ||A q||**2 for the probe's unit vector q, which are Hutchinson's
      estimates of m_1 and m_2 (`spectral_moments`) for that probe when k >= 2.
    residuals: (P, k) ||A z - theta z|| = beta_k |Y_{k-1, j}| for each Ritz pair (theta, z): an
      eigenvalue of A lies within it of the node (Parlett 1998, Sec. 13.2); ~0 for converged
      nodes.
  """
  nodes: jax.Array
  weights: jax.Array
  residuals: jax.Array


def _lanczos(matvec: Callable, start: jax.Array, num_steps: int):
  """k = num_steps Lanczos steps with full reorthogonalization from `start` (m,).

  Returns:
    (alphas (k,), betas (k,)): T has diagonal alphas and off-diagonal betas[:-1]; betas[-1] is the
    norm of the residual after the last step.
  """
  m = start.shape[0]
  dtype = start.dtype
  basis = jnp.zeros((num_steps + 1, m), dtype).at[0].set(start / jnp.linalg.norm(start))

  def step(j, carry):
    basis, alphas, betas = carry
    q = basis[j]
    w = matvec(q)
    alphas = alphas.at[j].set(jnp.vdot(q, w))
    # Rows j+1.. of the basis are still zero, so projecting on all of it removes exactly the
    # components along q_0..q_j (alpha_j q_j and beta_{j-1} q_{j-1} among them); twice, as
    # classical Gram-Schmidt needs to reach orthogonality to rounding ("twice is enough").
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    q_next = w / jnp.where(beta > 0, beta, 1.0)
    return basis.at[j + 1].set(q_next), alphas, betas.at[j].set(beta)

  init = (basis, jnp.zeros((num_steps,), dtype), jnp.zeros((num_steps,), dtype))
  _, alphas, betas = jax.lax.fori_loop(0, num_steps, step, init)
  return alphas, betas


def _tridiagonal_eigh(alphas, betas):
  off = betas[:-1]
  t = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
  return jnp.linalg.eigh(t)


def _normal_matvec(f, x):
  y, jvp, vjp = _linear_maps(f, x)
  return y, lambda u: jvp(vjp(u))


def lanczos_quadrature(f: Callable, x: jax.Array, key: jax.Array, num_probes: int = 16,
                       num_steps: int = 32, probe: str = "rademacher") -> Quadrature:
  """Stochastic Lanczos quadrature of the law of the eigenvalues of J J^T, J = df/dx at x.

  Each probe u (m,) is normalized; for Rademacher probes u u^T / m and for Gaussian probes
  u u^T / ||u||^2 have expectation I / m, so the probe-averaged measure is unbiased for the
  spectral law. Memory O(num_probes x num_steps x m): the Lanczos bases of all probes, run
  together (vmap) so that each matvec is one batched pass through f's linearization.

  Args:
    f: maps an (n,) array to an (m,) array.
    x: (n,) input.
    key: PRNG key of the probes.
    num_probes: P >= 1.
    num_steps: k >= 1 Lanczos steps per probe (k > m is allowed; see the module docstring).
    probe: "rademacher" or "gaussian".

  Returns:
    `Quadrature` with (P, k) nodes and weights.
  """
  _check_count("num_probes", num_probes, 1)
  _check_count("num_steps", num_steps, 1)
  y, matvec = _normal_matvec(f, x)
  starts = _probes(key, num_probes, y.shape[0], y.dtype, probe)
  alphas, betas = jax.vmap(lambda s: _lanczos(matvec, s, num_steps))(starts)
  nodes, vectors = jax.vmap(_tridiagonal_eigh)(alphas, betas)
  return Quadrature(nodes=nodes, weights=jnp.square(vectors[:, 0, :]),
                    residuals=jnp.abs(betas[:, -1:] * vectors[:, -1, :]))


class Extreme(NamedTuple):
  """Top Ritz value of A = J J^T and the residual norm that bounds its distance to an eigenvalue.

  value <= s_max**2 always (Cauchy interlacing); some eigenvalue lies within `residual` of value.
  """
  value: jax.Array
  residual: jax.Array


def largest_squared_singular_value(f: Callable, x: jax.Array, key: jax.Array,
                                   num_steps: int = 32) -> Extreme:
  """s_max**2 of J = df/dx by Lanczos on J J^T from one Gaussian start vector.

  The top Ritz value converges first, at a rate set by the gap between the two largest
  eigenvalues relative to the spread of the rest; the returned residual says how far it can be
  from an eigenvalue (add steps when residual / value is not small enough). A start vector
  nearly orthogonal to the top eigenvector would delay convergence (probability ~0 for a
  Gaussian start).

  Args:
    f: maps an (n,) array to an (m,) array.
    x: (n,) input.
    key: PRNG key of the start vector.
    num_steps: k >= 1.

  Returns:
    `Extreme(value, residual)`.
  """
  quadrature = lanczos_quadrature(f, x, key, 1, num_steps, probe="gaussian")
  return Extreme(value=quadrature.nodes[0, -1], residual=quadrature.residuals[0, -1])


# ------------------------------------------------------------------------------- density

class DensityEstimate(NamedTuple):
  """Kernel-smoothed SLQ density of the eigenvalues of J J^T.

  Attributes:
    lambdas: (K,) grid, ascending, > 0.
    density: (K,) density of lambda at `lambdas` (of the part above `floor`).
    zero_mass: weight of the nodes at or below `floor` (directions with s**2 ~ 0), which a log
      axis cannot place; `density` integrates to about 1 - zero_mass.
    floor: the threshold, `relative_floor` times the largest node.
    bandwidth: the kernel's standard deviation, in decades of lambda.
    quadrature: the nodes and weights it was smoothed from.
  """
  lambdas: jax.Array
  density: jax.Array
  zero_mass: jax.Array
  floor: jax.Array
  bandwidth: jax.Array
  quadrature: Quadrature


def smooth_density(quadrature: Quadrature, lambdas: Optional[jax.Array] = None,
                   bandwidth: Optional[float] = None, relative_floor: float = 1e-7,
                   num_points: int = 400, decades: float = 8.0) -> DensityEstimate:
  """Density of lambda from a quadrature by a Gaussian kernel in log10(lambda).

  The spectra of deep networks spread over decades, so nodes are smoothed in t = log10(lambda):
  p(t) = sum_j w_j N(t; log10 theta_j, h**2) with w_j the probe-averaged weights, and the density of
  lambda is rho(lambda) = p(log10 lambda) / (lambda ln 10) (a log-normal kernel, positive support,
  scale-free). Nodes at or below floor = relative_floor * max(theta) (in float32, Lanczos cannot
  tell them from zero) go to `zero_mass` instead.

  Args:
    quadrature: from `lanczos_quadrature`.
    lambdas: grid (K,); default `num_points` log-spaced points from max(theta) 10**-decades to
      2 max(theta).
    bandwidth: h in decades; default Silverman's rule 1.06 sigma_t K_eff**(-1/5), sigma_t the
      weighted standard deviation of log10 theta and K_eff = P k the number of nodes (Silverman,
      Density Estimation, 1986, eq. 3.28), which is too smooth for multimodal laws: pass h then.
    relative_floor, num_points, decades: as above.

  Returns:
    `DensityEstimate`.
  """
  nodes = jnp.ravel(quadrature.nodes)
  weights = jnp.ravel(quadrature.weights) / quadrature.nodes.shape[0]
  top = jnp.max(nodes)
  floor = relative_floor * top
  above = nodes > floor
  t = jnp.log10(jnp.where(above, nodes, top))
  w = jnp.where(above, weights, 0.0)
  mass = jnp.sum(w)
  if bandwidth is None:
    t_mean = jnp.sum(w * t) / mass
    sigma_t = jnp.sqrt(jnp.sum(w * jnp.square(t - t_mean)) / mass)
    h = 1.06 * sigma_t * nodes.size**-0.2
    # A spectrum that is one atom (scaled orthogonal J) has sigma_t = 0: give it a visible width.
    h = jnp.maximum(h, 1e-3)
  else:
    h = jnp.asarray(bandwidth, nodes.dtype)
  if lambdas is None:
    lambdas = top * 10.0**jnp.linspace(-decades, np.log10(2.0), num_points, dtype=nodes.dtype)
  grid_t = jnp.log10(lambdas)
  z = (grid_t[:, None] - t[None, :]) / h
  p = jnp.sum(w[None, :] * jnp.exp(-0.5 * jnp.square(z)), axis=1) / (h * np.sqrt(2 * np.pi))
  density = p / (lambdas * np.log(10.0))
  return DensityEstimate(lambdas=lambdas, density=density, zero_mass=1.0 - mass, floor=floor,
                         bandwidth=h, quadrature=quadrature)


def spectral_density(f: Callable, x: jax.Array, key: jax.Array, num_probes: int = 16,
                     num_steps: int = 32, probe: str = "rademacher",
                     lambdas: Optional[jax.Array] = None, bandwidth: Optional[float] = None,
                     relative_floor: float = 1e-7) -> DensityEstimate:
  """Density of the squared singular values of df/dx by stochastic Lanczos quadrature.

  `lanczos_quadrature` followed by `smooth_density`; see those for the arguments. For the CDF
  (what KS distances compare) use `quadrature_cdf` on the returned quadrature: it needs no kernel.
  """
  quadrature = lanczos_quadrature(f, x, key, num_probes, num_steps, probe)
  return smooth_density(quadrature, lambdas, bandwidth, relative_floor)


def quadrature_cdf(quadrature: Quadrature, lambdas) -> jax.Array:
  """Estimated CDF of the eigenvalues of J J^T at `lambdas`: the quadrature's mass at <= lambda.

  By the Chebyshev-Markov-Stieltjes inequalities each probe's true CDF lies within one node
  weight of its Gauss-quadrature step function; averaging over probes leaves the probe noise,
  of standard deviation about sqrt(2 F (1 - F) / (m P)) for Rademacher probes.
  """
  lambdas = jnp.asarray(lambdas)
  nodes = quadrature.nodes.reshape(-1)
  weights = quadrature.weights.reshape(-1) / quadrature.nodes.shape[0]
  below = nodes[None, :] <= lambdas.reshape(-1)[:, None]
  return jnp.sum(jnp.where(below, weights[None, :], 0.0), axis=1).reshape(lambdas.shape)


# ------------------------------------------------------------------------------- summary

class Theory(NamedTuple):
  """A network the free-probability theory covers: h_l = W_l x_{l-1} + b_l, x_l = phi(h_l).

  L square layers, W_l = sigma_w x (Haar orthogonal) or Gaussian of variance sigma_w**2 / N,
  b_l ~ N(0, sigma_b**2), inputs at the fixed point q*(sigma_w, sigma_b), J = dx_L / dx_0.
  """
  activation: str
  sigma_w: float
  sigma_b: float
  weights: str   # "orthogonal" or "gaussian"


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a researcher reads at a glance about a Jacobian spectrum (numpy / float values).

  Every estimate comes from one SLQ run (P probes x k Lanczos steps per input): the moments are
  the quadrature's, which are Hutchinson's for the same probes; s_max2 is the largest top Ritz
  value over the probes. `dense` holds the exact spectrum where it was computed, and then
  `near_zero_fraction` uses it (otherwise the SLQ CDF, which cannot resolve eigenvalues below
  `slq_floor`).
  """
  mean: float                  # m_1 = mean squared singular value (chi**L for a deep network)
  mean_se: float
  variance: float              # m_2 - m_1**2
  variance_se: float
  spread: float                # variance / mean**2 (0 for dynamical isometry)
  spread_se: float
  depth: Optional[int]
  chi: Optional[float]         # mean**(1/depth): the mean squared singular value per layer
  s_max2: float                # largest Ritz value over probes (a lower bound on s_max**2)
  s_max2_residual: float       # an eigenvalue lies within this of s_max2
  near_zero_threshold: float   # relative threshold times mean
  near_zero_fraction: float    # fraction of squared singular values below the threshold
  quadrature: Quadrature       # SLQ nodes, weights, residuals (numpy, (inputs x probes, k))
  slq_floor: float             # largest over probes of the smallest node: below it the SLQ
                               # law is a lump (Lanczos resolves ~lambda_max / k**2 near 0)
  dense: Optional[np.ndarray]  # exact eigenvalues of J J^T (pooled over inputs, ascending)
  theory: Optional[Theory] = None
  predicted_mean: Optional[float] = None
  predicted_variance: Optional[float] = None
  predicted_spread: Optional[float] = None
  predicted_s_max2: Optional[float] = None
  predicted: Optional[freeprob.SpectralDensity] = None
  ks_slq: Optional[float] = None     # sup |F_theory - F_SLQ| over the theory's grid >= slq_floor
  ks_dense: Optional[float] = None   # freeprob.ks_distance(predicted, dense)
  theory_note: str = ""

  def as_dict(self) -> dict:
    """The scalar fields (JSON-ready; arrays and the theory's density left out)."""
    out = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None or isinstance(value, (int, float, str)):
        out[field.name] = value
    if self.theory is not None:
      out["theory"] = self.theory._asdict()
    return out


def _numpy_cdf(quad: Quadrature, lambdas: np.ndarray) -> np.ndarray:
  """`quadrature_cdf` in float64 numpy (by sorting the pooled nodes)."""
  nodes, weights = np.ravel(quad.nodes), np.ravel(quad.weights) / quad.nodes.shape[0]
  order = np.argsort(nodes)
  cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
  return cumulative[np.searchsorted(nodes[order], lambdas, side="right")]


@functools.partial(jax.jit, static_argnames=("f", "num_probes", "num_steps", "probe"))
def _quadratures(f, x, key, num_probes, num_steps, probe):
  """`lanczos_quadrature` at every row of x (B, n): (B, P, k) fields, one compiled program."""
  return jax.vmap(lambda x, k: lanczos_quadrature(f, x, k, num_probes, num_steps, probe))(
      x, jax.random.split(key, x.shape[0]))


def summary(f: Callable, x, key: jax.Array, *, depth: Optional[int] = None,
            theory: Optional[Theory] = None, num_probes: int = 32, num_steps: int = 32,
            probe: str = "rademacher", near_zero: float = 1e-3,
            dense: Optional[bool] = None, grid_points: int = 1000) -> Summary:
  """Jacobian-spectrum summary of f at x, with the free-probability prediction where it applies.

  With several inputs (x of shape (B, n)) the spectral law is pooled over them (the average of
  the per-input laws), and so are its moments (`moments_from_probes` with (B, P) estimates).

  Resolution. Lanczos nodes are spaced for a polynomial approximation on [0, lambda_max]: near
  0 they resolve about lambda_max / k**2, whatever the decades below. For spectra spread over
  decades (deep Gaussian networks, large q*), mass below `slq_floor` is lumped into the first
  nodes; `ks_slq` is therefore measured above `slq_floor` only, and the dense spectrum (or more
  steps) is what tells the bottom of such a law.

  Args:
    f: maps an (n,) array to an (m,) array; traced with jit once per call (its closed-over arrays
      become constants of the program; for a large model call the pieces inside your own jit).
    x: (n,) or (B, n) inputs. For the theory to apply they must sit at the fixed point q*
      (e.g. `meanfield.sample_inputs_at_q`) and f must be the theory's network (`Theory`).
    key: PRNG key.
    depth: L, for the per-layer chi = mean**(1/L) (and the theory).
    theory: the network's `Theory`, or None; needs `depth`.
    num_probes, num_steps, probe: of the SLQ (see `lanczos_quadrature`); both >= 2.
    near_zero: a squared singular value below near_zero * mean counts as a near-zero direction.
    dense: also compute the dense spectrum (default: when max(n, m) <= DENSE_AUTO_MAX).
    grid_points: points of the theory's `freeprob.spectral_grid`.

  Returns:
    `Summary`.
  """
  x = jnp.asarray(x)
  xs = x[None] if x.ndim == 1 else x
  if xs.ndim != 2:
    raise ValueError(f"x must be (n,) or (B, n), got shape {x.shape}")
  if theory is not None and depth is None:
    raise ValueError("a theory needs the network's depth")
  if num_steps < 2 or num_probes < 2:
    raise ValueError(f"summary needs num_steps >= 2 and num_probes >= 2 (its moments and their "
                     f"errors are the quadrature's), got {num_steps} and {num_probes}")
  per_input = _quadratures(f, xs, key, num_probes, num_steps, probe)
  nodes, weights, residuals = (np.asarray(v, np.float64) for v in per_input)
  # A k-node Gauss rule (k >= 2) integrates lambda and lambda**2 exactly: these are the
  # Hutchinson estimates of m_1 and m_2 of each (unit) probe.
  moments = moments_from_probes(jnp.asarray(np.sum(weights * nodes, axis=-1)),
                                jnp.asarray(np.sum(weights * nodes**2, axis=-1)))
  mean, variance = float(moments.mean), float(moments.variance)
  mean_se, variance_se = float(moments.mean_se), float(moments.variance_se)
  # Relative errors added in quadrature, as for a ratio of independent estimates.
  spread = variance / mean**2
  spread_se = abs(spread) * float(np.hypot(variance_se / variance if variance else 0.0,
                                           2 * mean_se / mean))
  quad = Quadrature(nodes=nodes.reshape(-1, num_steps), weights=weights.reshape(-1, num_steps),
                    residuals=residuals.reshape(-1, num_steps))
  m = int(jax.eval_shape(f, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)).shape[0])
  if dense is None:
    dense = max(xs.shape[1], m) <= DENSE_AUTO_MAX
  eigenvalues = np.sort(jacobian_spectrum(f, xs), axis=None) if dense else None
  threshold = near_zero * mean
  if eigenvalues is not None:
    near = float(np.mean(eigenvalues < threshold))
  else:
    near = float(_numpy_cdf(quad, np.array([threshold]))[0])
  floor = float(np.max(np.min(quad.nodes, axis=1)))
  top = int(np.argmax(quad.nodes[:, -1]))
  result = dict(
      mean=mean, mean_se=mean_se, variance=variance, variance_se=variance_se,
      spread=spread, spread_se=spread_se, depth=depth,
      chi=(float(np.sign(mean) * abs(mean)**(1.0 / depth)) if depth else None),
      s_max2=float(quad.nodes[top, -1]), s_max2_residual=float(quad.residuals[top, -1]),
      near_zero_threshold=float(threshold), near_zero_fraction=near, quadrature=quad,
      slq_floor=floor, dense=eigenvalues)
  if theory is None:
    return Summary(**result)
  args = (theory.activation, theory.sigma_w, theory.sigma_b, depth, theory.weights)
  p_mean, p_var = freeprob.jacobian_moments(*args)
  result.update(theory=theory, predicted_mean=p_mean, predicted_variance=p_var,
                predicted_spread=p_var / p_mean**2)
  try:
    edge = freeprob.max_squared_singular_value(*args)
    predicted = freeprob.jacobian_spectral_density(
        *args, freeprob.spectral_grid(edge, grid_points))
  except ValueError as error:   # e.g. a single atom (linear orthogonal): no density to compare
    return Summary(**result, theory_note=str(error))
  theory_cdf = freeprob.cumulative_distribution(predicted)
  slq_cdf = _numpy_cdf(quad, predicted.lambdas)
  resolved = predicted.lambdas >= floor
  result.update(predicted_s_max2=edge, predicted=predicted,
                ks_slq=float(np.max(np.abs(theory_cdf - slq_cdf)[resolved], initial=0.0)),
                ks_dense=(freeprob.ks_distance(predicted, eigenvalues)
                          if eigenvalues is not None else None))
  return Summary(**result)


def summary_figure(result: Summary, num_points: int = 400):
  """Estimated (SLQ, kernel-smoothed; dense histogram if any) and predicted densities.

  All on a log10(lambda) axis as densities of log10(lambda) (rho(lambda) lambda ln 10), like
  `isometry.plots.spectra_figure`. matplotlib is imported here, with the Agg backend; nothing is
  shown: the caller saves the returned Figure.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib.figure import Figure

  quad = Quadrature(*(jnp.asarray(v) for v in result.quadrature))
  top = max(float(np.max(result.quadrature.nodes)), result.predicted_s_max2 or 0.0)
  bottom = top * 1e-8
  if result.predicted is not None:
    bottom = max(bottom, float(result.predicted.lambdas[0]))
  lambdas = np.geomspace(bottom, 2 * top, num_points)
  est = smooth_density(quad, jnp.asarray(lambdas))
  fig = Figure(figsize=(5.0, 3.4), layout="constrained")
  ax = fig.add_subplot()
  log_lam = np.log10(lambdas)
  if result.dense is not None:
    # Normalized by all eigenvalues, so the bars hold the mass above `bottom` only.
    counts, edges = np.histogram(np.log10(result.dense[result.dense > bottom]), bins=40,
                                 range=(log_lam[0], log_lam[-1]))
    ax.stairs(counts / (result.dense.size * np.diff(edges)), edges, fill=True,
              color="tab:gray", alpha=0.35, label="dense")
  ax.plot(log_lam, np.asarray(est.density) * lambdas * np.log(10.0), "tab:blue", lw=1.5,
          label=f"SLQ (h={float(est.bandwidth):.2g} dec)")
  if result.predicted is not None:
    lam = result.predicted.lambdas
    ax.plot(np.log10(lam), result.predicted.density * lam * np.log(10.0), "k--", lw=1.2,
            label=f"free probability (KS={result.ks_slq:.3f})")
  ax.set_xlim(log_lam[0], log_lam[-1])
  ax.set_xlabel(r"$\log_{10}\lambda$ ($\lambda = s^2$)")
  ax.set_ylabel(r"density of $\log_{10}\lambda$")
  chi = f", chi={result.chi:.4f}" if result.chi is not None else ""
  ax.set_title(f"mean={result.mean:.4g}, spread={result.spread:.3g}{chi}", fontsize=9)
  ax.legend(fontsize=7)
  return fig
