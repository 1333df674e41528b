"""The estimators: the dense spectrum, Hutchinson moments, stochastic Lanczos quadrature, the
largest squared singular value, smoothed densities (see `isometry.theory.diagnostics`)."""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np



PROBES = ("rademacher", "gaussian")


def check_input(x) -> None:
  if x.ndim != 1:
    raise ValueError(f"x must be one input vector (n,), got shape {x.shape}; vmap for a batch")


def linear_maps(f: Callable, x: jax.Array):
  """(f(x), v -> J v, u -> J^T u) from one linearization of f at x."""
  check_input(x)
  y, jvp = jax.linearize(f, x)
  if y.ndim != 1:
    raise ValueError(f"f must map a 1-d array to a 1-d array, got output shape {y.shape}")
  transpose = jax.linear_transpose(jvp, x)
  return y, jvp, lambda u: transpose(u)[0]


def probes(key, num: int, size: int, dtype, probe: str) -> jax.Array:
  if probe == "rademacher":
    return jax.random.rademacher(key, (num, size), dtype)
  if probe == "gaussian":
    return jax.random.normal(key, (num, size), dtype)
  raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")


def check_count(name: str, value: int, least: int) -> None:
  if int(value) != value or value < least:
    raise ValueError(f"{name} must be an integer >= {least}, got {value}")


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
  check_count("num_probes", num_probes, 2)
  y, jvp, vjp = linear_maps(f, x)
  m = y.shape[0]
  u = probes(key, num_probes, m, y.dtype, probe)
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


def lanczos(matvec: Callable, start: jax.Array, num_steps: int):
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


def normal_matvec(f, x):
  y, jvp, vjp = linear_maps(f, x)
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
  check_count("num_probes", num_probes, 1)
  check_count("num_steps", num_steps, 1)
  y, matvec = normal_matvec(f, x)
  starts = probes(key, num_probes, y.shape[0], y.dtype, probe)
  alphas, betas = jax.vmap(lambda s: lanczos(matvec, s, num_steps))(starts)
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
