"""The `prepare` stage: raw Amazon files → item table, user sequences and the paper's train/test samples.

Protocol (paper §4.1, as in DIN): per user, behaviours sorted by time x1..xT. Train samples predict
x(j+1) from x1..xj for j = 1..T-2; the test sample predicts xT from x1..x(T-1). Each positive gets one
negative item the user never touched. Train negatives come from items with a training interaction, so an
item first seen in a test target is cold: it is in no train sample at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marn.data.amazon import SkipLog
from marn.data.fetch import fetched_files, fetched_origins
from marn.data.layouts import INTERACTION_STATISTICS, missing_modalities, read_dataset
from marn.data.text import tokenize

PAD, OOV = 0, 1
RESERVED = ("<pad>", "<oov>")
SAMPLE_DTYPE = np.dtype([("user", np.int32), ("pos", np.int32), ("item", np.int32), ("label", np.int8)])


@dataclass
class PrepareOptions:
    seed: int = 42
    stat_granularities: tuple[int, ...] = (10, 100)
    popularity_levels: int = 10
    max_bad_line_share: float = 0.5
    min_interactions: int = 0  # k-core: drop users and items with fewer interactions, until none is left
    columns: dict[str, str] = field(default_factory=dict)  # table column of each role (user, item, ...)

    @classmethod
    def from_config(cls, data_cfg) -> "PrepareOptions":
        return cls(seed=int(data_cfg.seed), stat_granularities=tuple(int(g) for g in data_cfg.stat_granularities),
                   popularity_levels=int(data_cfg.popularity_levels),
                   max_bad_line_share=float(data_cfg.max_bad_line_share),
                   min_interactions=int(getattr(data_cfg, "min_interactions", 0)),
                   columns={role: str(name) for role, name in dict(getattr(data_cfg, "columns", None) or {}).items()
                            if name})


def _vocabulary(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sorted vocabulary with the reserved entries first; empty strings map to out-of-vocabulary."""
    present = sorted({v for v in values if v})
    index = {v: i + len(RESERVED) for i, v in enumerate(present)}
    return list(RESERVED) + present, np.array([index.get(v, OOV) for v in values], dtype=np.int32)


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


def _atomic_dir_swap(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)


def prepare(raw_dir: Path, out_dir: Path, options: PrepareOptions, reviews_path: Path | None = None,
            meta_path: Path | None = None, progress: bool = True) -> dict:
    """Prepare one dataset; returns the report also written to `out_dir/report.json`."""
    started = time.time()
    fetched = reviews_path is None
    if fetched:  # interactions (reviews) and, where there is one, the catalogue (meta) fetch brought
        files = fetched_files(Path(raw_dir))
        reviews_path, meta_path = files.get("reviews", files.get("interactions")), files.get("meta", files.get("items"))
    skips = SkipLog()
    say = print if progress else (lambda *a, **k: None)

    say(f"prepare: reading {reviews_path} and {meta_path or 'no item table'}")
    raw = read_dataset(Path(reviews_path), meta_path and Path(meta_path), options.columns, skips,
                       options.max_bad_line_share)
    reviews, meta = raw.reviews, raw.meta
    say(f"prepare: {len(reviews.users):,} interactions and {len(meta):,} of their items read")

    known = np.fromiter((a in meta for a in reviews.asins), dtype=bool, count=len(reviews.asins))
    for line_no in reviews.lines[~known]:
        skips.add("unknown_item", f"{reviews_path.name}:{line_no}")
    if len(reviews.asins) and not known.any():
        named = fetched_origins(Path(raw_dir)) if fetched else {"reviews": str(reviews_path), "meta": str(meta_path)}
        raise ValueError(f"none of the {len(set(reviews.asins.tolist())):,} items of "
                         f"{named.get('reviews', named.get('interactions'))} is in "
                         f"{named.get('meta', named.get('items'))}: are both files of the same dataset?")
    if options.min_interactions > 1:
        in_core = k_core(reviews.users, reviews.asins, known, options.min_interactions)
        outside = int(known.sum() - in_core.sum())
        if outside:
            skips.add(f"outside_{options.min_interactions}_core", f"{outside} interactions", n=outside)
        known = in_core
        meta = {a: meta[a] for a in set(reviews.asins[known].tolist())}
    user_vocab, user_idx = _vocabulary(np.where(known, reviews.users, ""))
    asins_sorted = sorted(meta)
    item_vocab = list(RESERVED) + asins_sorted
    item_of_asin = {a: i + len(RESERVED) for i, a in enumerate(asins_sorted)}
    item_idx = np.fromiter((item_of_asin.get(a, PAD) for a in reviews.asins), dtype=np.int64,
                           count=len(reviews.asins))
    n_items = len(item_vocab)

    # Order by (user, time, item, line) so ties in time resolve the same way on every run.
    order = np.lexsort((reviews.lines, item_idx, reviews.times, user_idx))
    order = order[known[order]]
    types = reviews.types if reviews.types is not None else np.zeros(len(reviews.users), dtype=np.int8)
    u, it, t, rating, line, ty = (user_idx[order], item_idx[order], reviews.times[order],
                                  reviews.ratings[order], reviews.lines[order], types[order])
    pair_keys = u.astype(np.int64) * n_items + it
    touched, first_index = np.unique(pair_keys, return_index=True)
    first_of_pair = np.zeros(len(u), dtype=bool)
    first_of_pair[first_index] = True
    for line_no in line[~first_of_pair]:
        skips.add("duplicate_review", f"{reviews_path.name}:{line_no}")
    u, it, t, rating, ty = (u[first_of_pair], it[first_of_pair], t[first_of_pair], rating[first_of_pair],
                            ty[first_of_pair])

    n_users = len(user_vocab)
    counts = np.bincount(u, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    position = np.arange(len(u)) - offsets[u]
    seq_len = counts[u]

    too_short = int((counts == 1).sum())
    if too_short:
        skips.add("user_with_one_behaviour", f"{too_short} users", n=too_short)

    # Train interactions: every behaviour but each user's last, for users with at least two.
    is_test_target = (position == seq_len - 1) & (seq_len >= 2)
    in_train = (seq_len >= 2) & ~is_test_target
    train_count = np.bincount(it[in_train], minlength=n_items)
    train_items = np.flatnonzero(train_count > 0)

    rng = np.random.default_rng(options.seed)

    train_pos_index = np.flatnonzero(in_train & (position >= 1))
    test_pos_index = np.flatnonzero(is_test_target)
    all_items = np.arange(len(RESERVED), n_items)
    train_neg = sample_negatives(rng, u[train_pos_index], train_items, touched, n_items)
    test_neg = sample_negatives(rng, u[test_pos_index], all_items, touched, n_items)

    def samples(pos_index: np.ndarray, negatives: np.ndarray, split: str) -> np.ndarray:
        missing = negatives < 0
        if missing.any():
            skips.add(f"{split}_no_negative_available", f"{int(missing.sum())} samples", n=int(missing.sum()))
        pos_index, negatives = pos_index[~missing], negatives[~missing]
        out = np.empty(2 * len(pos_index), dtype=SAMPLE_DTYPE)
        for field, values in (("user", u[pos_index]), ("pos", position[pos_index])):
            out[field][0::2] = values
            out[field][1::2] = values
        out["item"][0::2] = it[pos_index]
        out["item"][1::2] = negatives
        out["label"][0::2] = 1
        out["label"][1::2] = 0
        return out

    train = samples(train_pos_index, train_neg, "train")
    test = samples(test_pos_index, test_neg, "test")

    # Item statistics come from training interactions only, so test targets leak nothing.
    rated = in_train & np.isfinite(rating)
    rating_sum = np.bincount(it[rated], weights=rating[rated], minlength=n_items)
    rating_n = np.bincount(it[rated], minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rating = np.where(rating_n > 0, rating_sum / np.maximum(rating_n, 1), np.nan)
    metas = [None, None] + [meta[a] for a in asins_sorted]
    statistic_names = INTERACTION_STATISTICS + raw.meta_statistics
    catalogue = [np.array([math.nan if m is None else m.statistics.get(name, math.nan) for m in metas])
                 for name in raw.meta_statistics]
    statistics = np.stack([train_count.astype(np.float64), mean_rating, *catalogue], axis=1)
    statistics[: len(RESERVED)] = np.nan
    boundaries = {
        f"g{g}": np.stack([equal_frequency_boundaries(statistics[len(RESERVED):, k], g)
                           for k in range(len(statistic_names))])
        for g in options.stat_granularities
    }

    category_vocab, category_idx = _vocabulary(np.array([m.category if m else "" for m in metas], dtype=object))
    brand_vocab, brand_idx = _vocabulary(np.array([m.brand if m else "" for m in metas], dtype=object))
    category_idx[: len(RESERVED)] = PAD
    brand_idx[: len(RESERVED)] = PAD

    levels = np.zeros(n_items, dtype=np.int8)
    levels[len(RESERVED):] = popularity_levels(train_count[len(RESERVED):], options.popularity_levels)
    cold = train_count == 0
    cold[: len(RESERVED)] = False

    titles = [m.title if m else "" for m in metas]
    table = pa.table({
        "item_idx": pa.array(np.arange(n_items, dtype=np.int32)),
        "asin": pa.array(item_vocab),
        "category_idx": pa.array(category_idx),
        "brand_idx": pa.array(brand_idx),
        "title": pa.array(titles),
        "title_tokens": pa.array([tokenize(title) for title in titles], type=pa.list_(pa.string())),
        "image_ref": pa.array([m.image_ref if m else "" for m in metas]),
        **{name: pa.array(statistics[:, k]) for k, name in enumerate(statistic_names)},
        "train_count": pa.array(train_count.astype(np.int64)),
        "popularity_level": pa.array(levels),
        "cold": pa.array(cold),
    })

    test_positive_items = test["item"][test["label"] == 1]
    report = {
        "reviews": Path(reviews_path).name,  # file names, not paths: the report is the same on every machine
        "metadata": Path(meta_path).name if meta_path else None,
        "reviews_kept": int(len(u)),
        "users": int(n_users - len(RESERVED)),
        "users_with_samples": int((counts >= 2).sum()),
        "items": int(n_items - len(RESERVED)),
        "categories": int(len(category_vocab) - len(RESERVED)),
        "brands": int(len(brand_vocab) - len(RESERVED)),
        "train_samples": int(len(train)),
        "test_samples": int(len(test)),
        "train_positives": int(train["label"].sum()),
        "test_positives": int(test["label"].sum()),
        "cold_test_items": int(np.unique(test_positive_items[cold[test_positive_items]]).size),
        "cold_test_samples": int(cold[test_positive_items].sum()),
        "statistics": list(statistic_names),
        "stat_granularities": list(options.stat_granularities),
        "seed": options.seed,
        **skips.as_report(),
    }
    # Only where they say something, so the Amazon and synthetic reports stay as they were.
    if raw.layout != "amazon":
        report["layout"] = raw.layout
    if reviews.type_names:
        report["behaviour_types"] = list(reviews.type_names)
    if options.min_interactions > 1:
        report["min_interactions"] = options.min_interactions
    missing = missing_modalities(meta, raw.meta_statistics)
    if missing:
        report["missing_modalities"] = missing

    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    pq.write_table(table, tmp_dir / "items.parquet")
    np.savez(tmp_dir / "stat_boundaries.npz", names=np.array(statistic_names), **boundaries)
    np.savez(tmp_dir / "sequences.npz", offsets=offsets, items=it.astype(np.int32), times=t.astype(np.int64),
             types=ty.astype(np.int8))
    np.save(tmp_dir / "train.npy", train)
    np.save(tmp_dir / "test.npy", test)
    vocab = {"users": user_vocab, "categories": category_vocab, "brands": brand_vocab}
    if reviews.type_names:
        vocab["behaviour_types"] = list(reviews.type_names)  # history_types of a scoring request index this
    (tmp_dir / "vocab.json").write_text(json.dumps(vocab))
    (tmp_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _atomic_dir_swap(tmp_dir, out_dir)
    report["seconds"] = round(time.time() - started, 2)  # for the console and the run's artifact, not the file
    say(f"prepare: {report['users']:,} users, {report['items']:,} items, {report['train_samples']:,} train / "
        f"{report['test_samples']:,} test samples, skipped {report['skipped']} in {report['seconds']} s")
    return report
