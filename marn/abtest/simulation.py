"""The pure simulation: slates ranked by each arm's scores, clicks from a click model, purchases, and the
per-arm metrics and lifts. Numpy arrays in, numbers out; no model, file or config.

A request shows the `slate_size` best-scored of its candidates, best first. Click models:
- `position`: rank r (1-based) is examined with probability r ** -position_bias, independently of the
  other ranks, and an examined item is clicked with probability = its relevance;
- `cascade`: the user reads from the top, clicks the first item that attracts them (probability = its
  relevance) and stops; at most one click per request.
Each click becomes a purchase with probability `purchase_probability`; GMV sums the purchased items' prices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from marn.abtest.statistics import RatioSample, compare
from marn.config import CLICK_MODELS

METRICS = ("ctr", "gmv_per_impression")  # the lifts reported: clicks and GMV, each per impression


@dataclass(frozen=True)
class Requests:
    """Row r is one request: the user who made it, its day and its candidates with their truth."""

    user: np.ndarray  # [R] int64, index into the experiment's users
    day: np.ndarray  # [R] int64, 0-based day of the test
    candidates: np.ndarray  # [R, M] int64 item index
    relevance: np.ndarray  # [R, M] float64, P(click | examined)
    price: np.ndarray  # [R, M] float64

    def __post_init__(self):
        n, m = self.candidates.shape
        for name in ("user", "day"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"requests.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        for name in ("relevance", "price"):
            if getattr(self, name).shape != (n, m):
                raise ValueError(f"requests.{name} has shape {getattr(self, name).shape}, expected ({n}, {m})")
        if ((self.relevance < 0) | (self.relevance > 1)).any():
            raise ValueError("requests.relevance must lie in [0, 1]")

    def __len__(self) -> int:
        return int(self.candidates.shape[0])


@dataclass(frozen=True)
class Responses:
    """What each request's user did with the slate they were shown."""

    shown: np.ndarray  # [R, K] column of `Requests.candidates` at each rank
    clicked: np.ndarray  # [R, K] bool
    purchased: np.ndarray  # [R, K] bool
    gmv: np.ndarray  # [R] float64

    @property
    def impressions(self) -> np.ndarray:
        return np.full(self.shown.shape[0], self.shown.shape[1], dtype=np.int64)

    @property
    def clicks(self) -> np.ndarray:
        return self.clicked.sum(axis=1)

    @property
    def purchases(self) -> np.ndarray:
        return self.purchased.sum(axis=1)


def assign_arms(user_ids: Sequence[str], shares: Sequence[float], salt: str) -> np.ndarray:
    """Arm index of each user: sha256(salt:user id) read as a number in [0, 1) falls into the arm whose
    slice of the cumulative shares holds it. The same user always lands in the same arm for one salt."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size == 0 or (shares <= 0).any() or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"arm shares must be positive and sum to 1, got {shares.tolist()}")
    position = np.array([int.from_bytes(hashlib.sha256(f"{salt}:{uid}".encode()).digest()[:8], "big") / 2**64
                         for uid in user_ids])
    return np.minimum(np.searchsorted(np.cumsum(shares), position, side="right"), shares.size - 1)


def examination_probabilities(slate_size: int, position_bias: float) -> np.ndarray:
    """P(rank r is examined) under the position model, r = 1..slate_size."""
    return np.arange(1, slate_size + 1, dtype=np.float64) ** -position_bias


def rank_slates(scores: np.ndarray, slate_size: int, rng: np.random.Generator) -> np.ndarray:
    """Columns of the `slate_size` highest scores of each row, best first; ties in random order, so a
    model that cannot tell candidates apart gains nothing from where the held-out item sits."""
    if not 1 <= slate_size <= scores.shape[1]:
        raise ValueError(f"slate_size must be in [1, {scores.shape[1]}] (the candidates per request), got {slate_size}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
    tie_breaker = rng.random(scores.shape)
    order = np.lexsort((tie_breaker, -scores), axis=1)
    return order[:, :slate_size]


def simulate_responses(requests: Requests, scores: np.ndarray, slate_size: int, click_model: str,
                       position_bias: float, purchase_probability: float, rng: np.random.Generator) -> Responses:
    """Rank every request's candidates by `scores` ([R, M], the score of the arm serving that request)
    and draw the user's clicks and purchases."""
    if click_model not in CLICK_MODELS:
        raise ValueError(f"unknown click model {click_model!r}; known: {', '.join(CLICK_MODELS)}")
    if scores.shape != requests.candidates.shape:
        raise ValueError(f"scores have shape {scores.shape}, the candidates {requests.candidates.shape}")
    if not 0 <= purchase_probability <= 1:
        raise ValueError(f"purchase_probability must be in [0, 1], got {purchase_probability}")
    if position_bias < 0:
        raise ValueError(f"position_bias must be >= 0, got {position_bias}")
    rank_rng, click_rng, purchase_rng = rng.spawn(3)
    shown = rank_slates(scores, slate_size, rank_rng)
    relevance = np.take_along_axis(requests.relevance, shown, axis=1)
    draws = click_rng.random(shown.shape)
    if click_model == "position":
        clicked = draws < examination_probabilities(slate_size, position_bias) * relevance
    else:
        attracted = draws < relevance
        first = attracted.argmax(axis=1)
        clicked = np.zeros_like(attracted)
        clicked[np.arange(len(first)), first] = attracted[np.arange(len(first)), first]
    purchased = clicked & (purchase_rng.random(shown.shape) < purchase_probability)
    gmv = (np.take_along_axis(requests.price, shown, axis=1) * purchased).sum(axis=1)
    return Responses(shown=shown, clicked=clicked, purchased=purchased, gmv=gmv)


def _per_user(values: np.ndarray, request_user: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Sum of `values` over each user's requests, in the order of `users`."""
    totals = np.bincount(request_user, weights=values, minlength=int(request_user.max(initial=-1)) + 1)
    return totals[users]


def arm_users(user_arm: np.ndarray, request_user: np.ndarray, n_arms: int) -> list[np.ndarray]:
    """For each arm, its users that made at least one request."""
    active = np.zeros(len(user_arm), dtype=bool)
    active[request_user] = True
    return [np.flatnonzero(active & (user_arm == arm)) for arm in range(n_arms)]


def arm_totals(responses: Responses, request_user: np.ndarray, users: np.ndarray) -> dict:
    """Counts and rates of one arm's users (each of whom made a request)."""
    mine = np.isin(request_user, users)
    impressions = int(responses.impressions[mine].sum())
    clicks = int(responses.clicks[mine].sum())
    gmv = float(responses.gmv[mine].sum())
    return {
        "users": int(users.size),
        "requests": int(mine.sum()),
        "impressions": impressions,
        "clicks": clicks,
        "ctr": clicks / impressions,
        "purchases": int(responses.purchases[mine].sum()),
        "gmv": round(gmv, 2),
        "gmv_per_impression": gmv / impressions,
    }


def metric_samples(responses: Responses, request_user: np.ndarray, users: np.ndarray) -> dict[str, RatioSample]:
    """Per-user numerators and denominators of every metric in METRICS for one arm's users."""
    impressions = _per_user(responses.impressions.astype(np.float64), request_user, users)
    return {
        "ctr": RatioSample(_per_user(responses.clicks.astype(np.float64), request_user, users), impressions),
        "gmv_per_impression": RatioSample(_per_user(responses.gmv, request_user, users), impressions),
    }


def compare_arms(responses: Responses, request_user: np.ndarray, user_arm: np.ndarray, arm_names: list[str],
                 confidence: float = 0.95, power: float = 0.8, method: str = "delta",
                 rng: np.random.Generator | None = None, bootstrap_samples: int = 1000) -> dict:
    """Arm 0 is the control. Returns {"arms": {name: totals}, "lift": {treatment: {metric: comparison}}}."""
    users_by_arm = arm_users(user_arm, request_user, len(arm_names))
    for name, users in zip(arm_names, users_by_arm):
        if users.size < 2:
            raise ValueError(f"arm {name!r} has {users.size} user(s) with requests; an arm needs at least 2 "
                             "(add users or change abtest.traffic / abtest.salt)")
    samples = [metric_samples(responses, request_user, users) for users in users_by_arm]
    bootstrap_rngs = rng.spawn(len(arm_names) - 1) if rng is not None else [None] * (len(arm_names) - 1)
    lifts = {}
    for name, treatment, arm_rng in zip(arm_names[1:], samples[1:], bootstrap_rngs):
        lifts[name] = {metric: compare(samples[0][metric], treatment[metric], confidence, power, method, arm_rng,
                                       bootstrap_samples) for metric in METRICS}
    return {"arms": {name: arm_totals(responses, request_user, users) for name, users in zip(arm_names, users_by_arm)},
            "lift": lifts}


def cumulative_daily_lifts(responses: Responses, requests: Requests, user_arm: np.ndarray, arm_names: list[str],
                           confidence: float = 0.95) -> list[dict]:
    """Delta-method lift of each treatment and metric on the requests up to each day (the daily readout
    of a live test); days where an arm has fewer than 2 users are left out."""
    rows = []
    for day in range(int(requests.day.max(initial=-1)) + 1):
        seen = requests.day <= day
        users_by_arm = arm_users(user_arm, requests.user[seen], len(arm_names))
        if min(users.size for users in users_by_arm) < 2:
            continue
        partial = Responses(responses.shown[seen], responses.clicked[seen], responses.purchased[seen],
                            responses.gmv[seen])
        samples = [metric_samples(partial, requests.user[seen], users) for users in users_by_arm]
        for name, treatment in zip(arm_names[1:], samples[1:]):
            for metric in METRICS:
                result = compare(samples[0][metric], treatment[metric], confidence)
                rows.append({"day": day + 1, "arm": name, "metric": metric, "lift": result["lift"],
                             "ci_low": result["ci_low"], "ci_high": result["ci_high"]})
    return rows
