"""The item contract data and models share: reserved indices of every vocabulary and the item-indexed table.

`marn.data.item_table.load_item_table` builds an `ItemTable` from the prepared and features folders; the models
and layers read it from here, so they never import `marn.data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = 0  # index of padding, in every vocabulary
OOV = 1  # index of out-of-vocabulary values, in every vocabulary
RESERVED_ENTRIES = 2  # PAD and OOV come before the first real entry


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
