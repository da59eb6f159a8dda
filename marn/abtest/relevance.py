"""The true relevance of each (user, candidate) pair: P(click | examined) = 1 - (1 - p) ** relevance_draws, where p
is the probability that the item is the user's next choice given the items already chosen: on synthetic data the
generator's true probability (`truth.npz`), on real data the response model of `marn.abtest.response` (biased,
see there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marn.abtest.population import BehaviourLog, Population
from marn.abtest.response import BIAS_NOTE, fit_response_model
from marn.config import DataConfig, Paths
from marn.data.fetch import fetched_files
from marn.data.formats import read_items
from marn.data.synthetic import load_choice_model, true_click_probability
from marn.items import RESERVED_ENTRIES

TRUTH_NOTE = ("relevance from the synthetic generator's true next-choice probabilities (truth.npz): the "
              "responses are right by construction; what differs between arms is their ranking")


def relevance_source(relevance: str, raw_dir: Path, arms: list[str]) -> str:
    """`truth` or `response` for `abtest.relevance`: `auto` picks the truth where the fetched data has one
    (synthetic)."""
    has_truth = "truth" in fetched_files(raw_dir)
    if relevance == "truth" and not has_truth:
        raise ValueError(f"abtest.relevance is 'truth' but {raw_dir} has no truth.npz (only synthetic data has one)")
    source = ("truth" if has_truth else "response") if relevance == "auto" else relevance
    if "oracle" in arms and source != "truth":
        raise ValueError("abtest: the 'oracle' arm ranks by the true relevance, which only synthetic data has "
                         f"(relevance source here: {source})")
    return source


def truth_probability(truth_path: Path, population: Population, prepared_dir: Path, logs: BehaviourLog,
                      pair_user: np.ndarray, pair_item: np.ndarray) -> np.ndarray:
    """P(item is the user's next choice | the items they chose before) under the generator."""
    choice = load_choice_model(truth_path)
    asins = read_items(prepared_dir, ["asin"]).column("asin").to_numpy(zero_copy_only=False)
    truth_item = _rows_of(asins[RESERVED_ENTRIES:], choice.asin, "item", truth_path)
    truth_item = np.r_[np.full(RESERVED_ENTRIES, -1), truth_item]
    truth_user = _rows_of(population.user_id, choice.reviewer_id, "user", truth_path)
    probability = true_click_probability(choice, truth_user[pair_user], truth_item[pair_item],
                                         population.time[pair_user])
    row, seen = logs.touched(population.user)
    seen_mass = np.bincount(row, weights=true_click_probability(choice, truth_user[row], truth_item[seen],
                                                                population.time[row]), minlength=len(population.user))
    return np.clip(probability / np.maximum(1.0 - seen_mass[pair_user], 1e-12), 0.0, 1.0)


def _rows_of(keys: np.ndarray, ids: np.ndarray, what: str, truth_path: Path) -> np.ndarray:
    """Row of each ID string of the prepared data in the truth's ID array; fails on an ID the truth lacks."""
    order = np.argsort(ids)
    rows = order[np.clip(np.searchsorted(ids, keys, sorter=order), 0, len(ids) - 1)]
    unknown = ids[rows] != keys
    if unknown.any():
        raise ValueError(f"{what} {keys[unknown][0]!r} of the prepared data is not in {truth_path}: "
                         "the prepared data was not made from this synthetic truth")
    return rows


def choice_probability(source: str, data: DataConfig, paths: Paths, population: Population, logs: BehaviourLog,
                       pair_user: np.ndarray, pair_item: np.ndarray, response_fit_rng: np.random.Generator
                       ) -> tuple[np.ndarray, dict]:
    """p of each distinct (population row, item) pair from `source` (see `relevance_source`), and the report of
    where it came from; only the response model reads `data.max_len`."""
    if source == "truth":
        truth_path = fetched_files(paths.raw)["truth"]
        probability = truth_probability(truth_path, population, paths.prepared, logs, pair_user, pair_item)
        return probability, {"source": "truth", "note": TRUTH_NOTE}
    response = fit_response_model(paths.prepared, data.max_len, response_fit_rng)
    probability = response.choice_probability(population.user[pair_user], population.position[pair_user], pair_item)
    return probability, {"source": "response", "note": BIAS_NOTE, "response_model": response.describe()}


def click_relevance(probability: np.ndarray, relevance_draws: float) -> np.ndarray:
    """P(click | examined) = 1 - (1 - p) ** relevance_draws."""
    return 1.0 - (1.0 - np.minimum(probability, 1.0)) ** relevance_draws
