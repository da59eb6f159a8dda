"""Lift of a ratio metric (clicks / impressions, GMV / impressions) between two arms of users.

Users, not impressions, are the independent units: a user's requests share a taste, so each arm is
summarised by per-user sums (numerator x_i, denominator n_i) and the metric is R = sum x / sum n.

- Delta method: Var(R) = Var(x_i - R n_i) / (users * mean(n)^2). The lift R_t / R_c - 1 is tested and
  bounded on the log scale, log R_t - log R_c, whose variance is Var(R_t)/R_t^2 + Var(R_c)/R_c^2 (arms
  are independent); its interval exp(d +- z se) - 1 is asymmetric, as a ratio's should be.
- Bootstrap: users resampled with replacement within each arm; percentile interval of the lift, and the
  p-value of the percentile test (twice the smaller share of resampled lifts on one side of 0).
- Users needed per arm (equal arms) to detect the observed lift with a two-sided test at `power`:
  (z_(1 - alpha/2) + z_power)^2 * (users_t Var(log R_t) + users_c Var(log R_c)) / d^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from marn.config import INTERVAL_METHODS

_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22  # resampled user indices held at once


@dataclass(frozen=True)
class RatioSample:
    """One arm's per-user sums of a ratio metric's numerator and denominator."""

    numerator: np.ndarray  # [users] float64
    denominator: np.ndarray  # [users] float64, every entry > 0

    def __post_init__(self):
        if self.numerator.shape != self.denominator.shape or self.numerator.ndim != 1:
            raise ValueError(f"numerator {self.numerator.shape} and denominator {self.denominator.shape} "
                             "must be 1-d arrays of the same length")
        if self.numerator.size < 2:
            raise ValueError(f"a ratio's variance needs at least 2 users, got {self.numerator.size}")
        if not (self.denominator > 0).all():
            raise ValueError("every user needs a positive denominator (at least one impression)")

    @property
    def users(self) -> int:
        return int(self.numerator.size)

    @property
    def ratio(self) -> float:
        return float(self.numerator.sum() / self.denominator.sum())

    def ratio_variance(self) -> float:
        """Delta-method variance of the ratio estimate."""
        residual = self.numerator - self.ratio * self.denominator
        return float(residual.var(ddof=1) / (self.users * self.denominator.mean() ** 2))


def log_ratio_variance(sample: RatioSample) -> float:
    """Delta-method variance of log R; infinite when the arm has no event at all."""
    ratio = sample.ratio
    return sample.ratio_variance() / ratio**2 if ratio > 0 else math.inf


def users_needed_per_arm(log_lift: float, unit_variance: float, confidence: float, power: float) -> int | None:
    """Users per arm for a two-sided test at 1 - `confidence` to reach `power` against `log_lift`;
    None where the lift is 0 or undefined."""
    if not math.isfinite(log_lift) or log_lift == 0 or not math.isfinite(unit_variance):
        return None
    z = stats.norm.ppf(1 - (1 - confidence) / 2) + stats.norm.ppf(power)
    return int(math.ceil(z**2 * unit_variance / log_lift**2))


def compare(control: RatioSample, treatment: RatioSample, confidence: float = 0.95, power: float = 0.8,
            method: str = "delta", rng: np.random.Generator | None = None, bootstrap_samples: int = 1000) -> dict:
    """Relative lift of `treatment` over `control` with its interval, p-value and the users needed.

    Returns {lift, ci_low, ci_high, p_value, significant, users_needed_per_arm}; values that do not
    exist (a control without any event) are None.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; known: {', '.join(INTERVAL_METHODS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    control_ratio, treatment_ratio = control.ratio, treatment.ratio
    lift = treatment_ratio / control_ratio - 1 if control_ratio > 0 else math.nan
    control_variance, treatment_variance = log_ratio_variance(control), log_ratio_variance(treatment)
    log_lift = math.log1p(lift) if lift > -1 else math.nan
    needed = users_needed_per_arm(log_lift, control.users * control_variance + treatment.users * treatment_variance,
                                  confidence, power)
    if method == "delta":
        low, high, p_value = _delta_interval(log_lift, control_variance + treatment_variance, confidence)
    else:
        if rng is None:
            raise ValueError("the bootstrap needs a random generator (rng)")
        low, high, p_value = _bootstrap_interval(control, treatment, confidence, rng, bootstrap_samples)
    return {
        "lift": _finite_or_none(lift),
        "ci_low": _finite_or_none(low),
        "ci_high": _finite_or_none(high),
        "p_value": _finite_or_none(p_value),
        "significant": bool(p_value < 1 - confidence) if math.isfinite(p_value) else False,
        "users_needed_per_arm": needed,
    }


def _delta_interval(log_lift: float, variance: float, confidence: float) -> tuple[float, float, float]:
    if not (math.isfinite(log_lift) and math.isfinite(variance)):
        return math.nan, math.nan, math.nan
    if variance == 0:  # both arms constant per user: the lift is known exactly
        return math.expm1(log_lift), math.expm1(log_lift), 0.0 if log_lift != 0 else 1.0
    se = math.sqrt(variance)
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    p_value = 2 * stats.norm.sf(abs(log_lift) / se)
    return math.expm1(log_lift - z * se), math.expm1(log_lift + z * se), float(p_value)


def _bootstrap_ratios(sample: RatioSample, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    ratios = np.empty(n_resamples)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // sample.users)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        picks = rng.integers(0, sample.users, (stop - start, sample.users))
        ratios[start:stop] = sample.numerator[picks].sum(axis=1) / sample.denominator[picks].sum(axis=1)
    return ratios


def _bootstrap_interval(control: RatioSample, treatment: RatioSample, confidence: float, rng: np.random.Generator,
                        n_resamples: int) -> tuple[float, float, float]:
    if n_resamples < 1:
        raise ValueError(f"bootstrap_samples must be at least 1, got {n_resamples}")
    control_ratios = _bootstrap_ratios(control, n_resamples, rng)
    treatment_ratios = _bootstrap_ratios(treatment, n_resamples, rng)
    defined = control_ratios > 0
    if not defined.any():
        return math.nan, math.nan, math.nan
    lifts = treatment_ratios[defined] / control_ratios[defined] - 1
    tail = (1 - confidence) / 2
    low, high = np.quantile(lifts, [tail, 1 - tail])
    # +1 on both sides: with B resamples a p-value below 1/(B+1) cannot be resolved
    one_side = min(int((lifts <= 0).sum()), int((lifts >= 0).sum()))
    p_value = min(1.0, 2 * (one_side + 1) / (lifts.size + 1))
    return float(low), float(high), p_value


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
