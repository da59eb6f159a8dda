"""Item-side inputs of the models as item-indexed tensors: row i describes item index i.

Reads `items.parquet`, `stat_boundaries.npz`, `vocab.json` and `sequences.npz` (behaviour types) from
the prepared folder and `image.npy`, `image_mask.npy`, `title_ids.npy`, `word_vectors.npy` from the
features folder (docs/FORMATS.md), checks that they describe the same items, and hands them to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

RESERVED_ENTRIES = 2  # index 0 = padding, 1 = out-of-vocabulary, in every vocabulary


class ItemTableError(ValueError):
    """Prepared data and features that do not fit together, or a missing file."""


@dataclass(frozen=True)
class ItemTable:
    category: torch.Tensor  # [N] int64
    brand: torch.Tensor  # [N] int64
    statistics: torch.Tensor  # [N, K] float32, NaN = missing
    statistic_names: tuple[str, ...]
    stat_boundaries: tuple[torch.Tensor, ...]  # one K x (G-1) float32 tensor per granularity G
    image: torch.Tensor  # [N, 4096] float16 image features (VGG16 fc7, or features.image_encoder's)
    image_mask: torch.Tensor  # [N] bool, true where the item has a real image
    title_ids: torch.Tensor  # [N, T] int64 word ids, 0 = padding
    word_vectors: torch.Tensor  # [V, D] float32, row 0 zeros
    popularity_level: torch.Tensor  # [N] int64
    cold: torch.Tensor  # [N] bool
    category_names: tuple[str, ...]  # index order, reserved entries included
    n_brands: int
    n_behaviour_types: int

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    @property
    def has_brands(self) -> bool:
        return self.n_brands > RESERVED_ENTRIES

    def shape_summary(self) -> dict:
        """The sizes a trained model depends on; a model built on other sizes cannot load its weights."""
        return {
            "n_items": self.n_items,
            "n_categories": self.n_categories,
            "n_brands": self.n_brands,
            "n_behaviour_types": self.n_behaviour_types,
            "statistic_names": list(self.statistic_names),
            "stat_granularities": [int(b.shape[1]) + 1 for b in self.stat_boundaries],
            "image_dim": int(self.image.shape[1]),
            "title_len": int(self.title_ids.shape[1]),
            "word_vectors": list(self.word_vectors.shape),
        }


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ItemTableError(f"missing file: {path}")
    return path


def _check_rows(name: str, array: np.ndarray, n_items: int) -> None:
    if array.shape[0] != n_items:
        raise ItemTableError(f"{name} has {array.shape[0]} rows but items.parquet has {n_items} items")


def load_item_table(prepared_dir: str | Path, features_dir: str | Path) -> ItemTable:
    prepared_dir, features_dir = Path(prepared_dir), Path(features_dir)
    items = pq.read_table(_require(prepared_dir / "items.parquet")).to_pandas()
    n_items = len(items)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(n_items)):
        raise ItemTableError(f"{prepared_dir / 'items.parquet'}: item_idx must equal the row number 0..{n_items - 1}")

    with np.load(_require(prepared_dir / "stat_boundaries.npz")) as npz:
        statistic_names = tuple(str(n) for n in npz["names"])
        granularity_keys = sorted((k for k in npz.files if k.startswith("g")), key=lambda k: int(k[1:]))
        boundaries = tuple(torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in granularity_keys)
    if not boundaries:
        raise ItemTableError(f"{prepared_dir / 'stat_boundaries.npz'} holds no granularity (keys g<G>)")
    missing = [n for n in statistic_names if n not in items.columns]
    if missing:
        raise ItemTableError(f"statistics {missing} named in stat_boundaries.npz are not columns of items.parquet")
    for key, b in zip(granularity_keys, boundaries):
        if b.shape[0] != len(statistic_names):
            raise ItemTableError(f"stat_boundaries.npz[{key}] has {b.shape[0]} rows for {len(statistic_names)} statistics")

    vocab = json.loads(_require(prepared_dir / "vocab.json").read_text())
    with np.load(_require(prepared_dir / "sequences.npz")) as npz:
        types = npz["types"]
        n_behaviour_types = int(types.max()) + 1 if types.size else 1

    image = np.load(_require(features_dir / "image.npy"), mmap_mode="r")
    image_mask = np.load(_require(features_dir / "image_mask.npy"))
    title_ids = np.load(_require(features_dir / "title_ids.npy"))
    word_vectors = np.load(_require(features_dir / "word_vectors.npy"))
    for name, array in (("image.npy", image), ("image_mask.npy", image_mask), ("title_ids.npy", title_ids)):
        _check_rows(f"{features_dir / name}", array, n_items)
    if title_ids.size and (title_ids.min() < 0 or title_ids.max() >= word_vectors.shape[0]):
        raise ItemTableError(f"{features_dir / 'title_ids.npy'}: word ids outside [0, {word_vectors.shape[0]}) "
                             f"(found {title_ids.min()}..{title_ids.max()})")

    category = items["category_idx"].to_numpy(np.int64, copy=True)
    brand = items["brand_idx"].to_numpy(np.int64, copy=True)
    n_categories, n_brands = len(vocab["categories"]), len(vocab["brands"])
    if category.max() >= n_categories:
        raise ItemTableError(f"category_idx {category.max()} is outside vocab.json's {n_categories} categories")
    if brand.max() >= n_brands:
        raise ItemTableError(f"brand_idx {brand.max()} is outside vocab.json's {n_brands} brands")

    return ItemTable(
        category=torch.from_numpy(category),
        brand=torch.from_numpy(brand),
        statistics=torch.from_numpy(items[list(statistic_names)].to_numpy(np.float32, copy=True)),
        statistic_names=statistic_names,
        stat_boundaries=boundaries,
        image=torch.from_numpy(np.array(image, dtype=np.float16)),
        image_mask=torch.from_numpy(image_mask.astype(bool)),
        title_ids=torch.from_numpy(title_ids.astype(np.int64)),
        word_vectors=torch.from_numpy(word_vectors.astype(np.float32)),
        popularity_level=torch.from_numpy(items["popularity_level"].to_numpy(np.int64, copy=True)),
        cold=torch.from_numpy(items["cold"].to_numpy(bool, copy=True)),
        category_names=tuple(str(c) for c in vocab["categories"]),
        n_brands=n_brands,
        n_behaviour_types=n_behaviour_types,
    )
