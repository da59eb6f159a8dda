"""The experiment's users and the candidates of their requests, drawn from the prepared test split.

- Users: the test users (at most `abtest.max_users`, drawn by the seed), each with their test history.
- Candidates: each request's candidates are the user's held-out test item plus `candidates - 1` items drawn
  afresh, uniformly among the items the user never touched and already seen in the logs by the user's test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marn.data.formats import read_samples, read_sequences, read_vocab, samples_file
from marn.items import RESERVED_ENTRIES

_CANDIDATE_CHUNK_ELEMENTS = 1 << 22  # (request, item) eligibility flags held at once when drawing candidates


@dataclass(frozen=True)
class Population:
    """The experiment's users, one row each."""

    user: np.ndarray  # prepared user index
    user_id: np.ndarray  # reviewer ID string
    position: np.ndarray  # behaviours before the held-out one
    held_out: np.ndarray  # item index of the user's test behaviour
    time: np.ndarray  # unix seconds of the test behaviour: when the user's requests are answered


@dataclass(frozen=True)
class BehaviourLog:
    """The prepared behaviour sequences (docs/FORMATS.md) and when each item was first seen in them."""

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray
    item_first_seen: np.ndarray  # [N] unix seconds of each item's first behaviour; int64 max when never

    @classmethod
    def load(cls, prepared_dir: Path, n_items: int) -> "BehaviourLog":
        sequences = read_sequences(prepared_dir)
        offsets, items = sequences.offsets.astype(np.int64), sequences.items.astype(np.int64)
        times = sequences.times.astype(np.int64)
        first_seen = np.full(n_items, np.iinfo(np.int64).max)
        np.minimum.at(first_seen, items, times)
        return cls(offsets, items, times, first_seen)

    def touched(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, item) of every behaviour of those users."""
        lengths = self.offsets[users + 1] - self.offsets[users]
        rows = np.repeat(np.arange(len(users)), lengths)
        place_in_history = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.items[self.offsets[users][rows] + place_in_history]


def draw_population(prepared_dir: Path, logs: BehaviourLog, max_users: int, n_candidates: int,
                    rng: np.random.Generator) -> tuple[Population, int]:
    """Test users (drawn down to `max_users`, 0: all) whose candidate pool holds `n_candidates`; and how many
    were left out for a pool too small."""
    test = read_samples(prepared_dir, "test")
    positives = np.asarray(test[test["label"] == 1])
    if positives.size == 0:
        raise ValueError(f"{prepared_dir / samples_file('test')} has no positive test sample: no user to run the "
                         "test on")
    if max_users and positives.size > max_users:
        positives = positives[np.sort(rng.choice(positives.size, size=max_users, replace=False))]
    users = positives["user"].astype(np.int64)
    time = logs.times[logs.offsets[users] + positives["pos"]]
    released = np.sort(logs.item_first_seen[RESERVED_ENTRIES:])
    pool = np.searchsorted(released, time, side="right") - (logs.offsets[users + 1] - logs.offsets[users])
    enough = pool >= n_candidates - 1
    if not enough.any():
        raise ValueError(f"abtest.candidates ({n_candidates}) is larger than every test user's candidate pool "
                         f"(at most {int(pool.max()) + 1} items: the held-out one and the untouched ones)")
    user_ids = np.asarray(read_vocab(prepared_dir).users)
    kept = positives[enough]
    return Population(user=users[enough], user_id=user_ids[users[enough]], position=kept["pos"].astype(np.int64),
                      held_out=kept["item"].astype(np.int64), time=time[enough]), int((~enough).sum())


def draw_candidates(population: Population, logs: BehaviourLog, request_user: np.ndarray, n_candidates: int,
                    rng: np.random.Generator) -> np.ndarray:
    """[R, n_candidates] the held-out item and uniformly drawn eligible ones, in random column order."""
    n_items = len(logs.item_first_seen)
    candidates = np.empty((len(request_user), n_candidates), dtype=np.int64)
    chunk = max(1, _CANDIDATE_CHUNK_ELEMENTS // n_items)
    for start in range(0, len(request_user), chunk):
        rows = request_user[start:start + chunk]
        eligible = logs.item_first_seen[None, :] <= population.time[rows][:, None]
        eligible[:, :RESERVED_ENTRIES] = False
        row, item = logs.touched(population.user[rows])
        eligible[row, item] = False
        keys = np.where(eligible, rng.random(eligible.shape), 2.0)  # 2 > any draw: ineligible items come last
        negatives = np.argpartition(keys, n_candidates - 2, axis=1)[:, :n_candidates - 1]
        candidates[start:start + len(rows)] = np.hstack([population.held_out[rows][:, None], negatives])
    return np.take_along_axis(candidates, rng.permuted(np.tile(np.arange(n_candidates), (len(candidates), 1)),
                                                       axis=1), axis=1)


def unique_pairs(request_user: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (population row, item) pairs, sorted by user, and the pair of each [R, M] entry."""
    n_items = int(candidates.max()) + 1
    keys, inverse = np.unique(request_user[:, None] * n_items + candidates, return_inverse=True)
    return keys // n_items, keys % n_items, inverse.reshape(candidates.shape)
