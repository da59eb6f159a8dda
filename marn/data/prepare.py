"""The `prepare` stage: raw Amazon files → item table, user sequences and the paper's train/test samples.

Protocol (paper §4.1, as in DIN): per user, behaviours sorted by time x1..xT. Train samples predict
x(j+1) from x1..xj for j = 1..T-2; the test sample predicts xT from x1..x(T-1). Each positive gets one
negative item the user never touched. Train negatives come from items with a training interaction, so an
item first seen in a test target is cold: it is in no train sample at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from marn.config import DataConfig, Params, Paths
from marn.data.amazon import ItemMeta, SkipLog
from marn.data.fetch import fetched_files, fetched_origins
from marn.data.formats import RESERVED_NAMES, SAMPLE_DTYPE, Sequences, StatBoundaries, Vocab, write_prepared
from marn.data.layouts import INTERACTION_STATISTICS, RawDataset, missing_modalities, read_dataset
from marn.data.text import tokenize
from marn.items import OOV, PAD, RESERVED_ENTRIES


def _vocabulary(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sorted vocabulary with the reserved entries first; empty strings map to out-of-vocabulary."""
    present = sorted({v for v in values if v})
    index = {v: i + RESERVED_ENTRIES for i, v in enumerate(present)}
    return list(RESERVED_NAMES) + present, np.array([index.get(v, OOV) for v in values], dtype=np.int32)


def equal_frequency_boundaries(values: np.ndarray, n_bins: int) -> np.ndarray:
    """`n_bins − 1` sorted quantile boundaries of the finite values; all zeros when none is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(n_bins - 1, dtype=np.float32)
    return np.quantile(finite, np.arange(1, n_bins) / n_bins).astype(np.float32)


def popularity_levels(counts: np.ndarray, n_levels: int) -> np.ndarray:
    """Equal-frequency levels 0..n_levels-1 over items by count; equal counts always share a level."""
    boundaries = np.quantile(counts, np.arange(1, n_levels) / n_levels)
    return np.searchsorted(boundaries, counts, side="right").astype(np.int8)


def sample_negatives(rng: np.random.Generator, users: np.ndarray, pool: np.ndarray,
                     touched_keys: np.ndarray, n_items: int) -> np.ndarray:
    """One item per entry of `users` drawn from `pool` and never touched by that user (−1 if impossible).

    `touched_keys` is the sorted array of user * n_items + item for every behaviour.
    """
    negatives = np.full(len(users), -1, dtype=np.int64)
    todo = np.arange(len(users))
    for _ in range(100):  # rejection rounds; each removes most remaining collisions
        if todo.size == 0 or pool.size == 0:
            break
        draws = pool[rng.integers(0, pool.size, size=todo.size)]
        keys = users[todo].astype(np.int64) * n_items + draws
        hit = np.searchsorted(touched_keys, keys)
        collides = (hit < touched_keys.size) & (touched_keys[np.minimum(hit, touched_keys.size - 1)] == keys)
        negatives[todo[~collides]] = draws[~collides]
        todo = todo[collides]
    return negatives


def k_core(users: np.ndarray, items: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """`keep` narrowed until every kept user and item has at least `k` distinct kept user-item pairs."""
    _, user_idx = np.unique(users, return_inverse=True)
    _, item_idx = np.unique(items, return_inverse=True)
    n_users, n_items = int(user_idx.max(initial=-1)) + 1, int(item_idx.max(initial=-1)) + 1
    pair_keys = user_idx.astype(np.int64) * n_items + item_idx
    while True:
        pairs = np.unique(pair_keys[keep])
        user_count = np.bincount(pairs // n_items, minlength=n_users)
        item_count = np.bincount(pairs % n_items, minlength=n_items)
        narrowed = keep & (user_count[user_idx] >= k) & (item_count[item_idx] >= k)
        if narrowed.sum() == keep.sum():
            return narrowed
        keep = narrowed


def run(config: Params, paths: Paths) -> dict:
    """Stage `prepare`: the raw files `fetch` put in `paths.raw` → the prepared folder `paths.prepared`."""
    return prepare(config.data, paths.raw, paths.prepared)


@dataclass(frozen=True)
class Behaviours:
    """The kept behaviours, one per user-item pair, ordered by (user, time, item, line):
    user u's are rows offsets[u] .. offsets[u+1]-1 and `position` counts from 0 within a user."""

    user: np.ndarray  # user index
    item: np.ndarray  # item index
    time: np.ndarray  # unix seconds
    rating: np.ndarray  # NaN where there is none
    type: np.ndarray  # behaviour type, 0 where the data has none
    touched: np.ndarray  # sorted user * n_items + item of every pair
    counts: np.ndarray  # [n_users] behaviours per user
    offsets: np.ndarray  # [n_users + 1] int64
    position: np.ndarray

    @property
    def sequence_length(self) -> np.ndarray:
        """Each behaviour's user's number of behaviours."""
        return self.counts[self.user]


@dataclass(frozen=True)
class Catalogue:
    """The item table and the vocabularies it indexes."""

    table: pa.Table
    categories: list[str]
    brands: list[str]
    cold: np.ndarray  # [n_items] bool: no training interaction (the reserved entries are not cold)


def prepare(data: DataConfig, raw_dir: Path, out_dir: Path, *, reviews_path: Path | None = None,
            meta_path: Path | None = None, progress: bool = True) -> dict:
    """Prepare one dataset from the files `fetch` put in `raw_dir` (or `reviews_path` and `meta_path`) into
    `out_dir`; returns the report also written to `out_dir/report.json`."""
    started = time.time()
    fetched = reviews_path is None
    if fetched:  # interactions (reviews) and, where there is one, the catalogue (meta) fetch brought
        files = fetched_files(Path(raw_dir))
        reviews_path, meta_path = files.get("reviews", files.get("interactions")), files.get("meta", files.get("items"))
    reviews_path, meta_path = Path(reviews_path), meta_path and Path(meta_path)
    skips = SkipLog()
    say = print if progress else (lambda *a, **k: None)

    say(f"prepare: reading {reviews_path} and {meta_path or 'no item table'}")
    raw = read_dataset(reviews_path, meta_path, data.columns, skips, data.max_bad_line_share)
    say(f"prepare: {len(raw.reviews.users):,} interactions and {len(raw.meta):,} of their items read")

    def origins() -> dict[str, str]:
        return fetched_origins(Path(raw_dir)) if fetched else {"reviews": str(reviews_path), "meta": str(meta_path)}

    known, meta = _kept_interactions(raw, reviews_path.name, data.min_interactions, skips, origins)
    user_names, user_index = _vocabulary(np.where(known, raw.reviews.users, ""))
    item_ids = sorted(meta)
    item_of_id = {item_id: index + RESERVED_ENTRIES for index, item_id in enumerate(item_ids)}
    item_index = np.fromiter((item_of_id.get(a, PAD) for a in raw.reviews.asins), dtype=np.int64,
                             count=len(raw.reviews.asins))
    n_users, n_items = len(user_names), RESERVED_ENTRIES + len(item_ids)
    behaviours = _behaviours(raw, known, user_index, item_index, n_users, n_items, skips, reviews_path.name)

    # Train interactions: every behaviour but each user's last, for users with at least two.
    is_test_target = (behaviours.position == behaviours.sequence_length - 1) & (behaviours.sequence_length >= 2)
    in_train = (behaviours.sequence_length >= 2) & ~is_test_target
    train_count = np.bincount(behaviours.item[in_train], minlength=n_items)
    train, test = _samples(behaviours, in_train, is_test_target, train_count, n_items, data.seed, skips)

    metas = [None] * RESERVED_ENTRIES + [meta[item_id] for item_id in item_ids]
    statistic_names = INTERACTION_STATISTICS + raw.meta_statistics
    statistics = _item_statistics(behaviours, in_train, train_count, metas, raw.meta_statistics, n_items)
    stat_boundaries = StatBoundaries(statistic_names, tuple(data.stat_granularities), tuple(
        np.stack([equal_frequency_boundaries(statistics[RESERVED_ENTRIES:, k], granularity)
                  for k in range(len(statistic_names))])
        for granularity in data.stat_granularities))
    catalogue = _catalogue(list(RESERVED_NAMES) + item_ids, metas, statistic_names, statistics, train_count,
                           data.popularity_levels)

    report = _report(data, raw, reviews_path, meta_path, behaviours, meta, train, test, catalogue, skips)
    vocab = Vocab(users=user_names, categories=catalogue.categories, brands=catalogue.brands,
                  behaviour_types=list(raw.reviews.type_names) if raw.reviews.type_names else None)
    write_prepared(Path(out_dir), items=catalogue.table, stat_boundaries=stat_boundaries,
                   sequences=Sequences(behaviours.offsets, behaviours.item, behaviours.time, behaviours.type),
                   samples={"train": train, "test": test}, vocab=vocab, report=report)
    report["seconds"] = round(time.time() - started, 2)  # for the console and the run's artifact, not the file
    say(f"prepare: {report['users']:,} users, {report['items']:,} items, {report['train_samples']:,} train / "
        f"{report['test_samples']:,} test samples, skipped {report['skipped']} in {report['seconds']} s")
    return report


def _kept_interactions(raw: RawDataset, reviews_name: str, min_interactions: int, skips: SkipLog,
                       origins) -> tuple[np.ndarray, dict[str, ItemMeta]]:
    """Which interactions are kept (their item is in the catalogue, and in the k-core when one is asked for),
    and the catalogue of the items kept. `origins()` names the input files for an error message."""
    reviews, meta = raw.reviews, raw.meta
    known = np.fromiter((a in meta for a in reviews.asins), dtype=bool, count=len(reviews.asins))
    for line_no in reviews.lines[~known]:
        skips.add("unknown_item", f"{reviews_name}:{line_no}")
    if len(reviews.asins) and not known.any():
        named = origins()
        raise ValueError(f"none of the {len(set(reviews.asins.tolist())):,} items of "
                         f"{named.get('reviews', named.get('interactions'))} is in "
                         f"{named.get('meta', named.get('items'))}: are both files of the same dataset?")
    if min_interactions > 1:
        in_core = k_core(reviews.users, reviews.asins, known, min_interactions)
        outside = int(known.sum() - in_core.sum())
        if outside:
            skips.add(f"outside_{min_interactions}_core", f"{outside} interactions", n=outside)
        known = in_core
        meta = {a: meta[a] for a in set(reviews.asins[known].tolist())}
    return known, meta


def _behaviours(raw: RawDataset, known: np.ndarray, user_index: np.ndarray, item_index: np.ndarray, n_users: int,
                n_items: int, skips: SkipLog, reviews_name: str) -> Behaviours:
    """The kept interactions in sequence order, the first of each user-item pair only."""
    reviews = raw.reviews
    # Order by (user, time, item, line) so ties in time resolve the same way on every run.
    order = np.lexsort((reviews.lines, item_index, reviews.times, user_index))
    order = order[known[order]]
    types = reviews.types if reviews.types is not None else np.zeros(len(reviews.users), dtype=np.int8)
    user, item = user_index[order], item_index[order]
    pair_keys = user.astype(np.int64) * n_items + item
    touched, first_index = np.unique(pair_keys, return_index=True)
    first_of_pair = np.zeros(len(user), dtype=bool)
    first_of_pair[first_index] = True
    for line_no in reviews.lines[order][~first_of_pair]:
        skips.add("duplicate_review", f"{reviews_name}:{line_no}")
    kept = order[first_of_pair]
    user = user[first_of_pair]
    counts = np.bincount(user, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    too_short = int((counts == 1).sum())
    if too_short:
        skips.add("user_with_one_behaviour", f"{too_short} users", n=too_short)
    return Behaviours(user=user, item=item[first_of_pair], time=reviews.times[kept], rating=reviews.ratings[kept],
                      type=types[kept], touched=touched, counts=counts, offsets=offsets,
                      position=np.arange(len(user)) - offsets[user])


def _samples(behaviours: Behaviours, in_train: np.ndarray, is_test_target: np.ndarray, train_count: np.ndarray,
             n_items: int, seed: int, skips: SkipLog) -> tuple[np.ndarray, np.ndarray]:
    """Train and test samples: each positive next to its negative, an item the user never touched; train
    negatives come from items with a training interaction, test negatives from all items."""
    rng = np.random.default_rng(seed)
    train_positives = np.flatnonzero(in_train & (behaviours.position >= 1))
    test_positives = np.flatnonzero(is_test_target)
    train_negatives = sample_negatives(rng, behaviours.user[train_positives], np.flatnonzero(train_count > 0),
                                       behaviours.touched, n_items)
    test_negatives = sample_negatives(rng, behaviours.user[test_positives], np.arange(RESERVED_ENTRIES, n_items),
                                      behaviours.touched, n_items)
    return (_paired_samples(behaviours, train_positives, train_negatives, "train", skips),
            _paired_samples(behaviours, test_positives, test_negatives, "test", skips))


def _paired_samples(behaviours: Behaviours, positives: np.ndarray, negatives: np.ndarray, split: str,
                    skips: SkipLog) -> np.ndarray:
    """Rows positive, negative, positive, ... of the behaviours `positives`; one without a negative is dropped."""
    missing = negatives < 0
    if missing.any():
        skips.add(f"{split}_no_negative_available", f"{int(missing.sum())} samples", n=int(missing.sum()))
    positives, negatives = positives[~missing], negatives[~missing]
    out = np.empty(2 * len(positives), dtype=SAMPLE_DTYPE)
    for name, values in (("user", behaviours.user[positives]), ("pos", behaviours.position[positives])):
        out[name][0::2] = values
        out[name][1::2] = values
    out["item"][0::2] = behaviours.item[positives]
    out["item"][1::2] = negatives
    out["label"][0::2] = 1
    out["label"][1::2] = 0
    return out


def _item_statistics(behaviours: Behaviours, in_train: np.ndarray, train_count: np.ndarray,
                     metas: list[ItemMeta | None], meta_statistics: tuple[str, ...], n_items: int) -> np.ndarray:
    """[n_items, K] statistics: training interactions, mean training rating, then the catalogue's; NaN = none.
    They come from training interactions only, so test targets leak nothing."""
    rated = in_train & np.isfinite(behaviours.rating)
    rating_sum = np.bincount(behaviours.item[rated], weights=behaviours.rating[rated], minlength=n_items)
    rating_n = np.bincount(behaviours.item[rated], minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rating = np.where(rating_n > 0, rating_sum / np.maximum(rating_n, 1), np.nan)
    catalogue = [np.array([math.nan if m is None else m.statistics.get(name, math.nan) for m in metas])
                 for name in meta_statistics]
    statistics = np.stack([train_count.astype(np.float64), mean_rating, *catalogue], axis=1)
    statistics[:RESERVED_ENTRIES] = np.nan
    return statistics


def _catalogue(item_ids: list[str], metas: list[ItemMeta | None], statistic_names: tuple[str, ...],
               statistics: np.ndarray, train_count: np.ndarray, n_popularity_levels: int) -> Catalogue:
    """The item table (docs/FORMATS.md), row i = item index i."""
    categories, category_index = _vocabulary(np.array([m.category if m else "" for m in metas], dtype=object))
    brands, brand_index = _vocabulary(np.array([m.brand if m else "" for m in metas], dtype=object))
    category_index[:RESERVED_ENTRIES] = PAD
    brand_index[:RESERVED_ENTRIES] = PAD
    n_items = len(item_ids)
    levels = np.zeros(n_items, dtype=np.int8)
    levels[RESERVED_ENTRIES:] = popularity_levels(train_count[RESERVED_ENTRIES:], n_popularity_levels)
    cold = train_count == 0
    cold[:RESERVED_ENTRIES] = False
    titles = [m.title if m else "" for m in metas]
    table = pa.table({
        "item_idx": pa.array(np.arange(n_items, dtype=np.int32)),
        "asin": pa.array(item_ids),
        "category_idx": pa.array(category_index),
        "brand_idx": pa.array(brand_index),
        "title": pa.array(titles),
        "title_tokens": pa.array([tokenize(title) for title in titles], type=pa.list_(pa.string())),
        "image_ref": pa.array([m.image_ref if m else "" for m in metas]),
        **{name: pa.array(statistics[:, k]) for k, name in enumerate(statistic_names)},
        "train_count": pa.array(train_count.astype(np.int64)),
        "popularity_level": pa.array(levels),
        "cold": pa.array(cold),
    })
    return Catalogue(table, categories, brands, cold)


def _report(data: DataConfig, raw: RawDataset, reviews_path: Path, meta_path: Path | None, behaviours: Behaviours,
            meta: dict[str, ItemMeta], train: np.ndarray, test: np.ndarray, catalogue: Catalogue,
            skips: SkipLog) -> dict:
    cold = catalogue.cold
    test_positive_items = test["item"][test["label"] == 1]
    report = {
        "reviews": reviews_path.name,  # file names, not paths: the report is the same on every machine
        "metadata": meta_path.name if meta_path else None,
        "reviews_kept": int(len(behaviours.user)),
        "users": int(len(behaviours.counts) - RESERVED_ENTRIES),
        "users_with_samples": int((behaviours.counts >= 2).sum()),
        "items": int(len(cold) - RESERVED_ENTRIES),
        "categories": int(len(catalogue.categories) - RESERVED_ENTRIES),
        "brands": int(len(catalogue.brands) - RESERVED_ENTRIES),
        "train_samples": int(len(train)),
        "test_samples": int(len(test)),
        "train_positives": int(train["label"].sum()),
        "test_positives": int(test["label"].sum()),
        "cold_test_items": int(np.unique(test_positive_items[cold[test_positive_items]]).size),
        "cold_test_samples": int(cold[test_positive_items].sum()),
        "statistics": list(INTERACTION_STATISTICS + raw.meta_statistics),
        "stat_granularities": list(data.stat_granularities),
        "seed": data.seed,
        **skips.as_report(),
    }
    # Only where they say something, so the Amazon and synthetic reports stay as they were.
    if raw.layout != "amazon":
        report["layout"] = raw.layout
    if raw.reviews.type_names:
        report["behaviour_types"] = list(raw.reviews.type_names)
    if data.min_interactions > 1:
        report["min_interactions"] = data.min_interactions
    missing = missing_modalities(meta, raw.meta_statistics)
    if missing:
        report["missing_modalities"] = missing
    return report
