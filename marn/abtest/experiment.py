"""Everything about the simulated test that does not depend on the arms: users, their requests (1 +
Poisson(requests_per_user - 1) a user, on days drawn uniformly from the test's `days`), the candidates with
their relevance and price."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marn.abtest.population import BehaviourLog, Population, draw_candidates, draw_population, unique_pairs
from marn.abtest.relevance import choice_probability, click_relevance, relevance_source
from marn.abtest.simulation import Requests
from marn.config import AbtestConfig, DataConfig, Paths
from marn.data.formats import count_items, read_items
from marn.items import RESERVED_ENTRIES


@dataclass(frozen=True)
class Experiment:
    """Everything about the test that does not depend on the arms: users, requests and their truth."""

    population: Population
    requests: Requests
    pair_user: np.ndarray  # distinct (population row, item) pairs among the candidates, sorted by user
    pair_item: np.ndarray
    pair_of_entry: np.ndarray  # [R, M] the pair of each candidate
    relevance_report: dict
    users_skipped_small_pool: int
    prices_imputed: int


def generators(seed: int, part: int, n: int) -> list[np.random.Generator]:
    """`n` generators for one part of the stage, so the draws of one part never shift another's."""
    return np.random.default_rng([seed, part]).spawn(n)


def item_prices(prepared_dir: Path) -> tuple[np.ndarray, int]:
    """Meta prices by item index, a missing one replaced by the median known price; and how many were missing."""
    price = read_items(prepared_dir, ["price"]).column("price").to_numpy(zero_copy_only=False).astype(np.float64)
    missing = ~np.isfinite(price[RESERVED_ENTRIES:])
    known = price[RESERVED_ENTRIES:][~missing]
    price[RESERVED_ENTRIES:][missing] = np.median(known) if known.size else 1.0
    return price, int(missing.sum())


def build_experiment(abtest: AbtestConfig, data: DataConfig, paths: Paths) -> Experiment:
    """Users, their requests, the candidates with relevance and price (`data.max_len` is read for the response
    model of real data only)."""
    source = relevance_source(abtest.relevance, paths.raw, abtest.arms)
    population_rng, request_rng, candidate_rng, response_fit_rng = generators(abtest.seed, 0, 4)
    n_items = count_items(paths.prepared)
    if abtest.candidates > n_items - RESERVED_ENTRIES:
        raise ValueError(f"abtest.candidates ({abtest.candidates}) is larger than the catalogue "
                         f"({n_items - RESERVED_ENTRIES} items)")
    logs = BehaviourLog.load(paths.prepared, n_items)
    population, users_skipped = draw_population(paths.prepared, logs, abtest.max_users, abtest.candidates,
                                                population_rng)

    requests_per_user = 1 + request_rng.poisson(abtest.requests_per_user - 1, len(population.user))
    request_user = np.repeat(np.arange(len(population.user)), requests_per_user)
    request_day = request_rng.integers(0, abtest.days, len(request_user))
    candidates = draw_candidates(population, logs, request_user, abtest.candidates, candidate_rng)
    pair_user, pair_item, pair_of_entry = unique_pairs(request_user, candidates)

    probability, relevance_report = choice_probability(source, data, paths, population, logs, pair_user, pair_item,
                                                       response_fit_rng)
    pair_relevance = click_relevance(probability, abtest.relevance_draws)
    price, prices_imputed = item_prices(paths.prepared)
    requests = Requests(user=request_user, day=request_day, candidates=candidates,
                        relevance=pair_relevance[pair_of_entry], price=price[candidates])
    return Experiment(population=population, requests=requests, pair_user=pair_user, pair_item=pair_item,
                      pair_of_entry=pair_of_entry, relevance_report=relevance_report,
                      users_skipped_small_pool=users_skipped, prices_imputed=prices_imputed)
