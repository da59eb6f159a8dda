"""Tiny prepared + features folders in the docs/FORMATS.md layout for the model, train and evaluate tests.

`write_tiny_dataset` plants a learnable signal: every item has a hidden sign q; positives are mostly
items with q > 0, negatives always items with q < 0, and q shows in the item's image feature, title
words and rating, so every modality (and the item ID) can learn the label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TINY_GRANULARITIES = (4, 8)
TINY_TITLE_LEN = 6
TINY_WORD_DIM = 12
TINY_IMAGE_DIM = 4096
SAMPLE_DTYPE = np.dtype([("user", np.int32), ("pos", np.int32), ("item", np.int32), ("label", np.int8)])


@dataclass(frozen=True)
class TinyData:
    prepared_dir: Path
    features_dir: Path


def write_tiny_dataset(root: Path, n_users: int = 40, n_items: int = 30, seed: int = 0) -> TinyData:
    rng = np.random.default_rng(seed)
    prepared, features = root / "prepared", root / "features"
    prepared.mkdir(parents=True)
    features.mkdir(parents=True)
    n_rows = n_items + 2  # rows 0 (padding) and 1 (out-of-vocabulary) are reserved
    sign = np.zeros(n_rows)
    sign[2:] = np.where(np.arange(n_items) % 2 == 0, 1.0, -1.0)
    liked, disliked = np.flatnonzero(sign > 0), np.flatnonzero(sign < 0)

    offsets, seq_items, seq_times, train_rows, test_rows = [0], [], [], [], []
    for user in range(n_users):
        length = int(rng.integers(4, 11))
        items = np.where(rng.random(length) < 0.9, rng.choice(liked, length), rng.choice(disliked, length))
        times = 1_300_000_000 + np.cumsum(rng.integers(1, 20, length)) * 86_400
        for pos in range(1, length):
            rows = test_rows if pos == length - 1 else train_rows
            rows.append((user, pos, items[pos], 1))
            rows.append((user, pos, rng.choice(disliked), 0))
        seq_items += list(items)
        seq_times += list(times)
        offsets.append(len(seq_items))
    np.savez(prepared / "sequences.npz", offsets=np.array(offsets, np.int64), items=np.array(seq_items, np.int32),
             times=np.array(seq_times, np.int64), types=rng.integers(0, 2, len(seq_items)).astype(np.int8))
    for split, rows in (("train", train_rows), ("test", test_rows)):
        np.save(prepared / f"{split}.npy", np.array(rows, dtype=SAMPLE_DTYPE))

    category = np.r_[0, 1, 2 + rng.integers(0, 3, n_items)].astype(np.int32)
    brand = np.r_[0, 1, 1 + rng.integers(0, 5, n_items)].astype(np.int32)
    train_count = np.bincount([r[2] for r in train_rows if r[3] == 1], minlength=n_rows).astype(np.int64)
    popularity = np.searchsorted(np.quantile(train_count, [0.2, 0.4, 0.6, 0.8]), train_count, side="right")
    statistics = {
        "n_reviews": rng.poisson(20, n_rows).astype(np.float64),
        "mean_rating": 3.0 + 0.8 * sign + rng.normal(0, 0.3, n_rows),
        "price": rng.lognormal(3, 1, n_rows),
        "sales_rank": np.where(rng.random(n_rows) < 0.2, np.nan, rng.integers(1, 10_000, n_rows)).astype(np.float64),
    }
    words = ["<pad>", "<oov>", "great", "lovely", "best", "fine", "poor", "broken", "cheap", "awful",
             "the", "a", "box", "item", "new", "set"]
    title_ids = np.zeros((n_rows, TINY_TITLE_LEN), np.int32)
    titles = [""] * n_rows
    for i in range(2, n_rows):
        if i % 11 == 0:
            continue  # an item without a title
        signal_word = rng.integers(2, 6) if sign[i] > 0 else rng.integers(6, 10)
        ids = rng.permutation(np.r_[signal_word, rng.integers(10, 16, int(rng.integers(1, 4)))])
        title_ids[i, :len(ids)] = ids
        titles[i] = " ".join(words[j] for j in ids)
    pq.write_table(pa.table({
        "item_idx": pa.array(np.arange(n_rows), pa.int32()),
        "asin": [f"A{i:05d}" for i in range(n_rows)],
        "category_idx": pa.array(category, pa.int32()),
        "brand_idx": pa.array(brand, pa.int32()),
        "title": titles,
        "title_tokens": [t.split() for t in titles],
        "image_ref": [""] * n_rows,
        **{name: pa.array(values, pa.float64()) for name, values in statistics.items()},
        "train_count": pa.array(train_count, pa.int64()),
        "popularity_level": pa.array(popularity, pa.int8()),
        "cold": pa.array(np.arange(n_rows) >= n_rows - 3),
    }), prepared / "items.parquet")
    values = np.stack(list(statistics.values()), axis=1)
    np.savez(prepared / "stat_boundaries.npz", names=np.array(list(statistics)), **{
        f"g{g}": np.stack([np.nanquantile(values[2:, k], np.arange(1, g) / g) for k in range(values.shape[1])]
                          ).astype(np.float32) for g in TINY_GRANULARITIES})
    (prepared / "vocab.json").write_text(json.dumps({
        "users": [f"U{u}" for u in range(n_users)],
        "categories": ["<pad>", "<oov>", "Cables", "Cameras", "Headphones"],
        "brands": ["<pad>", "<oov>", "Acme", "Bolt", "Crux", "Dyna"],
    }))

    image = rng.normal(0, 0.5, (n_rows, TINY_IMAGE_DIM))
    image[:, :16] += sign[:, None]
    image_mask = np.arange(n_rows) >= 2
    image_mask[5] = False  # an item without an image
    image[~image_mask] = 0
    np.save(features / "image.npy", np.maximum(image, 0).astype(np.float16))
    np.save(features / "image_mask.npy", image_mask)
    np.save(features / "title_ids.npy", title_ids)
    word_vectors = rng.normal(0, 1, (len(words), TINY_WORD_DIM)).astype(np.float32)
    word_vectors[0] = 0
    np.save(features / "word_vectors.npy", word_vectors)
    (features / "words.txt").write_text("\n".join(words) + "\n")
    return TinyData(prepared, features)


def tiny_config(**train_overrides):
    """Checked `Params` with sizes small enough for tests; `train_overrides` replace `train` keys."""
    from marn.config import validate

    train = {"seed": 3, "epochs": 3, "batch_size": 16, "lr": 0.1, "hidden": 16, "embed_dim": 8,
             "title_filters": 4, "prediction_mlp": [16], "log_every": 4, "checkpoint_every": 5, "num_threads": 1}
    train.update(train_overrides)
    return validate({"data": {"max_len": 6, "time_gap_buckets": 6}, "train": train, "evaluate": {"batch_size": 64}})


def tiny_architecture():
    """The model sizes of `tiny_config()`."""
    from marn.models.base import Architecture

    config = tiny_config()
    return Architecture.from_config(config.train, config.data)


def tiny_model(name: str, table, seed: int = 0):
    """Registered model `name` with `tiny_architecture()`, its weights drawn from `seed`."""
    import torch

    from marn.models.registry import build_model

    torch.manual_seed(seed)
    return build_model(name, table, tiny_architecture())


def tiny_paths(data: TinyData, out_dir: Path, **others: Path):
    """`Paths` on `data`'s folders with models (and every other output) under `out_dir`; `others` replace fields."""
    from marn.config import Paths

    out_dir = Path(out_dir)
    return Paths(**{"raw": out_dir / "raw", "prepared": data.prepared_dir, "features": data.features_dir,
                    "image_cache": out_dir / "cache" / "images", "vectors_cache": out_dir / "cache" / "vectors",
                    "models": out_dir, "train_params": out_dir / "train_params", "eval_out": out_dir / "eval.json",
                    "eval_plots": out_dir / "plots", "abtest_out": out_dir / "abtest.json",
                    "abtest_plot": out_dir / "abtest_lift.png",
                    "abtest_daily": out_dir / "abtest_lift.json", "report": out_dir / "report", **others})
