"""Cold-start click recall@N (the paper's Table 5): how high a model ranks a clicked item it never saw in training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from marn.data.dataset import CTRDataset
from marn.items import RESERVED_ENTRIES
from marn.models.base import CTRModel

_QUERIES = (
    "A query is a positive test sample whose target item is cold (in no training sample); "
    "`analysis.cold_start_queries` of them are drawn uniformly (0: all) with seed `analysis.seed`. "
)
_RANKING = (
    "drawn down to `analysis.cold_start_candidates` - 1 of them (0: no limit), uniformly without replacement, when "
    "there are more. The model scores every candidate with the user's test history; the clicked item's rank "
    "counts the other candidates scoring at least as high (ties count against it). recall@N is the share of "
    "queries ranked within the top N, averaged over runs; RANDOM is the expected recall of a uniformly random "
    "order, min(N, C) / C for C candidates, averaged over queries. With N at or above the number of candidates "
    "recall is 1 for every model."
)
UNSEEN_PROTOCOL = (  # the paper's §4.6.2: the candidate set is new items only
    _QUERIES + "Its candidates are the clicked item and every other unseen item (no training interaction) the "
    "user never interacted with (reserved indices excluded), " + _RANKING
)
MIXED_PROTOCOL = (  # not the paper's: warm items compete too, which an ID model can rank by popularity
    _QUERIES + "Its candidates are the clicked item and every item, seen in training or not, the user never "
    "interacted with (reserved indices excluded), " + _RANKING
)


@dataclass(frozen=True)
class ColdStartQuery:
    sample: int  # row of the test split
    candidates: np.ndarray  # item indices, the clicked item first


def cold_start_queries(dataset: CTRDataset, max_queries: int, max_candidates: int, rng: np.random.Generator,
                       unseen_only: bool) -> list[ColdStartQuery]:
    """One query per positive test sample with a cold target, `max_queries` of them drawn when there are more;
    0 keeps every query or every candidate. Candidates: `UNSEEN_PROTOCOL` if `unseen_only`, else `MIXED_PROTOCOL`;
    the queries drawn depend on `rng` only, not on `unseen_only`."""
    if max_queries < 0:
        raise ValueError(f"analysis.cold_start_queries must be 0 (all) or more, got {max_queries}")
    if max_candidates < 0 or max_candidates == 1:
        raise ValueError(f"analysis.cold_start_candidates must be 0 (all) or at least 2, got {max_candidates}")
    samples = dataset.samples
    n_items = len(dataset.item_cold)
    rows = np.flatnonzero((samples["label"] == 1) & dataset.item_cold[samples["item"]])
    if max_queries and len(rows) > max_queries:
        rows = np.sort(rng.choice(rows, size=max_queries, replace=False))
    pool = np.arange(RESERVED_ENTRIES, n_items)
    if unseen_only:
        pool = pool[dataset.item_cold[pool]]
    queries = []
    for row in rows:
        user, clicked = int(samples["user"][row]), int(samples["item"][row])
        touched = dataset.seq_items[dataset.offsets[user]:dataset.offsets[user + 1]]
        others = np.setdiff1d(pool, np.r_[touched, clicked])
        if max_candidates and len(others) > max_candidates - 1:
            others = np.sort(rng.choice(others, size=max_candidates - 1, replace=False))
        queries.append(ColdStartQuery(int(row), np.r_[clicked, others].astype(np.int64)))
    return queries


@torch.inference_mode()
def clicked_item_ranks(model: CTRModel, dataset: CTRDataset, queries: Sequence[ColdStartQuery],
                       batch_size: int) -> np.ndarray:
    """1-based rank of each query's clicked item among its candidates, by the model's logit."""
    model.eval()
    ranks = np.empty(len(queries), dtype=np.int64)
    for number, query in enumerate(queries):
        # the query's user and history, once per candidate as the target
        rows = np.repeat(np.asarray(dataset.samples[query.sample:query.sample + 1]), len(query.candidates))
        rows["item"] = query.candidates
        candidates = dataset.with_samples(rows)
        logits = torch.cat([model(candidates.__getitems__(list(range(start, min(start + batch_size, len(rows))))))
                            ["logit"] for start in range(0, len(rows), batch_size)])
        ranks[number] = 1 + int((logits[1:] >= logits[0]).sum())
    return ranks


def check_cutoffs(cutoffs: Sequence[int]) -> None:
    if not cutoffs or min(cutoffs) < 1:
        raise ValueError(f"analysis.recall_at must list cutoffs N >= 1, got {list(cutoffs)}")


def recall_at(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[int, float]:
    """Share of queries whose clicked item ranks within the top N, for each N of `cutoffs`."""
    check_cutoffs(cutoffs)
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("recall@N needs at least one query")
    return {int(n): float(np.mean(ranks <= n)) for n in cutoffs}


def random_recall_at(n_candidates: np.ndarray, cutoffs: Sequence[int]) -> dict[int, float]:
    """Expected recall@N of a uniformly random ranking: mean over queries of min(N, C) / C."""
    check_cutoffs(cutoffs)
    n_candidates = np.asarray(n_candidates, dtype=np.float64)
    if len(n_candidates) == 0:
        raise ValueError("recall@N needs at least one query")
    return {int(n): float(np.mean(np.minimum(n, n_candidates) / n_candidates)) for n in cutoffs}
