"""xDeepFM (Lian et al., 2018): linear part + CIN + DNN over field embeddings."""

from __future__ import annotations

import torch
from torch import nn

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_batch_items
from marn.nn.interactions import CompressedInteractionNetwork
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import MODALITIES, ModalityEmbedding
from marn.nn.pooling import masked_mean

CIN_LAYER_SIZES = (64, 64)  # two layers: interactions up to third order, the depth xDeepFM found enough


class XDeepFM(CTRModel):
    """Fields: the candidate's four modality embeddings e^m and the history's, each mean-pooled over valid
    steps (2 x 4 fields of `train.embed_dim`). logit = w^T a + CIN(fields) + DNN(a), a the flattened fields;
    the DNN is `train.prediction_mlp`. The paper's linear part on raw one-hot features becomes a linear map
    of the field embeddings, since image, title and statistics have no one-hot form."""

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.modality_embedding = ModalityEmbedding(table, MODALITIES, architecture.embed_dim,
                                                    architecture.title_filters, architecture.freeze_word_vectors)
        n_fields = 2 * len(MODALITIES)
        flat_dim = n_fields * architecture.embed_dim
        self.linear = nn.Linear(flat_dim, 1)
        self.cin = CompressedInteractionNetwork(n_fields, CIN_LAYER_SIZES)
        self.cin_output = nn.Linear(self.cin.out_dim, 1, bias=False)
        self.dnn = MLP(flat_dim, architecture.prediction_mlp, 1)

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        candidate, history = encode_batch_items(self.modality_embedding, batch)
        fields = torch.cat([candidate, masked_mean(history, batch.hist_mask)], dim=1)
        flat = fields.flatten(1)
        logit = self.linear(flat) + self.cin_output(self.cin(fields)) + self.dnn(flat)
        return ctr_outputs(logit.squeeze(1))
