"""Stage `abtest`: an offline simulation of the paper's online A/B test (Table 6) — CTR and GMV lift.

`simulation` and `statistics` are the pure parts (arrays in, numbers out); `response` is the relevance
model for real data; `stage` ties them to the prepared data, the synthetic truth and the trained models.
"""

from marn.abtest.simulation import (
    CLICK_MODELS, METRICS, Requests, Responses, assign_arms, compare_arms, cumulative_daily_lifts,
    simulate_responses,
)
from marn.abtest.stage import BUILTIN_ARMS, check_abtest_config, run_abtest
from marn.abtest.statistics import RatioSample, compare

__all__ = [
    "BUILTIN_ARMS", "CLICK_MODELS", "METRICS", "RatioSample", "Requests", "Responses", "assign_arms",
    "check_abtest_config", "compare", "compare_arms", "cumulative_daily_lifts", "run_abtest", "simulate_responses",
]
