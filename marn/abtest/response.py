"""The user response model for real data, where no ground truth exists: a logistic regression fitted on
the logged training samples, kept apart from the models under test (it shares no weight or feature code
with them).

Features of (user history, item): log(1 + the item's training count), the smoothed shares of the
history in the item's category and in its brand, and the item's mean training rating. The training
samples pair each logged next behaviour with one item drawn uniformly from the `pool` items with a
training interaction, so the fitted odds of a positive estimate pool * P(next choice = item); the model
turns them into that next-choice probability, the quantity the synthetic truth provides directly.

Its bias: it learns from reviews, not from impressions; it prefers popular items and the categories and
brands a user already bought; it sees neither images nor titles, so it undervalues what the multimodal
models add. Lifts measured against it rank the models; they do not predict an online lift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, special

from marn.data.formats import read_items, read_samples, read_sequences, samples_file
from marn.items import RESERVED_ENTRIES

FEATURE_NAMES = ("log_train_count", "category_share", "brand_share", "mean_rating")
FIT_SAMPLES = 200_000  # four coefficients: more samples hardly move them but cost a [samples, max_len] history
L2_PENALTY = 1e-3

BIAS_NOTE = ("relevance from a logistic response model fitted on the logged reviews (item popularity, the "
             "user's category and brand shares, mean rating) against random negatives: not causal, it favours "
             "popular items and the user's past categories and brands and sees neither images nor titles, so "
             "it undervalues multimodal models; read the lifts as a ranking of models, not an online forecast")


@dataclass(frozen=True)
class LoggedData:
    """The prepared arrays the response model reads."""

    offsets: np.ndarray  # [U+1] int64, CSR over the behaviours
    items: np.ndarray  # [behaviours] int64
    category: np.ndarray  # [N] int64
    brand: np.ndarray  # [N] int64
    train_count: np.ndarray  # [N] float64
    mean_rating: np.ndarray  # [N] float64, NaN = no rating

    @classmethod
    def load(cls, prepared_dir: Path) -> "LoggedData":
        table = read_items(prepared_dir, ["category_idx", "brand_idx", "train_count", "mean_rating"])
        sequences = read_sequences(prepared_dir)
        return cls(offsets=sequences.offsets.astype(np.int64), items=sequences.items.astype(np.int64),
                   category=table.column("category_idx").to_numpy().astype(np.int64),
                   brand=table.column("brand_idx").to_numpy().astype(np.int64),
                   train_count=table.column("train_count").to_numpy().astype(np.float64),
                   mean_rating=table.column("mean_rating").to_numpy(zero_copy_only=False).astype(np.float64))


def history_matrix(offsets: np.ndarray, seq_items: np.ndarray, users: np.ndarray, positions: np.ndarray,
                   max_len: int) -> np.ndarray:
    """[S, max_len] the last `max_len` behaviours before each (user, position), right-padded with 0."""
    lengths = np.minimum(positions, max_len)
    starts = offsets[users] + positions - lengths
    steps = np.arange(max_len)
    inside = steps[None, :] < lengths[:, None]
    return np.where(inside, seq_items[np.where(inside, starts[:, None] + steps, 0)], 0)


def response_features(data: LoggedData, users: np.ndarray, positions: np.ndarray, items: np.ndarray,
                      max_len: int) -> np.ndarray:
    """[S, len(FEATURE_NAMES)] features of each (user's history before `positions`, item)."""
    history = history_matrix(data.offsets, data.items, users, positions, max_len)
    real = history >= RESERVED_ENTRIES
    length = real.sum(axis=1)
    same_category = ((data.category[history] == data.category[items][:, None]) & real).sum(axis=1)
    branded = data.brand[items] >= RESERVED_ENTRIES
    same_brand = ((data.brand[history] == data.brand[items][:, None]) & real).sum(axis=1) * branded
    rating = data.mean_rating[items]
    known = np.isfinite(data.mean_rating)
    rating = np.where(np.isfinite(rating), rating, data.mean_rating[known].mean() if known.any() else 0.0)
    return np.stack([np.log1p(data.train_count[items]), np.log((same_category + 1) / (length + 2)),
                     np.log((same_brand + 1) / (length + 2)), rating], axis=1)


@dataclass(frozen=True)
class ResponseModel:
    data: LoggedData
    max_len: int
    mean: np.ndarray  # [F] feature means of the fitting samples
    scale: np.ndarray  # [F] their standard deviations (1 where constant)
    weights: np.ndarray  # [F + 1] intercept first
    negative_pool: int  # items the training negatives were drawn from

    def logit(self, users: np.ndarray, positions: np.ndarray, items: np.ndarray) -> np.ndarray:
        x = (response_features(self.data, users, positions, items, self.max_len) - self.mean) / self.scale
        return self.weights[0] + x @ self.weights[1:]

    def choice_probability(self, users: np.ndarray, positions: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Estimated P(the user's next behaviour is the item) from the odds against a uniform negative."""
        return np.minimum(np.exp(self.logit(users, positions, items)) / self.negative_pool, 1.0)

    def describe(self) -> dict:
        return {"features": list(FEATURE_NAMES), "intercept": float(self.weights[0]),
                "coefficients_standardized": [float(w) for w in self.weights[1:]],
                "negative_pool": self.negative_pool}


def fit_response_model(prepared_dir: Path, max_len: int, rng: np.random.Generator) -> ResponseModel:
    """Fit on (at most FIT_SAMPLES of) `train.npy`: L2-penalised logistic regression by L-BFGS."""
    samples = read_samples(prepared_dir, "train")
    samples_path = Path(prepared_dir) / samples_file("train")
    if len(samples) == 0:
        raise ValueError(f"{samples_path} has no samples to fit the response model on")
    picked = np.sort(rng.choice(len(samples), size=min(FIT_SAMPLES, len(samples)), replace=False))
    rows = samples[picked]
    data = LoggedData.load(prepared_dir)
    labels = rows["label"].astype(np.float64)
    if labels.min() == labels.max():
        raise ValueError(f"{samples_path}: the response model needs both positive and negative samples")
    x = response_features(data, rows["user"].astype(np.int64), rows["pos"].astype(np.int64),
                          rows["item"].astype(np.int64), max_len)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    penalty = np.r_[0.0, np.full(x.shape[1], L2_PENALTY)]

    def loss_and_gradient(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w
        loss = np.mean(np.logaddexp(0.0, z) - labels * z) + 0.5 * np.sum(penalty * w**2)
        gradient = design.T @ (special.expit(z) - labels) / len(z) + penalty * w
        return float(loss), gradient

    fitted = optimize.minimize(loss_and_gradient, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B")
    if not fitted.success:
        raise RuntimeError(f"response model fit did not converge: {fitted.message}")
    return ResponseModel(data=data, max_len=max_len, mean=mean, scale=scale, weights=fitted.x,
                         negative_pool=int((data.train_count[RESERVED_ENTRIES:] > 0).sum()))
