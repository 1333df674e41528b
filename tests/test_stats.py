"""mean_ci against values computed by hand (t quantiles from tables) and scipy.stats.t.interval."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from isometry.results import stats

# Student-t quantiles t_{0.975, df} from a table, to 10 digits (hence rel=1e-9 below).
T_975_DF4 = 2.776445105
T_975_DF1 = 12.70620474
T_975_DF9 = 2.262157163


def test_five_samples_by_hand():
  # mean 3, s^2 = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, half-width t * sqrt(2.5 / 5).
  mean, half = stats.mean_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
  assert mean == pytest.approx(3.0, abs=1e-15)
  assert half == pytest.approx(T_975_DF4 * np.sqrt(0.5), rel=1e-9)
  assert mean.shape == half.shape == ()


def test_two_samples_and_other_level_by_hand():
  # n = 2: s = |a - b| / sqrt(2), half = t_{0.975,1} * |a - b| / 2.
  _, half = stats.mean_ci([0.0, 2.0])
  assert half == pytest.approx(T_975_DF1, rel=1e-9)
  # 90% level (t_{0.95, 9}), n = 10, values 0..9: s^2 = 82.5 / 9.
  x = np.arange(10.0)
  _, half90 = stats.mean_ci(x, level=0.90)
  assert half90 == pytest.approx(1.833112933 * np.sqrt(82.5 / 9 / 10), rel=1e-9)
  _, half95 = stats.mean_ci(x)
  assert half95 == pytest.approx(T_975_DF9 * np.sqrt(82.5 / 9 / 10), rel=1e-9)


def test_axis_and_nan_against_scipy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 3, 4))
  x[2, 1, 0] = np.nan  # That cell then has 6 samples.
  mean, half = stats.mean_ci(x, axis=0)
  assert mean.shape == half.shape == (3, 4)
  for i in range(3):
    for j in range(4):
      column = x[:, i, j][~np.isnan(x[:, i, j])]
      low, high = scipy_stats.t.interval(0.95, len(column) - 1, loc=column.mean(),
                                         scale=scipy_stats.sem(column))
      assert mean[i, j] == pytest.approx(column.mean(), rel=1e-12)
      assert half[i, j] == pytest.approx((high - low) / 2, rel=1e-10)
  mean1, half1 = stats.mean_ci(np.moveaxis(x, 0, 1), axis=1)
  np.testing.assert_allclose(mean1, mean, rtol=1e-12)
  np.testing.assert_allclose(half1, half, rtol=1e-12)


def test_too_few_samples_give_nan():
  mean, half = stats.mean_ci(np.array([[1.0, np.nan], [np.nan, np.nan]]), axis=0)
  assert mean[0] == 1.0 and np.isnan(half[0])
  assert np.isnan(mean[1]) and np.isnan(half[1])


def test_bad_level():
  with pytest.raises(ValueError, match="level"):
    stats.mean_ci([1.0, 2.0], level=1.0)


def test_paired_difference_by_hand():
  a = np.array([0.52, 0.55, 0.50, np.nan, 0.58])
  b = np.array([0.50, 0.51, 0.51, 0.40, 0.53])
  result = stats.paired_difference(a, b)
  d = np.array([0.02, 0.04, -0.01, 0.05])  # The NaN seed is dropped with its partner.
  assert result["n_pairs"] == 4 and result["wins"] == 3
  np.testing.assert_allclose(result["differences"], d, atol=1e-12)
  assert result["mean_difference"] == pytest.approx(0.025, abs=1e-12)
  # t_{0.975, 3} from a table; s = std(d, ddof=1).
  assert result["ci95"] == pytest.approx(3.182446305 * np.std(d, ddof=1) / 2, rel=1e-9)
  # Paired t = 0.025 / (0.0264575 / 2) = 1.88982, two-sided p with 3 dof.
  assert result["p_value"] == pytest.approx(0.155182, abs=1e-6)
  # Identical differences: no test statistic, so no p-value.
  assert np.isnan(stats.paired_difference(b + 0.5, b)["p_value"])
  with pytest.raises(ValueError, match="seeds"):
    stats.paired_difference(np.zeros(3), np.zeros(4))


def test_format_interval_says_what_it_has():
  assert stats.format_interval(0.84241, 0.00691, 3) == "0.8424 +- 0.0069 (95% CI, 3 seeds)"
  assert stats.format_interval(0.84241, float("nan"), 1) == "0.8424 (1 seed, no interval)"
  assert stats.format_interval(float("nan"), float("nan"), 0) == "no value"


def test_holm_by_hand():
  # Sorted 0.01, 0.02, 0.04, 0.30 with m = 4: 4 * 0.01, max(.04, 3 * .02), max(.06, 2 * .04),
  # max(.08, 1 * .30); returned in the input's order, NaN left out of the family.
  adjusted = stats.holm([0.04, 0.30, np.nan, 0.01, 0.02])
  np.testing.assert_allclose(adjusted, [0.08, 0.30, np.nan, 0.04, 0.06])
  np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])   # capped at 1
  assert stats.holm([]).shape == (0,)


def test_holm_controls_the_family_wise_error_under_the_null():
  # 20 true nulls per family, 4000 families: P(any adjusted p < 0.05) <= 0.05.
  rng = np.random.default_rng(0)
  p = rng.random((4000, 20))
  rejected = np.array([np.any(stats.holm(row) < 0.05) for row in p])
  assert rejected.mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)
