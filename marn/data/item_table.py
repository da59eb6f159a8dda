"""Item-side inputs of the models as item-indexed tensors: row i describes item index i.

Reads `items.parquet`, `stat_boundaries.npz`, `vocab.json` and `sequences.npz` (behaviour types) from
the prepared folder and `image.npy`, `image_mask.npy`, `title_ids.npy`, `word_vectors.npy` from the
features folder (docs/FORMATS.md), checks that they describe the same items, and hands them to the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from marn.data.formats import (
    IMAGE_FILE, IMAGE_MASK_FILE, ITEMS_FILE, STAT_BOUNDARIES_FILE, TITLE_IDS_FILE, VOCAB_FILE, FormatError,
    read_image_features, read_items, read_sequences, read_stat_boundaries, read_title_ids, read_vocab,
    read_word_vectors,
)
from marn.items import ItemTable, ItemTableError


def _check_rows(name: str, array: np.ndarray, n_items: int) -> None:
    if array.shape[0] != n_items:
        raise ItemTableError(f"{name} has {array.shape[0]} rows but {ITEMS_FILE} has {n_items} items")


def load_item_table(prepared_dir: Path, features_dir: Path) -> ItemTable:
    prepared_dir, features_dir = Path(prepared_dir), Path(features_dir)
    try:
        items = read_items(prepared_dir).to_pandas()
        stat_boundaries = read_stat_boundaries(prepared_dir)
        vocab = read_vocab(prepared_dir)
        types = read_sequences(prepared_dir).types
        image, image_mask = read_image_features(features_dir)
        title_ids = read_title_ids(features_dir)
        word_vectors = read_word_vectors(features_dir)
    except (FileNotFoundError, FormatError) as err:
        raise ItemTableError(str(err)) from err
    n_items = len(items)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(n_items)):
        raise ItemTableError(f"{prepared_dir / ITEMS_FILE}: item_idx must equal the row number 0..{n_items - 1}")
    statistic_names = stat_boundaries.statistic_names
    missing = [n for n in statistic_names if n not in items.columns]
    if missing:
        raise ItemTableError(f"statistics {missing} named in {STAT_BOUNDARIES_FILE} are not columns of {ITEMS_FILE}")
    n_behaviour_types = int(types.max()) + 1 if types.size else 1

    for name, array in ((IMAGE_FILE, image), (IMAGE_MASK_FILE, image_mask), (TITLE_IDS_FILE, title_ids)):
        _check_rows(f"{features_dir / name}", array, n_items)
    if title_ids.size and (title_ids.min() < 0 or title_ids.max() >= word_vectors.shape[0]):
        raise ItemTableError(f"{features_dir / TITLE_IDS_FILE}: word ids outside [0, {word_vectors.shape[0]}) "
                             f"(found {title_ids.min()}..{title_ids.max()})")

    category = items["category_idx"].to_numpy(np.int64, copy=True)
    brand = items["brand_idx"].to_numpy(np.int64, copy=True)
    n_categories, n_brands = len(vocab.categories), len(vocab.brands)
    if category.max() >= n_categories:
        raise ItemTableError(f"category_idx {category.max()} is outside {VOCAB_FILE}'s {n_categories} categories")
    if brand.max() >= n_brands:
        raise ItemTableError(f"brand_idx {brand.max()} is outside {VOCAB_FILE}'s {n_brands} brands")

    return ItemTable(
        category=torch.from_numpy(category),
        brand=torch.from_numpy(brand),
        statistics=torch.from_numpy(items[list(statistic_names)].to_numpy(np.float32, copy=True)),
        statistic_names=statistic_names,
        stat_boundaries=tuple(torch.from_numpy(b) for b in stat_boundaries.boundaries),
        image=torch.from_numpy(np.array(image, dtype=np.float16)),
        image_mask=torch.from_numpy(image_mask.astype(bool)),
        title_ids=torch.from_numpy(title_ids.astype(np.int64)),
        word_vectors=torch.from_numpy(word_vectors.astype(np.float32)),
        popularity_level=torch.from_numpy(items["popularity_level"].to_numpy(np.int64, copy=True)),
        cold=torch.from_numpy(items["cold"].to_numpy(bool, copy=True)),
        category_names=tuple(str(c) for c in vocab.categories),
        n_brands=n_brands,
        n_behaviour_types=n_behaviour_types,
    )
