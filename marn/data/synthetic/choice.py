"""The true choice model behind the synthetic behaviours, rebuilt from `truth.npz`.

User i's next behaviour at time t picks item j among the items released by t with probability
softmax_j(s_ij(t)), where

    s_ij(t) = sum_f w[c_j, f] * (g + d_i(t))[f, level_jf] + affinity_i[c_j] + quality_weight * q_j + log pop_j

f runs over the shared, then image-only, then title-only factors; level_jf is item j's level of factor f;
w[c, f] weighs factor f in category c (image against title emphasis differs by category); g is the taste
the whole population shares and d_i(t) the user's own taste, moving linearly from `user_taste_start` at
their first behaviour to `user_taste_end` at their last. Writing the levels one-hot makes this the
u_i(t) . [a_j, b_j, t_j] of the story. A user never picks an item twice: given the items already seen,
the choice is the same softmax over the unseen ones, i.e. p_j / (1 - sum of p over the seen items).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

# Rejection rounds before the sampler falls back to scoring every item for the draws still pending.
MAX_REJECTION_ROUNDS = 64
# Factors the proposal treats exactly: with 2, about 1 proposal in 4 is accepted at Electronics scale
# (measured); 3 accepts 1 in 2 but makes 4 times more strata to weigh per draw, which took longer.
STRATIFIED_FACTORS = 2
_CHUNK_ELEMENTS = 1 << 22  # scores held at once when scoring users against the whole catalogue
SAMPLER_CHUNK_ELEMENTS = 1 << 17  # stratum weights held at once; smaller chunks ran faster, up to 2^15


class _Strata(NamedTuple):
    """For every set of STRATIFIED_FACTORS factors, the items sorted by stratum (category, then the levels of
    those factors); the sets are laid one after the other."""

    order: np.ndarray  # item at each place
    start: np.ndarray  # place where each stratum starts (one more entry: the end)
    cum_weight: np.ndarray  # running sum of exp(item base) up to each place, increasing across sets too
    mass: np.ndarray  # (sets, strata per set): sum of exp(item base) over the stratum
    set_of_factors: np.ndarray  # set index of each sorted factor tuple


class ChoiceModel:
    """The arrays of `truth.npz` that define the choice probabilities, with scoring and exact sampling."""

    def __init__(self, truth: Mapping[str, np.ndarray]):
        self.asin = np.asarray(truth["asin"])
        self.reviewer_id = np.asarray(truth["reviewer_id"])
        self.item_category = np.asarray(truth["item_category"], dtype=np.int64)
        self.item_levels = np.concatenate(
            [np.asarray(truth[key], dtype=np.int64) for key in
             ("item_shared_levels", "item_image_levels", "item_title_levels")], axis=1)
        self.item_release_time = np.asarray(truth["item_release_time"], dtype=np.int64)
        self.factor_weight = np.asarray(truth["category_factor_weight"], dtype=np.float64)
        self.population_taste = np.asarray(truth["population_taste"], dtype=np.float64)
        self.user_taste_start = np.asarray(truth["user_taste_start"], dtype=np.float64)
        self.user_taste_end = np.asarray(truth["user_taste_end"], dtype=np.float64)
        self.user_time_start = np.asarray(truth["user_time_start"], dtype=np.int64)
        self.user_time_end = np.asarray(truth["user_time_end"], dtype=np.int64)
        self.user_affinity = np.asarray(truth["user_category_affinity"], dtype=np.float64)

        n_items, n_factors = self.item_levels.shape
        self.n_levels = self.population_taste.shape[1]
        # item_design[j] . taste.ravel() = sum_f w[c_j, f] * taste[f, level_jf]
        self.item_design = np.zeros((n_items, n_factors * self.n_levels))
        columns = np.arange(n_factors) * self.n_levels + self.item_levels
        self.item_design[np.arange(n_items)[:, None], columns] = self.factor_weight[self.item_category]
        quality = float(truth["quality_weight"]) * np.asarray(truth["item_quality"], dtype=np.float64)
        self.item_base = (quality + np.asarray(truth["item_log_popularity"], dtype=np.float64)
                          + self.item_design @ self.population_taste.ravel())
        self._strata_tables = None

    @property
    def n_items(self) -> int:
        return len(self.item_category)

    def user_taste(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """d_i(t) for each (user, time): shape (n, factors, levels)."""
        start, end = self.user_time_start[users], self.user_time_end[users]
        span = np.maximum(end - start, 1)
        progress = np.clip((np.asarray(times, dtype=np.float64) - start) / span, 0.0, 1.0)[:, None, None]
        return self.user_taste_start[users] * (1.0 - progress) + self.user_taste_end[users] * progress

    def logits(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """s_ij(t) of every item for each (user, time): shape (n, items); -inf where not yet released."""
        taste = self.user_taste(users, times).reshape(len(users), -1)
        scores = taste @ self.item_design.T + self.user_affinity[users][:, self.item_category] + self.item_base
        scores[self.item_release_time[None, :] > np.asarray(times)[:, None]] = -np.inf
        return scores

    def sample(self, users: np.ndarray, times: np.ndarray, seen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One next item per (user, time), never one in that row of `seen` (-1 pads), drawn exactly.

        Rejection sampling. The proposal is exact in the category and in the user's strongest factors: it
        picks a stratum (category, levels of those factors) by its true weight times an upper bound of the
        other factors' taste terms, then an item of the stratum by exp(item base). A proposal is accepted
        with the ratio of the true taste term to that bound, if released and unseen.
        """
        times = np.asarray(times, dtype=np.int64)
        chosen = np.empty(len(users), dtype=np.int64)
        for rows in _row_chunks(len(users), self._strata().mass.shape[1], SAMPLER_CHUNK_ELEMENTS):
            chosen[rows] = self._sample_chunk(users[rows], times[rows], seen[rows], rng)
        return chosen

    def _sample_chunk(self, users, times, seen, rng):
        order, stratum_start, cum_weight, stratum_mass, set_of_factors = self._strata()
        n_users = len(users)
        n_categories, n_factors = self.factor_weight.shape
        n_stratified = set_of_factors.ndim
        per_category = self.n_levels ** n_stratified
        n_strata = stratum_mass.shape[1]

        taste = self.user_taste(users, times)
        best = taste.max(axis=2)  # (n, factors)
        potential = best * self.factor_weight.max(axis=0)  # the most a factor can add to a logit
        strongest = np.sort(np.argsort(-potential, axis=1, kind="stable")[:, :n_stratified], axis=1)
        # with no factor to stratify on, every row uses the one (empty) set
        factor_set = np.broadcast_to(set_of_factors[tuple(strongest.T)], (n_users,))
        others = np.ones((n_users, n_factors), dtype=bool)
        others[np.arange(n_users)[:, None], strongest] = False

        log_weight = (self.user_affinity[users] + (best * others) @ self.factor_weight.T)[:, :, None]
        for position in range(n_stratified):
            factor = strongest[:, position]
            # the level of this factor in each stratum of a category: digit `position` of the stratum index
            level = np.arange(per_category) // self.n_levels ** (n_stratified - 1 - position) % self.n_levels
            log_weight = log_weight + (self.factor_weight[:, factor].T[:, :, None]
                                       * taste[np.arange(n_users), factor][:, None, level])
        with np.errstate(divide="ignore"):
            log_weight = log_weight.reshape(n_users, n_strata) + np.log(stratum_mass[factor_set])
        cdf = np.cumsum(np.exp(log_weight - log_weight.max(axis=1, keepdims=True)), axis=1)
        # row r's cdf shifted into [r, r + 1]: one searchsorted serves every row
        stacked_cdf = (cdf / cdf[:, -1:] + np.arange(n_users)[:, None]).ravel()

        chosen = np.full(n_users, -1, dtype=np.int64)
        pending = np.arange(n_users)
        for _ in range(MAX_REJECTION_ROUNDS):
            if pending.size == 0:
                break
            u = rng.random((pending.size, 3))
            stratum = np.searchsorted(stacked_cdf, pending + u[:, 0], "right") - pending * n_strata
            stratum = factor_set[pending] * n_strata + np.minimum(stratum, n_strata - 1)
            first, stop = stratum_start[stratum], stratum_start[stratum + 1]
            low, high = cum_weight[first], cum_weight[stop]
            position = np.searchsorted(cum_weight, low + u[:, 1] * (high - low), "right") - 1
            item = order[np.maximum(np.minimum(position, stop - 1), first)]
            shortfall = (taste[pending[:, None], np.arange(n_factors), self.item_levels[item]] - best[pending])
            category = stratum % n_strata // per_category
            log_accept = (self.factor_weight[category] * shortfall * others[pending]).sum(axis=1)
            accept = (np.log(u[:, 2]) < log_accept) & (self.item_release_time[item] <= times[pending])
            accept &= ~(seen[pending] == item[:, None]).any(axis=1)
            chosen[pending[accept]] = item[accept]
            pending = pending[~accept]
        for rows in _row_chunks(pending.size, self.n_items):
            chosen[pending[rows]] = self._sample_exactly(users[pending[rows]], times[pending[rows]],
                                                         seen[pending[rows]], rng)
        return chosen

    def _sample_exactly(self, users, times, seen, rng):
        """Score every item (the cost rejection sampling avoids) and draw with the Gumbel-max trick."""
        scores = self.logits(users, times)
        rows, cols = np.nonzero(seen >= 0)
        scores[rows, seen[rows, cols]] = -np.inf
        if not np.isfinite(scores.max(axis=1)).all():
            raise ValueError("a user has already seen every released item; lower max_seq_len or add items")
        return np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)

    def _strata(self) -> _Strata:
        if self._strata_tables is None:
            n_items, n_factors = self.item_levels.shape
            factor_sets = list(itertools.combinations(range(n_factors), min(STRATIFIED_FACTORS, n_factors)))
            set_of_factors = np.full((n_factors,) * len(factor_sets[0]), -1, dtype=np.int64)
            weight = np.exp(self.item_base - self.item_base.max())
            orders, starts, cums, masses = [], [], [], []
            for k, factors in enumerate(factor_sets):
                set_of_factors[factors] = k
                stratum = self.item_category.copy()
                for factor in factors:
                    stratum = stratum * self.n_levels + self.item_levels[:, factor]
                n_strata = self.factor_weight.shape[0] * self.n_levels ** len(factors)
                order = np.argsort(stratum, kind="stable")
                start = np.searchsorted(stratum[order], np.arange(n_strata + 1))
                cum = np.concatenate([[0.0], np.cumsum(weight[order])])
                orders.append(order)
                starts.append(start[:-1] + k * n_items)
                cums.append(cum[:-1] + k * cum[-1])
                masses.append(cum[start[1:]] - cum[start[:-1]])
            self._strata_tables = _Strata(
                np.concatenate(orders), np.concatenate(starts + [[len(factor_sets) * n_items]]),
                np.concatenate(cums + [[len(factor_sets) * cum[-1]]]), np.stack(masses), set_of_factors)
        return self._strata_tables


def load_choice_model(truth: Mapping[str, np.ndarray] | ChoiceModel | str | Path) -> ChoiceModel:
    """A `ChoiceModel` from a `truth.npz` path or mapping; a model is returned as it is."""
    if isinstance(truth, ChoiceModel):
        return truth
    if isinstance(truth, (str, Path)):
        with np.load(truth) as stored:
            return ChoiceModel(stored)
    return ChoiceModel(truth)


def true_click_probability(truth, users, items, times) -> np.ndarray:
    """P(user's next behaviour at `times` is `items`) under the generating model, before any item is seen.

    `truth`: the `truth.npz` path, its `np.load` mapping, or a `ChoiceModel` (fastest for repeated calls).
    `users` / `items`: row indices into truth's `reviewer_id` / `asin`, or those ID strings; `times`: unix
    seconds. The three broadcast together. Items not yet released at that time get 0. To condition on
    items already seen, divide by 1 - (sum of these probabilities over the seen items, same time).
    """
    model = load_choice_model(truth)
    users, items, times = np.broadcast_arrays(
        as_rows(users, model.reviewer_id), as_rows(items, model.asin), np.asarray(times, dtype=np.int64))
    shape = users.shape
    users, items, times = users.ravel(), items.ravel(), times.ravel()
    pairs, pair_of_query = np.unique(np.stack([users, times], axis=1), axis=0, return_inverse=True)
    pair_of_query = pair_of_query.ravel()
    query_order = np.argsort(pair_of_query, kind="stable")
    probability = np.empty(len(users))
    for rows in _row_chunks(len(pairs), model.n_items):  # each (user, time) scored against the catalogue once
        scores = model.logits(pairs[rows, 0], pairs[rows, 1])
        top = scores.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
        first, stop = np.searchsorted(pair_of_query[query_order], [rows.start, rows.stop])
        queries = query_order[first:stop]
        local = pair_of_query[queries] - rows.start
        probability[queries] = np.exp(scores[local, items[queries]] - log_z[local])
    return probability.reshape(shape)


def as_rows(keys, ids: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.dtype.kind in "iu":
        if keys.size and (keys.min() < 0 or keys.max() >= len(ids)):
            raise IndexError(f"row index out of range [0, {len(ids)})")
        return keys.astype(np.int64)
    order = np.argsort(ids)
    where = np.clip(np.searchsorted(ids, keys, sorter=order), 0, len(ids) - 1)
    rows = order[where]
    unknown = ids[rows] != keys
    if unknown.any():
        raise KeyError(f"unknown id {keys[unknown].ravel()[0]!r}")
    return rows


def _row_chunks(n_rows: int, row_width: int, elements: int = _CHUNK_ELEMENTS):
    step = max(1, elements // max(row_width, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))
