"""YoutubeNet (Covington et al., 2016) as a CTR ranker: mean-pooled behaviour embeddings and a ReLU tower."""

from __future__ import annotations

import torch

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_batch_items
from marn.models.baselines.common import ConcatenatedModalities
from marn.nn.mlp import MLP
from marn.nn.pooling import masked_mean


class YoutubeNet(CTRModel):
    """user = mean of the history's item vectors (valid steps only), logit = MLP([user, candidate]).

    Items are MARN's four modality embeddings concatenated; the tower is `train.prediction_mlp`. The
    original's watch/search tokens and demographics have no counterpart here; the candidate joins the tower
    input because this is the ranking model, not the candidate generator.
    """

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.items = ConcatenatedModalities(table, architecture)
        self.tower = MLP(2 * self.items.out_dim, architecture.prediction_mlp, 1)

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        candidate, history = encode_batch_items(self.items, batch)
        user = masked_mean(history, batch.hist_mask)
        return ctr_outputs(self.tower(torch.cat([user, candidate], dim=1)).squeeze(1))
