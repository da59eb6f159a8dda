"""Mean ± sd over runs, Welch's t-test (unequal variances) and the paired t-test (same-seed differences), with the
Student t tail computed here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONTINUED_FRACTION_TOLERANCE = 1e-15
CONTINUED_FRACTION_TERMS = 500  # far more than the ~ sqrt(a) terms the fraction needs for the df of a few runs


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float | None  # sample sd (ddof 1); None for a single run
    n: int


@dataclass(frozen=True)
class WelchTest:
    t: float
    df: float  # Welch–Satterthwaite degrees of freedom
    p_value: float  # two-sided


@dataclass(frozen=True)
class PairedTest:
    t: float
    df: int  # pairs - 1
    p_value: float  # two-sided
    mean_difference: float  # mean of first - second over the pairs
    sd_difference: float  # sample sd (ddof 1) of those differences


def spread(values) -> Spread:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"spread needs a non-empty 1-D list of values, got shape {values.shape}")
    return Spread(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None, len(values))


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), convergent for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300

    def nonzero(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, CONTINUED_FRACTION_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / nonzero(1.0 + numerator * d)
            c = nonzero(1.0 + numerator / c)
            fraction *= c * d
        if abs(c * d - 1.0) < CONTINUED_FRACTION_TOLERANCE:
            return fraction
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge in {CONTINUED_FRACTION_TERMS} terms")


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"I_x(a, b) needs a, b > 0 and 0 <= x <= 1, got x={x}, a={a}, b={b}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges past this point on the mirror side, I_1-x(b, a)
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a


def two_sided_t_p_value(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    return regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def welch_t_test(first, second) -> WelchTest:
    """Two-sided Welch's t-test of mean(first) = mean(second)."""
    groups = [np.asarray(values, dtype=np.float64) for values in (first, second)]
    for name, values in zip(("first", "second"), groups):
        if values.ndim != 1 or len(values) < 2:
            raise ValueError(f"Welch's t-test needs at least 2 values per group; "
                             f"the {name} group has shape {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"Welch's t-test got a non-finite value in the {name} group: {values.tolist()}")
    (a, b) = groups
    variance_a, variance_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if variance_a + variance_b == 0:
        raise ValueError(f"Welch's t-test is undefined when both groups are constant ({a[0]} and {b[0]})")
    t = float((a.mean() - b.mean()) / math.sqrt(variance_a + variance_b))
    df = float((variance_a + variance_b) ** 2
               / (variance_a ** 2 / (len(a) - 1) + variance_b ** 2 / (len(b) - 1)))
    return WelchTest(t, df, two_sided_t_p_value(t, df))


def paired_t_test(first, second) -> PairedTest:
    """Two-sided paired t-test of mean(first - second) = 0; `first[i]` and `second[i]` are one pair (one seed)."""
    a, b = (np.asarray(values, dtype=np.float64) for values in (first, second))
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"the paired t-test needs two equally long lists of at least 2 values, got shapes "
                         f"{a.shape} and {b.shape}")
    differences = a - b
    if not np.isfinite(differences).all():
        raise ValueError(f"the paired t-test got a non-finite value: {a.tolist()} and {b.tolist()}")
    sd = float(differences.std(ddof=1))
    if sd == 0:
        raise ValueError(f"the paired t-test is undefined when every difference is the same ({differences[0]})")
    mean, df = float(differences.mean()), len(differences) - 1
    t = mean / (sd / math.sqrt(len(differences)))
    return PairedTest(t, df, two_sided_t_p_value(t, df), mean, sd)
