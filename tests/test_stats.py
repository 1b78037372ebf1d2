import math

import numpy as np
import pytest

from kdtrain import stats

# Two-sided 95% critical values of Student's t (the 0.975 quantile), as
# printed in the standard tables (e.g. NIST/SEMATECH e-Handbook, table
# 1.3.6.7.2), to three decimals.
PUBLISHED_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571,
                 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
                 15: 2.131, 20: 2.086, 29: 2.045, 30: 2.042, 100: 1.984}
# One-sided 0.995 quantiles from the same table.
PUBLISHED_995 = {1: 63.657, 2: 9.925, 4: 4.604, 9: 3.250, 29: 2.756}


@pytest.mark.parametrize("df, value", sorted(PUBLISHED_975.items()))
def test_t_quantiles_match_the_published_table(df, value):
    assert round(stats.t_quantile(0.975, df), 3) == value


@pytest.mark.parametrize("df, value", sorted(PUBLISHED_995.items()))
def test_upper_quantiles_match_the_published_table(df, value):
    assert round(stats.t_quantile(0.995, df), 3) == value


@pytest.mark.parametrize("p", [0.51, 0.6, 0.9, 0.975, 0.9995, 0.1, 0.025])
def test_closed_forms_for_one_and_two_degrees_of_freedom(p):
    # df = 1 is the Cauchy distribution; df = 2 has an algebraic inverse.
    cauchy = math.tan(math.pi * (p - 0.5))
    two = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert stats.t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-10)
    assert stats.t_quantile(p, 2) == pytest.approx(two, rel=1e-10)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 31])
def test_cdf_and_quantile_are_inverse_and_the_cdf_is_a_distribution(df):
    for p in (0.01, 0.3, 0.5, 0.8, 0.975, 0.999):
        assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(
            p, abs=1e-12)
    assert stats.t_cdf(0.0, df) == 0.5
    assert stats.t_cdf(-2.0, df) == pytest.approx(1 - stats.t_cdf(2.0, df))
    # Numerically integrate the density: the CDF's increments must match.
    t = np.linspace(-3, 3, 60001)
    density = (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi)
               * math.gamma(df / 2)) * (1 + t**2 / df) ** (-(df + 1) / 2))
    integral = np.trapezoid(density, t)
    assert stats.t_cdf(3.0, df) - stats.t_cdf(-3.0, df) == pytest.approx(
        integral, abs=1e-8)


def test_large_df_approaches_the_normal_quantile():
    assert stats.t_quantile(0.975, 5000) == pytest.approx(1.95996, abs=5e-4)


def test_describe_matches_numpy_and_the_t_interval():
    values = [0.8902, 0.8856, 0.8931, 0.8874, 0.8899]
    summary = stats.describe(values)
    array = np.array(values)
    assert summary.n == 5
    assert summary.mean == pytest.approx(array.mean(), abs=1e-15)
    assert summary.std == pytest.approx(array.std(ddof=1), rel=1e-12)
    half = 2.776445105 * array.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert summary.low == pytest.approx(array.mean() - half, rel=1e-9)
    assert summary.high == pytest.approx(array.mean() + half, rel=1e-9)
    assert summary.half_width == pytest.approx(half, rel=1e-9)
    assert summary.to_dict()["values"] == values


def test_one_value_has_no_interval():
    summary = stats.describe([0.9])
    assert summary.mean == 0.9
    assert summary.std is None and summary.low is None and summary.high is None
    assert not summary.excludes_zero()


def test_paired_differences_are_per_seed():
    teacher = [0.90, 0.91, 0.92]
    student = [0.905, 0.915, 0.926]
    summary = stats.paired(student, teacher)
    differences = np.array(student) - np.array(teacher)
    assert summary.values == pytest.approx(tuple(differences))
    assert summary.mean == pytest.approx(differences.mean())
    # The seeds' shared level cancels: a sharper interval than unpaired.
    assert summary.excludes_zero()
    assert not stats.describe(student).low > stats.describe(teacher).high


@pytest.mark.parametrize("call, message", [
    (lambda: stats.t_quantile(1.0, 3), "`probability` must be in (0, 1)"),
    (lambda: stats.t_quantile(0.9, 0), "`df` must be an integer >= 1"),
    (lambda: stats.t_cdf(1.0, 2.5), "`df` must be an integer >= 1"),
    (lambda: stats.describe([]), "`values` is empty"),
    (lambda: stats.describe([1, 2], confidence=95), "`confidence`"),
    (lambda: stats.paired([1, 2], [1]), "one baseline per value"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        call()
