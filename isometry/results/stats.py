"""Summaries over seeds: means with Student-t confidence intervals.

Every study in this package repeats its measurement over a handful of independent seeds (5 to 10)
and reports mean +- half-width of the two-sided t-interval, which is exact for normal samples and
the usual choice when the number of seeds is too small for a normal approximation (at n = 5 the
95% t quantile is 2.78, not 1.96).
"""
import warnings

import numpy as np
from scipy import stats as scipy_stats


def mean_ci(x, axis: int = 0, level: float = 0.95):
  """Mean and half-width of the Student-t confidence interval along `axis`, ignoring NaNs.

  Args:
    x: array with the samples (seeds) along `axis`; NaN marks a missing sample.
    axis: the sample axis.
    level: confidence level in (0, 1).

  Returns:
    (mean, half_width), float64 arrays of x's shape without `axis` (0-d for 1-d x):
    half_width = t_{(1 + level) / 2, n - 1} * s / sqrt(n), with s the sample standard deviation
    (ddof 1) and n the number of non-NaN samples; NaN where n < 2 (the mean is NaN where n = 0).

  Raises:
    ValueError: level outside (0, 1).
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  x = np.asarray(x, np.float64)
  n = np.sum(~np.isnan(x), axis=axis)
  with warnings.catch_warnings():
    # nanmean / nanstd warn on all-NaN slices and n = 1; those entries are NaN by design.
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(x, axis=axis)
    s = np.nanstd(x, axis=axis, ddof=1)
  t = scipy_stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
  half = np.where(n >= 2, t * s / np.sqrt(np.maximum(n, 1)), np.nan)
  return np.asarray(mean), np.asarray(half)


def paired_difference(a, b, level: float = 0.95) -> dict:
  """a - b paired by seed: mean with its t-interval, the paired t-test, and a's wins.

  Args:
    a, b: (seeds,) measurements; seed i of a is paired with seed i of b. NaN (a diverged or
      missing run) drops the pair.
    level: confidence level of the interval.

  Returns:
    {"mean_difference", "ci95" (half-width at `level`), "n_pairs", "p_value" (two-sided paired
     t-test; NaN below 2 pairs or when every difference is the same), "wins" (pairs with
     a > b), "differences" (the kept pairs', as floats)}.

  Raises:
    ValueError: a and b are not 1-d arrays of one length.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"expected two (seeds,) arrays, got shapes {a.shape} and {b.shape}")
  both = np.isfinite(a) & np.isfinite(b)
  diff = a[both] - b[both]
  mean, half = mean_ci(diff, level=level) if diff.size else (np.nan, np.nan)
  varies = diff.size > 1 and np.any(diff != diff[0])
  p_value = float(scipy_stats.ttest_rel(a[both], b[both]).pvalue) if varies else float("nan")
  return {"mean_difference": float(mean), "ci95": float(half), "n_pairs": int(diff.size),
          "p_value": p_value, "wins": int(np.sum(diff > 0)),
          "differences": [float(d) for d in diff]}


def holm(p_values) -> np.ndarray:
  """Holm's step-down adjustment of a family of p-values (family-wise error control).

  With the m p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
  max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting where the adjusted value is below alpha keeps
  the probability of any false rejection in the family at most alpha, under any dependence
  between the tests (Holm 1979, "A simple sequentially rejective multiple test procedure").

  Args:
    p_values: (m,) p-values of one family of comparisons; NaN (an undetermined test) is left
      NaN and does not count towards m.

  Returns:
    (m,) float64 adjusted p-values, in the input's order.
  """
  p = np.asarray(p_values, np.float64)
  if p.ndim != 1:
    raise ValueError(f"expected a 1-d array of p-values, got shape {p.shape}")
  adjusted = np.full(p.shape, np.nan)
  finite = np.flatnonzero(np.isfinite(p))
  order = finite[np.argsort(p[finite], kind="stable")]
  m = order.size
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted[order] = np.maximum.accumulate(scaled)
  return adjusted


def interval(values, level: float = 0.95) -> dict:
  """{"mean", "ci95", "n", "values"}: `mean_ci` of (seeds,) values (NaN = missing), the number of
  finite values and the values themselves as floats, the form every study writes to JSON."""
  values = np.asarray(values, np.float64)
  mean, half = mean_ci(values, level=level)
  return {"mean": float(mean), "ci95": float(half), "n": int(np.sum(np.isfinite(values))),
          "values": [float(v) for v in values]}


def format_interval(mean: float, half: float, n: int, digits: int = 4) -> str:
  """"0.8424 +- 0.0069 (95% CI, 3 seeds)"; with one value "0.8424 (1 seed, no interval)"; with
  none "no value" (every seed diverged or missing)."""
  if n == 0 or not np.isfinite(mean):
    return "no value"
  if n < 2 or not np.isfinite(half):
    return f"{mean:.{digits}f} (1 seed, no interval)"
  return f"{mean:.{digits}f} +- {half:.{digits}f} (95% CI, {n} seeds)"
