"""NAML (Wu et al., 2019): attentive multi-view item encoder, attentive user encoder, dot-product click score."""

from __future__ import annotations

import torch
from torch import nn

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_batch_items
from marn.nn.fusion import PerModalityLinear
from marn.nn.modality_embedding import MODALITIES, ModalityEmbedding
from marn.nn.pooling import AdditiveAttentionPooling

ATTENTION_DIM = 200  # NAML's query vector size for both view and user attention


class NAML(CTRModel):
    """Views: MARN's four modality embeddings, each through its own dense layer to `train.hidden` (NAML's
    title and body views end in such a layer); view-level additive attention gives the item vector. User:
    additive attention over the history's item vectors (real steps only). logit = <user, candidate> + b.
    Choices: the title view is the shared title CNN (max over time) rather than NAML's word-level attention,
    so every model reads the same title features; a bias is added to the dot product, since NAML's softmax
    over one clicked and K shown news cancels a bias but the pointwise log loss here needs it for the base rate.
    """

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.modality_embedding = ModalityEmbedding(table, MODALITIES, architecture.embed_dim,
                                                    architecture.title_filters, architecture.freeze_word_vectors)
        self.views = PerModalityLinear(len(MODALITIES), architecture.embed_dim, architecture.hidden)
        self.view_attention = AdditiveAttentionPooling(architecture.hidden, ATTENTION_DIM)
        self.user_attention = AdditiveAttentionPooling(architecture.hidden, ATTENTION_DIM)
        self.bias = nn.Parameter(torch.zeros(1))

    def _views_and_weights(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_attention(torch.relu(self.views(self.modality_embedding(items))))

    def encode_items(self, items: torch.Tensor) -> torch.Tensor:
        return self._views_and_weights(items)[0]

    def modality_attention(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self._views_and_weights(items)[1]
        return {m: weights[:, i:i + 1] for i, m in enumerate(MODALITIES)}

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        candidate, history = encode_batch_items(self.encode_items, batch)
        user, _ = self.user_attention(history, batch.hist_mask)
        return ctr_outputs((user * candidate).sum(dim=1) + self.bias)
