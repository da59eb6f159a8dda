"""What the baselines share: the ID fields of LR/FM, the modality encoders and the BaseModel sequence reader.

Every baseline except LR and FM reads the same item features as MARN (paper §4.2): the four modality
embeddings e^m of `marn.nn.modality_embedding` (IDs, VGG16 image, title CNN, statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_batch_items
from marn.nn.apgru import APGRU
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import MODALITIES, ModalityEmbedding
from marn.nn.pooling import masked_mean


class ConcatenatedModalities(nn.Module):
    """Items [N] -> the four modality embeddings concatenated [N, 4 * embed_dim] (a fixed weight per modality)."""

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.modality_embedding = ModalityEmbedding(table, MODALITIES, architecture.embed_dim,
                                                    architecture.title_filters, architecture.freeze_word_vectors)
        self.out_dim = len(MODALITIES) * architecture.embed_dim

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.modality_embedding(items).flatten(1)


class FusedModalities(nn.Module):
    """Items [N] -> fusion(the four modality embeddings [N, 4, embed_dim]) [N, out_dim]."""

    def __init__(self, table: ItemTable, architecture: Architecture, fusion: nn.Module, out_dim: int):
        super().__init__()
        self.modality_embedding = ModalityEmbedding(table, MODALITIES, architecture.embed_dim,
                                                    architecture.title_filters, architecture.freeze_word_vectors)
        self.fusion = fusion
        self.out_dim = out_dim

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.modality_embedding(items))


class IdFields(nn.Module):
    """The ID fields of LR and FM, [B, F, dim]: the target's item, category and brand, then the same of the
    history mean-pooled (a normalised multi-hot bag). One table per ID kind, shared by target and history."""

    def __init__(self, table: ItemTable, dim: int, init_std: float):
        super().__init__()
        self.register_buffer("category", table.category, persistent=False)
        self.register_buffer("brand", table.brand, persistent=False)
        sizes = {"item": table.n_items, "category": table.n_categories}
        if table.has_brands:
            sizes["brand"] = table.n_brands
        self.embeddings = nn.ModuleDict({kind: nn.Embedding(n, dim) for kind, n in sizes.items()})
        for embedding in self.embeddings.values():
            nn.init.normal_(embedding.weight, std=init_std)
        self.n_fields = 2 * len(sizes)

    def forward(self, batch: Batch) -> torch.Tensor:
        target, history, mask = batch.target_item, batch.hist_items, batch.hist_mask
        ids = {"item": (target, history), "category": (self.category[target], self.category[history]),
               "brand": (self.brand[target], self.brand[history])}
        fields = []
        for kind, embedding in self.embeddings.items():
            target_ids, history_ids = ids[kind]
            fields += [embedding(target_ids), masked_mean(embedding(history_ids), mask)]
        return torch.stack(fields, dim=1)


class AttentiveSequenceCTR(CTRModel):
    """MARN's BaseModel around another item encoder: a GRU over the history, attention of the candidate over
    its states (DIN style), and the prediction MLP on [user interest, candidate]. The encoder maps items [N]
    to [N, encoder.out_dim]."""

    def __init__(self, item_encoder: nn.Module, architecture: Architecture):
        super().__init__()
        self.item_encoder = item_encoder
        dim = item_encoder.out_dim
        self.sequence = APGRU(dim, architecture.hidden, property_size=0, use_property=False)
        self.candidate_attention = CandidateAttention(architecture.hidden, dim)
        self.prediction = MLP(architecture.hidden + dim, architecture.prediction_mlp, 1)

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        candidate, history = encode_batch_items(self.item_encoder, batch)
        states, _ = self.sequence(history, None, batch.hist_len)
        user_interest = self.candidate_attention(states, candidate, batch.hist_mask)
        return ctr_outputs(self.prediction(torch.cat([user_interest, candidate], dim=1)).squeeze(1))
