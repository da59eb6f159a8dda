"""MMSS as the MARN paper lists it (§4.2): modality attention with image filters, read by MARN's BaseModel."""

from __future__ import annotations

import torch

from marn.items import ItemTable
from marn.models.base import Architecture
from marn.models.baselines.common import AttentiveSequenceCTR, FusedModalities
from marn.nn.image_filtered_attention import ImageFilteredModalityAttention
from marn.nn.modality_embedding import MODALITIES


class MMSS(AttentiveSequenceCTR):
    """Item representation: `ImageFilteredModalityAttention` over MARN's four modality embeddings (the other
    modalities gate the image embedding element-wise, then one softmax weight per modality and a projection
    to `train.hidden`). Choices: the MARN paper names MMSS only as "modality attention with image filters"
    and its source was not at hand, so the filter is a learned sigmoid gate on the VGG16 embedding and the
    attention is scalar per modality; like DMF it is read by MARN's BaseModel (GRU, candidate attention, MLP).
    """

    def __init__(self, table: ItemTable, architecture: Architecture):
        fusion = ImageFilteredModalityAttention(MODALITIES, architecture.embed_dim, architecture.hidden)
        super().__init__(FusedModalities(table, architecture, fusion, architecture.hidden), architecture)

    def modality_attention(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        encoder = self.item_encoder
        _, weights = encoder.fusion.filtered_and_weights(encoder.modality_embedding(items))
        return {m: weights[:, i:i + 1] for i, m in enumerate(MODALITIES)}
