"""DMF (Hu et al., 2018): dense multimodal fusion of the item's modalities, read by MARN's BaseModel."""

from __future__ import annotations

from marn.items import ItemTable
from marn.models.base import Architecture
from marn.models.baselines.common import AttentiveSequenceCTR, FusedModalities
from marn.nn.dense_fusion import DenseMultimodalFusion
from marn.nn.modality_embedding import MODALITIES

FUSION_DEPTH = 2  # shared layers; DMF stacks a few, two keeps it the size of MARN's one-layer projections


class DMF(AttentiveSequenceCTR):
    """Item representation: `DenseMultimodalFusion` of MARN's four modality embeddings, `train.hidden` wide,
    two levels of modality-specific and shared layers. Choice: DMF is a fusion method, not a CTR model, so
    the representation goes through MARN's BaseModel (GRU, candidate attention, MLP) like the Table 3
    ablations, which keeps the comparison to the fusion alone."""

    def __init__(self, table: ItemTable, architecture: Architecture):
        fusion = DenseMultimodalFusion(len(MODALITIES), architecture.embed_dim, architecture.hidden, FUSION_DEPTH)
        super().__init__(FusedModalities(table, architecture, fusion, architecture.hidden), architecture)
