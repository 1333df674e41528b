"""Finite-width moments of the Jacobian spectrum: many networks against theory with and without 1/N.

The estimand. For one network, J = D_L W_L ... D_1 W_1 at an input x_0 at the fixed point, and its
spectral moments are m_1 = tr(J J^T) / N, m_2 = tr((J J^T)^2) / N and the variance
var = m_2 - m_1**2 of the squared singular values. We report E[m_1] and E[var] over networks
(weights, biases, input), with 95% t-intervals over independent networks, beside the spread of
the per-network values (quantiles, and Var(m_1) across networks). Free probability predicts the
N -> infinity limit at fixed L: E[m_1] = chi**L and E[var] = L chi**(2L) s with
s = mu_2 / mu_1**2 - 1 - s_1 (`freeprob.jacobian_moments`).

`spectra.py` (the README table) pools the eigenvalues of n networks instead: its "mean" is the
average of the n per-network m_1 (the same estimand), but its "variance" is the variance of the
pooled eigenvalues, mean(var_i) + (1/n) sum_i (m_1,i - mean m_1)**2, whose expectation is
E[var] + (1 - 1/n) Var(m_1): with three networks it estimates E[var] + (2/3) Var(m_1).

Monte-Carlo (`sample_moments`). J is never formed. P Gaussian probes U (N x P) ride along the
forward pass, V_l = D_l W_l V_{l-1}, V_0 = U, so V_L = J U; with Gram matrix G = V_L^T V_L,
  m_1 ~ mean_p G_pp / N,  m_2 ~ mean_{p != q} G_pq**2 / N,  m_1**2 ~ mean_{p != q} G_pp G_qq / N**2
are unbiased for the network's m_1, m_2 and m_1**2 (E[u^T A u] = tr A, E[(u^T A u')**2] = tr A**2
for independent isotropic u, u'; A = J^T J), so var = m_2 - m_1**2 is unbiased too. The probe
noise is part of the spread between networks and hence of the intervals; splitting the probes in
halves estimates its share (`probe_variance`). Every depth of a chain is a prefix of the deepest.

The cost is set by a distributional identity, not by the N x N matrices. Layer l acts only on the
k = P + 1 columns X = [x_{l-1}, V_{l-1}], which are independent of W_l. Write X = Q R with
R^T R = X^T X (R from the Cholesky factor of the k x k Gram matrix) and Q orthonormal. Then
W_l X = (W_l Q) R, and W_l Q is a Haar-distributed N x k frame for Haar W_l (any fixed
orthonormal Q is mapped to one), and an N x k matrix of i.i.d. N(0, sigma_w**2 / N) entries for
Gaussian W_l. So W_l X has exactly the law it has in the full network, and is drawn as
  orthogonal: sigma_w Z L_Z^{-T} R,   Gaussian: sigma_w / sqrt(N) Z R,
with Z an N x k standard Gaussian matrix and L_Z L_Z^T = Z^T Z (Z L_Z^{-T} is the Q factor of Z
with a positive diagonal R factor: Haar on the Stiefel manifold; Stewart 1980, Mezzadri 2007).
A layer costs O(N k**2) instead of the O(N**3) of a QR of an N x N Gaussian matrix (~1 s at
N = 2000 in float64), and nothing of size N x N is ever drawn: at N = 2000, P = 64 a layer takes
a few ms. The k x k Cholesky factorizations and triangular inverse are written out as k-step loops
rather than LAPACK calls, because batched LAPACK calls deadlock XLA:CPU on this jax (see
`isometry.linalg`); the Cholesky factor of the (possibly numerically singular) Gram
matrix of X is taken positive semi-definite, dropping directions below ~1e-13 of its largest
diagonal entry, which changes m_1 and m_2 by less than that relative amount. All Gaussian draws
(inputs, probes, biases, Z) are made in float32 (4x faster than float64 on this CPU, and the
float64 sampler costs seconds of compile per call site) and used in float64. All laws and
models of a width share the draws (common random numbers).

Theory (`recursion`, `continuum`, `layer_constants`, `predictions`). The derivation, step by step;
each step is checked numerically in tests/test_finite_width.py or by the Monte-Carlo of the study
`isometry.studies.finite_width`.
chi = 1 throughout (the critical line).

1. Products of independent layers, exact at every N. Let A = J J^T, a = tr A / N = m_1,
   b = tr A**2 / N = m_2, and replace D_l**2 by diag(c), c_i i.i.d. copies of phi'(h)**2,
   h ~ N(0, q*), independent of the W's and of the past (the "independent layers" model;
   c1 = mean_i c_i, c2 = mean_i c_i**2). A layer maps A to D W A W^T D. Write W = sigma_w O with
   M = O A O^T (Haar O) or W = sigma_w G / sqrt(N) with M = G A G^T / N (G i.i.d. N(0, 1)), so
   that a' = (sigma_w**2 / N) sum_i c_i M_ii and b' = (sigma_w**4 / N) sum_ij c_i c_j M_ij**2.
   Given A (T1 = tr A, T2 = tr A**2) the moments of M that enter are, for i != j,
     Gaussian: E[M_ii**2] = (2 T2 + T1**2) / N**2,   E[M_ii M_jj] = T1**2 / N**2,
               E[M_ij**2] = T2 / N**2;
     Haar (Weingarten: E[O_ik**4] = 3 / (N (N+2)), E[O_ik**2 O_il**2] = 1 / (N (N+2)),
     E[O_ik**2 O_jl**2] = (N+1) / (N (N-1) (N+2)), E[O_ik O_jk O_il O_jl] = -1 / (N (N-1) (N+2))):
               E[M_ii**2] = (2 T2 + T1**2) / (N (N+2)),
               E[M_ii M_jj] = T2 / (N (N+2)) + (T1**2 - T2) (N+1) / (N (N-1) (N+2)),
               E[M_ij**2] = (N T2 - T1**2) / (N (N-1) (N+2)).
   Hence E[a'**2] = sigma_w**4 / N**2 (N c2 E[M_ii**2] + (N**2 c1**2 - N c2) E[M_ii M_jj]) and
   E[b'] = sigma_w**4 / N (N c2 E[M_ii**2] + (N**2 c1**2 - N c2) E[M_ij**2]), both linear in
   (a**2, b) (for Gaussian W: E[a'**2] = sigma_w**4 (c1**2 a**2 + 2 c2 b / N**2),
   E[b'] = sigma_w**4 (c2 a**2 + (c1**2 + c2 / N) b)). So x_l = E[a_l**2] and y_l = E[b_l] obey
   an exact 2 x 2 linear recursion from x_0 = y_0 = 1 (A_0 = I) with the layer statistics
     M = sigma_w**4 E[c1**2] = 1 + (r - 1) / N,   p = sigma_w**4 E[c2] = r,   r = mu_2 / mu_1**2,
   and E[m_1] = 1, E[m_1**2] = x_L, E[m_2] = y_L, E[var] = y_L - x_L, Var(m_1) = x_L - 1.
   Checks: linear Gaussian layers (r = 1) at L = 1 give the Wishart values E[m_2] = 2 + 1/N and
   E[m_1**2] = 1 + 2/N**2; linear orthogonal layers stay isometries; dense products of
   independent layers at N = 8.

2. The continuum limit (L, N -> infinity at tau = L / N fixed). With M = 1 + v / N (v = r - 1
   for independent layers) and s = r - 1 - s_1 (r - 1 orthogonal, r Gaussian: the
   infinite-width spread, E[var] = s L), x_l -> X(tau) and y_l -> N Y(tau) with
     X' = v X + 2 s Y,   Y' = s X + (v + s) Y,   X(0) = 1, Y(0) = 0,
   a matrix with eigenvalues v + 2 s and v - s, so
     X = e^{v tau} (e^{2 s tau} + 2 e^{-s tau}) / 3,   Y = e^{v tau} (e^{2 s tau} - e^{-s tau}) / 3,
     E[var] = N Y + O(1) = s L (1 + (v + s / 2) tau + O(tau**2)),   Var(m_1) = X - 1 ~ v tau.
   The variance exceeds its infinite-width value by a relative (v + s / 2) L / N: (3 s / 2) L / N
   (orthogonal) and ((3 r - 2) / 2) L / N (Gaussian) for independent layers. For a unit probe u,
   E_u[(u^T A u)**2] = (tr(A)**2 + 2 tr(A**2)) / (N (N + 2)) gives
   E||J u||**4 = N / (N + 2) (x + 2 y / N) -> X + 2 Y = e^{(v + 2 s) tau}: log ||J u||**2 is
   asymptotically Gaussian with variance (v + 2 s) L / N, the log-normal law of Hanin & Nica
   (2019, "Products of many large random matrices and gradients in deep neural networks",
   Comm. Math. Phys. 376): for relu with Gaussian weights (r = 2, v = 1, s = 2) this is their
   5 beta, beta = sum_l 1 / n_l. Per layer, f_l = ||D_l W_l u||**2 has Var f_l = (v + 2 s) / N,
   exactly (3 r - 1) / N (Gaussian) and 3 (r - 1) / (N + 2) (orthogonal) for independent layers.
   The value (2 / N)(r - 1 - s_1) = 2 s / N that one gets by treating the f_l of a direction as
   the whole story is only the part that feeds E[m_2]; the fluctuation v / N of the layer's mean
   of D**2, shared by all directions, feeds Var(m_1) (E[m_1**2]) instead, and E[m_1] stays 1.

3. The network: D_l depends on the forward pass. Three effects, each O(1/N) per layer, compound
   into O(L / N). Gaussian integrals at q*: h ~ N(0, q*), q_s = q* - sigma_b**2 (the variance of
   W x), m_F(q) = E[F(sqrt(q) z)] with m_F' = E[F''] / 2 and m_F'' = E[F''''] / 4 (heat
   equation), mu_1 = m_{phi'^2}, kappa = sigma_w**2 m_{phi^2}'(q*) the slope of the q-map; o = 1
   for Haar and 0 for Gaussian W.
   (a) The pre-activation variance given the past, qhat_l = sigma_w**2 |x_{l-1}|**2 / N +
       sigma_b**2, is an AR(1) chain, qhat_{l+1} - q* = kappa (qhat_l - q*) + sigma_w**2 A_l +
       sigma_w**2 m_{phi^2}'' (qhat_l - q*)**2 / 2, with N Var A = V_A for
       A_l = mean_i phi(h_i)**2 - m_{phi^2}(qhat_l). So N Var(qhat) = sigma_w**4 V_A /
       (1 - kappa**2) and
       N E[qhat - q*] = (sigma_w**2 m_{phi^2}'' N Var(qhat) / 2 + N sigma_w**2 E[A]) / (1 - kappa).
   (b) The layer's mean gain g_l = sigma_w**2 mean_i phi'(h_i)**2 - 1 = sigma_w**2 mu_1'
       (qhat_l - q*) + sigma_w**2 mu_1'' (qhat_l - q*)**2 / 2 + sigma_w**2 e_l, with sampling noise
       e_l (N Var e = V_F, N Cov(e_l, A_l) = C), is shared by all directions and correlated from
       layer to layer through qhat. Its long-run variance (the variance of sum_l g_l, per layer)
         v = sigma_w**4 V_F + (sigma_w**2 mu_1')**2 sigma_w**4 V_A / (1 - kappa)**2
             + 2 sigma_w**2 mu_1' sigma_w**4 C / (1 - kappa)
       replaces r - 1 = N Var(c1) / mu_1**2 of step 1.
   (c) Alignment: Jacobian vectors have a component along x (N E[cos**2(x, v)] -> rho), and the
       part of W v along s = W x is correlated with D (Stein's lemma, E[F(h) s**2] =
       q_s m_F + 2 q_s**2 m_F'): E[f_l | past] = 1 + g_l + 2 sigma_w**2 q_s mu_1' (cos**2 - o / N),
       where o / N comes from W v_perp being orthogonal to s for Haar W. The overlap obeys
       N cos**2' = kappa**2 N cos**2 + sigma_w**2 (E[(phi phi')**2] - o q_s kappa**2 / sigma_w**4)
       / m_{phi^2}, so rho = sigma_w**2 (E[(phi phi')**2] - o q_s kappa**2 / sigma_w**4) /
       (m_{phi^2} (1 - kappa**2)).
   Haar W puts s = W x on a sphere, which removes the s**2 direction from every sampling noise,
   V_F = Var(phi'**2) - 2 o q_s**2 mu_1'**2, V_A = Var(phi**2) - 2 o q_s**2 m_{phi^2}'**2,
   C = Cov(phi**2, phi'**2) - 2 o q_s**2 mu_1' m_{phi^2}', and biases single-coordinate means
   through the fourth cumulant -6 q_s**2 / N of s_i: E[A] = -o q_s**2 m_{phi^2}'' / N,
   E[e] = -o q_s**2 mu_1'' / N. With E[prod_l (1 + y_l)] = exp(sum_l E y_l +
   sum_{l < l'} Cov(y_l, y_l')) to this order,
     E[m_1] = exp(c L / N),   c = N E[g] + (v - N Var g) / 2 + 2 sigma_w**2 q_s mu_1' (rho - o),
   and E[m_1**2], E[m_2] follow from the recursion of step 1 with each layer's gain raised by
   e^{c / N} and the fluctuation of its D**2 mean set to v: M = e^{2c/N} (1 + v / N),
   p = r e^{2c/N}. In the continuum, X and Y of step 2 take the factor e^{2 c tau} with this v.
   For tanh at q* = 1: orthogonal c = 0.263, v = 0.822, s = 0.584; Gaussian c = 0.233,
   v = 1.396, s = 1.584 (independent layers: c = 0, v = 0.584). As far as we know this step is
   new: Hanin & Nica treat relu networks without biases, where symmetry removes (a)-(c). It is
   leading order: corrections are O(1/N) at fixed L / N. Such corrections are visible at small
   depth. The chain starts from h_0 ~ N(0, q*) i.i.d. and random probes (N cos**2 = 1, not rho),
   and the covariances of g_l with earlier layers take a few layers to build up: from the
   transients of (a)-(c), E[m_1] sits about 0.7 / N (orthogonal) and 1.1 / N (Gaussian) below
   e^{c L / N} after the first few layers (measured with 8192-16384 networks at N = 64 and 128:
   0.5-0.9 / N and 0.7-2.4 / N for L <= 32, while the growth rate between L = 8 and 32 matches
   c). Likewise over the first few layers the variance of sum_l g_l is L N Var(g) rather than
   L v, so Var(m_1) at L = 1 is about half the value the long-run v gives.
"""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isometry.theory import freeprob, gaussian, meanfield
from isometry.theory.activations import get_activation

LAWS = ("orthogonal", "gaussian")
MODELS = ("network", "independent")
SMOOTH = ("tanh", "erf")        # step 3 differentiates phi four times
_PSD_TOLERANCE = 1e-13          # pivots below this times the largest diagonal entry are zero


# --------------------------------------------------------------------------------- theory

class LayerConstants(NamedTuple):
  """The Gaussian integrals of step 3 of the module docstring, for one weight law.

  Attributes:
    sigma_w2, q_star, q_s: sigma_w**2, q* and q* - sigma_b**2 (the variance of W x).
    mu1, mu2, r: E[phi'(h)**2], E[phi'(h)**4] and mu2 / mu1**2.
    s: the infinite-width spread per layer, r - 1 - s_1 (E[var] = s L at N = infinity).
    kappa: slope of the q-map at q*.
    n_var_q, n_mean_q: N Var(qhat) and N E[qhat - q*] at stationarity.
    rho: N E[cos**2] between the Jacobian vector and the forward state.
    n_mean_g, n_var_g: N E[g] and N Var(g) for g = sigma_w**2 mean_i phi'(h_i)**2 - 1.
    v: N times the long-run variance of g (r - 1 for independent layers).
    alignment: N times the mean of f_l - (1 + g_l) (effect (c)).
    c: the rate of E[m_1] = exp(c L / N).
  """
  sigma_w2: float
  q_star: float
  q_s: float
  mu1: float
  mu2: float
  r: float
  s: float
  kappa: float
  n_var_q: float
  n_mean_q: float
  rho: float
  n_mean_g: float
  n_var_g: float
  v: float
  alignment: float
  c: float


def _derivative(f, order):
  for _ in range(order):
    f = jax.grad(f)
  return jnp.vectorize(f)


def _expect(f, q):
  return float(gaussian.gaussian_expectation(f, q))


class _Integrals(NamedTuple):
  """Gaussian integrals at q*, h ~ N(0, q*), shared by both weight laws (see layer_constants).

  m_phi2 = E[phi**2] with its first two q-derivatives m_phi2_1, m_phi2_2; mu1 = E[phi'**2] with
  mu1_1, mu1_2; mu2 = E[phi'**4]; var_phi2 = Var(phi**2); cov = Cov(phi**2, phi'**2);
  cross2 = E[(phi phi')**2].
  """
  sigma_w2: float
  q_s: float
  m_phi2: float
  m_phi2_1: float
  m_phi2_2: float
  mu1: float
  mu2: float
  mu1_1: float
  mu1_2: float
  var_phi2: float
  cov: float
  cross2: float


@functools.lru_cache(maxsize=None)
def _integrals(activation: str, q_star: float) -> _Integrals:
  act = get_activation(activation)
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point(activation, q_star))
  q = float(q_star)
  with jax.enable_x64(True):
    phi2 = lambda h: jnp.square(act.fn(h))                     # noqa: E731
    dphi2 = lambda h: jnp.square(act.derivative(h))            # noqa: E731
    m_phi2, mu1 = _expect(phi2, q), _expect(dphi2, q)
    # d/dq E[F(sqrt(q) z)] = E[F''] / 2 (heat equation): derivatives by autodiff of F.
    return _Integrals(
        sigma_w2=sigma_w**2, q_s=q - sigma_b**2, m_phi2=m_phi2,
        m_phi2_1=_expect(_derivative(phi2, 2), q) / 2,
        m_phi2_2=_expect(_derivative(phi2, 4), q) / 4,
        mu1=mu1, mu2=_expect(lambda h: jnp.square(dphi2(h)), q),
        mu1_1=_expect(_derivative(dphi2, 2), q) / 2,
        mu1_2=_expect(_derivative(dphi2, 4), q) / 4,
        var_phi2=_expect(lambda h: jnp.square(phi2(h)), q) - m_phi2**2,
        cov=_expect(lambda h: phi2(h) * dphi2(h), q) - m_phi2 * mu1,
        cross2=_expect(lambda h: jnp.square(act.fn(h) * act.derivative(h)), q))


@functools.lru_cache(maxsize=None)
def layer_constants(activation: str, q_star: float, weights: str) -> LayerConstants:
  """The constants of the finite-width correction at the critical point with fixed point q*.

  Args:
    activation: "tanh" or "erf" (smooth: the derivation differentiates phi four times).
    q_star: fixed point on the critical line chi = 1.
    weights: "orthogonal" or "gaussian".

  Returns:
    `LayerConstants`; see the module docstring (step 3) for the formulas.
  """
  if activation not in SMOOTH:
    raise ValueError(f"activation must be one of {', '.join(SMOOTH)}, got {activation!r}")
  if weights not in LAWS:
    raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(LAWS)}")
  g = _integrals(activation, float(q_star))
  sw2, q, q_s = g.sigma_w2, float(q_star), g.q_s
  m_phi2, m_phi2_1, m_phi2_2 = g.m_phi2, g.m_phi2_1, g.m_phi2_2
  mu1, mu2, mu1_1, mu1_2 = g.mu1, g.mu2, g.mu1_1, g.mu1_2
  var_phi2, cov, cross2 = g.var_phi2, g.cov, g.cross2
  r = mu2 / mu1**2
  kappa = sw2 * m_phi2_1
  o = 1.0 if weights == "orthogonal" else 0.0
  # Haar W: s = W x on a sphere projects the s**2 direction out of every sampling noise, and
  # its fourth cumulant -6 q_s**2 / N biases single-coordinate means.
  v_a = var_phi2 - o * 2 * q_s**2 * m_phi2_1**2
  v_f = (mu2 - mu1**2) - o * 2 * q_s**2 * mu1_1**2
  c_fa = cov - o * 2 * q_s**2 * mu1_1 * m_phi2_1
  n_var_q = sw2**2 * v_a / (1 - kappa**2)
  n_mean_q = (sw2 * m_phi2_2 / 2 * n_var_q - o * sw2 * q_s**2 * m_phi2_2) / (1 - kappa)
  slope = sw2 * mu1_1
  n_mean_g = slope * n_mean_q + sw2 * mu1_2 / 2 * n_var_q - o * sw2 * q_s**2 * mu1_2
  n_var_g = slope**2 * n_var_q + sw2**2 * v_f
  v = sw2**2 * v_f + slope**2 * sw2**2 * v_a / (1 - kappa)**2 + 2 * slope * sw2**2 * c_fa / (
      1 - kappa)
  rho = sw2 * (cross2 - o * q_s * kappa**2 / sw2**2) / (m_phi2 * (1 - kappa**2))
  alignment = 2 * sw2 * q_s * mu1_1 * (rho - o)
  c = n_mean_g + (v - n_var_g) / 2 + alignment
  s = r - 1 + (1 - o)
  return LayerConstants(sigma_w2=sw2, q_star=q, q_s=q_s, mu1=mu1, mu2=mu2, r=r, s=s, kappa=kappa,
                        n_var_q=n_var_q, n_mean_q=n_mean_q, rho=rho, n_mean_g=n_mean_g,
                        n_var_g=n_var_g, v=v, alignment=alignment, c=c)


def _step(weights, n, x, y, big_m, p):
  """One layer of the exact recursion of step 1: (E[a**2], E[b]) -> (E[a'**2], E[b'])."""
  t1sq, t2 = n**2 * x, n * y              # E[(tr A)**2], E[tr A**2]
  if weights == "gaussian":
    d2, dd, o2 = (2 * t2 + t1sq) / n**2, t1sq / n**2, t2 / n**2
  else:
    d2 = (2 * t2 + t1sq) / (n * (n + 2))
    dd = t2 / (n * (n + 2)) + (t1sq - t2) * (n + 1) / (n * (n - 1) * (n + 2))
    o2 = (n * t2 - t1sq) / (n * (n - 1) * (n + 2))
  shared = n**2 * big_m - n * p          # sum_{i != j} E[c_i c_j] sigma_w**4
  return (n * p * d2 + shared * dd) / n**2, (n * p * d2 + shared * o2) / n


def recursion(weights: str, width: int, depths, r: float, v: Optional[float] = None,
              c: float = 0.0) -> dict:
  """E[m_1], E[m_1**2], E[m_2] and E[var] at each depth from the recursion of step 1 (chi = 1).

  Args:
    weights: "orthogonal" or "gaussian".
    width: N >= 2.
    depths: depths L >= 0 (any order).
    r: mu_2 / mu_1**2 of D**2.
    v: N Var of the layer's mean of D**2 over mu_1**2 (long-run); default r - 1, which with
      c = 0 makes the recursion exact for independent layers (step 1).
    c: rate of the mean, E[m_1] = exp(c L / N) (step 3).

  Returns:
    {"mean", "mean_square", "second_moment", "variance", "mean_spread"} arrays over depths;
    mean_spread = Var(m_1) across networks = E[m_1**2] - E[m_1]**2.
  """
  if weights not in LAWS:
    raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(LAWS)}")
  if int(width) != width or width < 2:
    raise ValueError(f"width must be an integer >= 2, got {width}")
  depths = np.asarray(depths, int)
  if depths.size and depths.min() < 0:
    raise ValueError(f"depths must be >= 0, got {depths}")
  n = float(width)
  v = r - 1.0 if v is None else v
  gain = np.exp(2.0 * c / n)
  big_m, p = gain * (1.0 + v / n), gain * r
  x, y = 1.0, 1.0
  xs, ys = [1.0], [1.0]
  for _ in range(int(depths.max(initial=0))):
    x, y = _step(weights, n, x, y, big_m, p)
    xs.append(x)
    ys.append(y)
  x, y = np.asarray(xs)[depths], np.asarray(ys)[depths]
  mean = np.exp(c * depths / n)
  return {"mean": mean, "mean_square": x, "second_moment": y, "variance": y - x,
          "mean_spread": x - mean**2}


def continuum(tau, s: float, v: float, c: float = 0.0) -> dict:
  """The L, N -> infinity limit at tau = L / N of steps 2-3: X = E[m_1**2], Y = E[m_2] / N.

  Args:
    tau: L / N (array).
    s: infinite-width spread per layer (E[var] = s L at N = infinity).
    v: long-run N Var of the layer's mean gain (r - 1 for independent layers).
    c: rate of the mean (0 for independent layers).

  Returns:
    {"mean": e^{c tau}, "X", "Y", "variance_ratio": N Y / (s L) = Y / (s tau) (E[var] over its
    infinite-width value, up to O(1/L)), "mean_spread": X - e^{2 c tau},
    "log_norm_variance": (v + 2 s) tau (Var log ||J u||**2)}.
  """
  tau = np.asarray(tau, np.float64)
  grow = np.exp((2 * c + v) * tau)
  up, down = np.exp(2 * s * tau), np.exp(-s * tau)
  big_x = grow * (up + 2 * down) / 3
  big_y = grow * (up - down) / 3
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.where(tau > 0, big_y / (s * tau), 1.0 + 0 * tau)
  return {"mean": np.exp(c * tau), "X": big_x, "Y": big_y, "variance_ratio": ratio,
          "mean_spread": big_x - np.exp(2 * c * tau), "log_norm_variance": (v + 2 * s) * tau}


def predictions(activation: str, q_star: float, weights: str, width: int, depths) -> dict:
  """Theory at each depth: infinite width, independent layers (step 1), the network (step 3).

  Returns:
    {"infinite_width": {"mean", "variance"}, "independent_layers": `recursion` with v = r - 1,
     "network": `recursion` with the network's v and c, "constants": `LayerConstants` as a dict}.
  """
  k = layer_constants(activation, q_star, weights)
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point(activation, q_star))
  inf = [freeprob.jacobian_moments(activation, sigma_w, sigma_b, int(d), weights) if d > 0
         else (1.0, 0.0) for d in depths]
  return {
      "infinite_width": {"mean": np.array([m for m, _ in inf]),
                         "variance": np.array([var for _, var in inf])},
      "independent_layers": recursion(weights, width, depths, k.r),
      "network": recursion(weights, width, depths, k.r, v=k.v, c=k.c),
      "constants": k._asdict(),
  }


# ---------------------------------------------------------------------------- Monte-Carlo

def _psd_cholesky(gram):
  """Lower L with L L^T = gram (k x k, positive semi-definite), pivots below tolerance -> 0."""
  gram = jnp.asarray(gram)
  k = gram.shape[-1]
  tol = _PSD_TOLERANCE * jnp.max(jnp.diagonal(gram))
  rows = jnp.arange(k)

  def column(j, low):
    row = low[j]
    pivot = gram[j, j] - row @ row
    keep = pivot > tol
    root = jnp.sqrt(jnp.where(keep, pivot, 1.0))
    col = (gram[:, j] - low @ row) / root
    col = jnp.where(keep & (rows > j), col, 0.0)
    col = jnp.where(rows == j, jnp.where(keep, root, 0.0), col)
    return low.at[:, j].set(col)

  return lax.fori_loop(0, k, column, jnp.zeros_like(gram))


def _lower_inverse(low):
  """low**-1 for a lower-triangular k x k matrix with a positive diagonal."""
  low = jnp.asarray(low)
  k = low.shape[-1]
  eye = jnp.eye(k, dtype=low.dtype)

  def row(i, inv):
    return inv.at[i].set((eye[i] - low[i] @ inv) / low[i, i])

  return lax.fori_loop(0, k, row, jnp.zeros_like(low))


def _estimates(gram, width):
  """Per-network estimates from the Gram matrix of [x, V] (k x k): (m1, m2, m1**2, and m1 and
  var from each half of the probes)."""
  g = gram[1:, 1:]
  num = g.shape[0]

  def moments(block):
    p = block.shape[0]
    diag = jnp.diagonal(block)
    m1 = jnp.mean(diag) / width
    m2 = (jnp.sum(jnp.square(block)) - jnp.sum(jnp.square(diag))) / (p * (p - 1) * width)
    m11 = (jnp.square(jnp.sum(diag)) - jnp.sum(jnp.square(diag))) / (p * (p - 1) * width**2)
    return m1, m2, m11

  m1, m2, m11 = moments(g)
  half = num // 2
  a1, a2, a11 = moments(g[:half, :half])
  b1, b2, b11 = moments(g[half:, half:])
  return jnp.stack([m1, m2, m11, a1, a2 - a11, b1, b2 - b11])


def _normal(key, shape):
  """Standard normals drawn in float32 (4x faster on this CPU, and faster to compile), used in
  float64: 24-bit draws change no moment we estimate."""
  return jax.random.normal(key, shape, jnp.float32).astype(jnp.float64)


_FIELDS = ("m1", "m2", "m1_squared", "m1_half_a", "var_half_a", "m1_half_b", "var_half_b")


@functools.partial(jax.jit, static_argnums=(1, 5, 6, 7, 8, 9))
def _chunk(keys, act, sigma_w, sigma_b, q, width, probes, depths, orthogonal, independent):
  """(B, S, len(depths), len(_FIELDS)) estimates for B networks and S (law, model) states."""
  n, k = width, probes + 1
  scale = jnp.asarray([sigma_w if o else sigma_w / np.sqrt(n) for o in orthogonal])
  is_orth = jnp.asarray(orthogonal)
  is_indep = jnp.asarray(independent)
  depth_max = max(depths)

  def one(key):
    k_start, k_layers = jax.random.split(key)
    # One normal draw per site: every call of the float64 sampler costs seconds of XLA compile.
    start = _normal(k_start, (n, k))                        # h_0 / sqrt(q*), then the probes
    start = start.at[:, 0].set(act.fn(jnp.sqrt(q) * start[:, 0]))
    start = jnp.broadcast_to(start, (len(orthogonal), n, k))

    def layer(state, l):
      grams = jnp.einsum("sni,snj->sij", state, state)
      record = jax.vmap(lambda g: _estimates(g, n))(grams)
      draws = _normal(jax.random.fold_in(k_layers, l), (n, k + 2))
      z, bias, free = draws[:, :k], draws[:, k], draws[:, k + 1]
      frame = _lower_inverse(_psd_cholesky(z.T @ z)).T      # z @ frame is Haar on the Stiefel
      roots = jax.vmap(_psd_cholesky)(grams)                # (S, k, k) lower: X = Q roots^T
      mix = jnp.where(is_orth[:, None, None], frame[None], jnp.eye(k)[None])
      wx = jnp.einsum("ni,sij,skj->snk", z, mix, roots) * scale[:, None, None]
      h = wx[:, :, 0] + sigma_b * bias[None]
      free = act.derivative(jnp.sqrt(q) * free)
      d = jnp.where(is_indep[:, None], free[None], act.derivative(h))
      return jnp.concatenate([act.fn(h)[:, :, None], d[:, :, None] * wx[:, :, 1:]], axis=2), record

    final, records = lax.scan(layer, start, jnp.arange(depth_max))
    last = jax.vmap(lambda g: _estimates(g, n))(jnp.einsum("sni,snj->sij", final, final))
    records = jnp.concatenate([records, last[None]], axis=0)     # (depth_max + 1, S, F)
    return jnp.swapaxes(records[jnp.asarray(depths)], 0, 1)

  return jax.vmap(one)(keys)


def sample_moments(key, activation: str, q_star: float, width: int, depths, num_networks: int,
                   num_probes: int, states, chunk: int = 32) -> np.ndarray:
  """Per-network Monte-Carlo estimates of the spectral moments (see the module docstring).

  Args:
    key: PRNG key; network i uses jax.random.split(key, num_networks)[i] for every state.
    activation: name of phi.
    q_star: fixed point on the critical line (the networks use critical_point(activation, q*)
      and start at h_0 ~ N(0, q*)).
    width: N > num_probes.
    depths: depths L >= 0 to record (one chain per network serves all).
    num_networks: independent networks.
    num_probes: P >= 4 Gaussian probes per network.
    states: sequence of (weights, model), model "network" or "independent" (D**2 drawn i.i.d.,
      independent of everything: step 1's model).
    chunk: networks per compiled call.

  Returns:
    float64 (len(states), num_networks, len(depths), 7): m1, m2, m1**2 (unbiased estimates),
    then m1 and var from each half of the probes.
  """
  act = get_activation(activation)
  for weights, model in states:
    if weights not in LAWS or model not in MODELS:
      raise ValueError(f"unknown state {(weights, model)}")
  if num_probes < 4 or num_probes + 1 > width:
    raise ValueError(f"need 4 <= num_probes < width, got {num_probes} probes at width {width}")
  sigma_w, sigma_b = (float(v) for v in meanfield.critical_point(activation, q_star))
  orthogonal = tuple(w == "orthogonal" for w, _ in states)
  independent = tuple(m == "independent" for _, m in states)
  depths = tuple(int(d) for d in depths)
  out = []
  with jax.enable_x64(True):
    keys = jax.random.split(key, num_networks)
    for start in range(0, num_networks, chunk):
      part = _chunk(keys[start:start + chunk], act, sigma_w, sigma_b, float(q_star), width,
                    num_probes, depths, orthogonal, independent)
      out.append(np.asarray(part, np.float64))
  return np.swapaxes(np.concatenate(out, axis=0), 0, 1)
