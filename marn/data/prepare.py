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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marn.data.amazon import STATISTIC_NAMES, SkipLog, read_meta, read_reviews
from marn.data.fetch import fetched_files
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

    @classmethod
    def from_config(cls, data_cfg) -> "PrepareOptions":
        return cls(seed=int(data_cfg.seed), stat_granularities=tuple(int(g) for g in data_cfg.stat_granularities),
                   popularity_levels=int(data_cfg.popularity_levels),
                   max_bad_line_share=float(data_cfg.max_bad_line_share))


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
    if reviews_path is None or meta_path is None:
        files = fetched_files(Path(raw_dir))
        reviews_path, meta_path = files["reviews"], files["meta"]
    skips = SkipLog()
    say = print if progress else (lambda *a, **k: None)

    say(f"prepare: reading {reviews_path}")
    reviews = read_reviews(reviews_path, skips, options.max_bad_line_share)
    say(f"prepare: {len(reviews.users):,} reviews read; reading {meta_path}")
    meta = read_meta(meta_path, set(reviews.asins.tolist()), skips, options.max_bad_line_share)

    known = np.fromiter((a in meta for a in reviews.asins), dtype=bool, count=len(reviews.asins))
    for line_no in reviews.lines[~known]:
        skips.add("unknown_item", f"{reviews_path.name}:{line_no}")
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
    u, it, t, rating, line = (user_idx[order], item_idx[order], reviews.times[order],
                              reviews.ratings[order], reviews.lines[order])
    pair_keys = u.astype(np.int64) * n_items + it
    touched, first_index = np.unique(pair_keys, return_index=True)
    first_of_pair = np.zeros(len(u), dtype=bool)
    first_of_pair[first_index] = True
    for line_no in line[~first_of_pair]:
        skips.add("duplicate_review", f"{reviews_path.name}:{line_no}")
    u, it, t, rating = u[first_of_pair], it[first_of_pair], t[first_of_pair], rating[first_of_pair]

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
    price = np.array([math.nan if m is None else m.price for m in metas])
    sales_rank = np.array([math.nan if m is None else m.sales_rank for m in metas])
    statistics = np.stack([train_count.astype(np.float64), mean_rating, price, sales_rank], axis=1)
    statistics[: len(RESERVED)] = np.nan
    boundaries = {
        f"g{g}": np.stack([equal_frequency_boundaries(statistics[len(RESERVED):, k], g)
                           for k in range(len(STATISTIC_NAMES))])
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
        **{name: pa.array(statistics[:, k]) for k, name in enumerate(STATISTIC_NAMES)},
        "train_count": pa.array(train_count.astype(np.int64)),
        "popularity_level": pa.array(levels),
        "cold": pa.array(cold),
    })

    test_positive_items = test["item"][test["label"] == 1]
    report = {
        "reviews_file": str(reviews_path),
        "meta_file": str(meta_path),
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
        "statistics": list(STATISTIC_NAMES),
        "stat_granularities": list(options.stat_granularities),
        "seed": options.seed,
        **skips.as_report(),
    }

    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    pq.write_table(table, tmp_dir / "items.parquet")
    np.savez(tmp_dir / "stat_boundaries.npz", names=np.array(STATISTIC_NAMES), **boundaries)
    np.savez(tmp_dir / "sequences.npz", offsets=offsets, items=it.astype(np.int32), times=t.astype(np.int64),
             types=np.zeros(len(it), dtype=np.int8))
    np.save(tmp_dir / "train.npy", train)
    np.save(tmp_dir / "test.npy", test)
    (tmp_dir / "vocab.json").write_text(json.dumps(
        {"users": user_vocab, "categories": category_vocab, "brands": brand_vocab}))
    report["seconds"] = round(time.time() - started, 2)
    (tmp_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _atomic_dir_swap(tmp_dir, out_dir)
    say(f"prepare: {report['users']:,} users, {report['items']:,} items, {report['train_samples']:,} train / "
        f"{report['test_samples']:,} test samples, skipped {report['skipped']} in {report['seconds']} s")
    return report
