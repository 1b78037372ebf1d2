"""Means, standard deviations and Student's t intervals over seeds.

A study runs the same recipe with several seeds; its table gives each
model's mean and a 95% confidence interval, and the *paired* difference
against the teacher of the same seed (the seeds' shared data and starting
points cancel out of a paired difference, which makes it sharper than two
separate intervals). Standard library only: the report reads these without
NumPy, SciPy or TensorFlow.

Example:

>>> summary = describe([0.91, 0.93, 0.92])
>>> round(summary.mean, 4), round(summary.low, 4), round(summary.high, 4)
(0.92, 0.8952, 0.9448)
>>> describe([0.91]).low is None  # one seed: no interval
True
"""

import dataclasses
import math


def _tail_mass(t, df):
    """P(|T| <= t) for Student's t with integer `df` degrees of freedom.

    The finite series of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4
    (even df): exact, with df/2 terms.
    """
    theta = math.atan2(abs(t), math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):  # 2·4···(2k) / 3·5···(2k+1)
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta)
                              * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):  # 1·3···(2k-1) / 2·4···(2k)
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_cdf(t, df):
    """The cumulative distribution function of Student's t.

    Args:
        t: The point.
        df: Degrees of freedom, an integer >= 1.

    Returns:
        P(T <= t).
    """
    _check_df(df)
    half = 0.5 * _tail_mass(t, df)
    return 0.5 + half if t >= 0 else 0.5 - half


def t_quantile(probability, df):
    """The quantile of Student's t: the t with `t_cdf(t, df) == probability`.

    Args:
        probability: In (0, 1); 0.975 for a two-sided 95% interval.
        df: Degrees of freedom, an integer >= 1.

    Returns:
        The quantile, to about 1e-12 relative.

    Example:

    >>> round(t_quantile(0.975, 2), 4)
    4.3027
    """
    _check_df(df)
    if not 0 < probability < 1:
        raise ValueError(
            f"`probability` must be in (0, 1). Received: {probability!r}"
        )
    if probability < 0.5:
        return -t_quantile(1 - probability, df)
    target = 2 * probability - 1  # the mass of |T| <= t
    low, high = 0.0, 1.0
    while _tail_mass(high, df) < target:
        low, high = high, high * 2
    for _ in range(200):  # bisection: the mass grows with t
        middle = (low + high) / 2
        if _tail_mass(middle, df) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


def _check_df(df):
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(
            f"`df` must be an integer >= 1. Received: {df!r}"
        )


@dataclasses.dataclass(frozen=True)
class Summary:
    """Values over seeds: their mean, spread and confidence interval.

    Attributes:
        values: The values, one per seed, in order.
        mean: Their mean.
        std: The sample standard deviation (n - 1 in the denominator);
            None for one value.
        low, high: The bounds of the confidence interval of the mean
            (Student's t with n - 1 degrees of freedom); None for one
            value, which has no interval.
        confidence: The interval's level, e.g. 0.95.
    """

    values: tuple
    mean: float
    std: float
    low: float
    high: float
    confidence: float

    @property
    def n(self):
        return len(self.values)

    @property
    def half_width(self):
        """Half the interval's width, or None."""
        return None if self.low is None else (self.high - self.low) / 2

    def excludes_zero(self):
        """Whether the interval lies wholly above or below 0."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_dict(self):
        """The summary as JSON values."""
        return {"n": self.n, "values": list(self.values), "mean": self.mean,
                "std": self.std, "low": self.low, "high": self.high,
                "confidence": self.confidence}


def describe(values, confidence=0.95):
    """Mean, standard deviation and t interval of `values`.

    Args:
        values: Numbers, one per seed (at least one).
        confidence: The interval's level, in (0, 1).

    Returns:
        A `Summary`; with one value, its `std`, `low` and `high` are None.
    """
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("`values` is empty: nothing to describe.")
    if not 0 < confidence < 1:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: {confidence!r}"
        )
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(values, mean, None, None, None, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Summary(values, mean, std, mean - half, mean + half, confidence)


def paired(values, baseline, confidence=0.95):
    """The paired differences `values[i] - baseline[i]`, described.

    Args:
        values: One number per seed.
        baseline: The number of the same seed to subtract (the teacher's).
        confidence: The interval's level.

    Returns:
        A `Summary` of the differences.
    """
    if len(values) != len(baseline):
        raise ValueError(
            "Paired differences need one baseline per value. Received: "
            f"{len(values)} values, {len(baseline)} baselines."
        )
    return describe([float(v) - float(b) for v, b in zip(values, baseline)],
                    confidence)
