"""Modality embedding layer (paper §3.1): each modality of an item becomes one vector `e^m` of a common size.

Every encoder maps item indices [N] to [N, dim] and keeps the item-indexed inputs it reads as
non-persistent buffers, so a saved model holds weights only and the item table comes from the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from marn.items import ItemTable
from marn.nn.statistic_embedding import StatisticEmbedding
from marn.nn.title_cnn import TitleCNN

ITEM_ID_DIM, CATEGORY_DIM, BRAND_DIM = 32, 16, 24  # eq. 1 as sized in the paper's experiments
STATISTIC_BIN_DIM = 8
TITLE_WINDOWS = (2, 3, 4)
MODALITIES = ("ids", "image", "title", "statistics")


class IdEncoder(nn.Module):
    """Eq. 1: item, category and (where the data has brands) brand embeddings, concatenated and projected."""

    def __init__(self, table: ItemTable, dim: int):
        super().__init__()
        self.register_buffer("category", table.category, persistent=False)
        self.item = nn.Embedding(table.n_items, ITEM_ID_DIM)
        self.category_embedding = nn.Embedding(table.n_categories, CATEGORY_DIM)
        if table.has_brands:
            self.register_buffer("brand", table.brand, persistent=False)
            self.brand_embedding = nn.Embedding(table.n_brands, BRAND_DIM)
        else:
            self.brand_embedding = None
        concatenated = ITEM_ID_DIM + CATEGORY_DIM + (BRAND_DIM if table.has_brands else 0)
        self.projection = nn.Linear(concatenated, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        parts = [self.item(items), self.category_embedding(self.category[items])]
        if self.brand_embedding is not None:
            parts.append(self.brand_embedding(self.brand[items]))
        return self.projection(torch.cat(parts, dim=1))


class ImageEncoder(nn.Module):
    """The VGG16 fc7 feature projected; an item without an image gets a learned "no image" vector."""

    def __init__(self, table: ItemTable, dim: int):
        super().__init__()
        self.register_buffer("image", table.image, persistent=False)
        self.register_buffer("image_mask", table.image_mask, persistent=False)
        self.projection = nn.Linear(table.image.shape[1], dim)
        self.no_image = nn.Parameter(torch.zeros(dim))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        projected = self.projection(self.image[items].float())
        return torch.where(self.image_mask[items, None], projected, self.no_image)


class TitleEncoder(nn.Module):
    """Kim's CNN over the title's word vectors, projected; an empty title gets a learned "no title" vector."""

    def __init__(self, table: ItemTable, dim: int, filters: int, freeze_word_vectors: bool):
        super().__init__()
        self.register_buffer("title_ids", table.title_ids, persistent=False)
        self.cnn = TitleCNN(table.word_vectors, freeze=freeze_word_vectors, filters=filters, windows=TITLE_WINDOWS)
        self.projection = nn.Linear(self.cnn.out_dim, dim)
        self.no_title = nn.Parameter(torch.zeros(dim))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        word_ids = self.title_ids[items]
        projected = self.projection(self.cnn(word_ids))
        return torch.where((word_ids != 0).any(dim=1, keepdim=True), projected, self.no_title)


class StatisticEncoder(nn.Module):
    """Multi-granularity discretised statistics (the custom op), projected."""

    def __init__(self, table: ItemTable, dim: int):
        super().__init__()
        self.register_buffer("statistics", table.statistics, persistent=False)
        self.embedding = StatisticEmbedding(list(table.stat_boundaries), dim=STATISTIC_BIN_DIM)
        n_bins_embedded = len(table.statistic_names) * len(table.stat_boundaries)
        self.projection = nn.Linear(n_bins_embedded * STATISTIC_BIN_DIM, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.projection(self.embedding(self.statistics[items]).flatten(1))


def build_modality_encoder(modality: str, table: ItemTable, dim: int, title_filters: int,
                           freeze_word_vectors: bool) -> nn.Module:
    if modality == "ids":
        return IdEncoder(table, dim)
    if modality == "image":
        return ImageEncoder(table, dim)
    if modality == "title":
        return TitleEncoder(table, dim, title_filters, freeze_word_vectors)
    if modality == "statistics":
        return StatisticEncoder(table, dim)
    raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")


class ModalityEmbedding(nn.Module):
    """Item indices [N] to the stacked modality embeddings [N, M, dim], in the order of `modalities`."""

    def __init__(self, table: ItemTable, modalities: Sequence[str], dim: int, title_filters: int,
                 freeze_word_vectors: bool):
        super().__init__()
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {list(modalities)}")
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict(
            {m: build_modality_encoder(m, table, dim, title_filters, freeze_word_vectors) for m in self.modalities})

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.encoders[m](items) for m in self.modalities], dim=1)


class BehaviourPropertyEmbedding(nn.Module):
    """Behaviour type and time-gap bucket embeddings, concatenated into `p_t`; zero at padded steps."""

    def __init__(self, n_types: int, n_gap_buckets: int, dim_each: int = 8):
        super().__init__()
        self.type_embedding = nn.Embedding(n_types, dim_each)
        self.gap_embedding = nn.Embedding(n_gap_buckets, dim_each)
        self.out_dim = 2 * dim_each

    def forward(self, types: torch.Tensor, gaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for name, values, table in (("behaviour type", types, self.type_embedding),
                                    ("time-gap bucket", gaps, self.gap_embedding)):
            outside = values[(values < 0) | (values >= table.num_embeddings)]
            if outside.numel():
                raise ValueError(f"{name} {int(outside[0])} is outside [0, {table.num_embeddings})")
        properties = torch.cat([self.type_embedding(types), self.gap_embedding(gaps)], dim=-1)
        return properties * mask.unsqueeze(-1)
