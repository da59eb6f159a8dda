"""FM: a factorization machine (Rendle, 2010) on the ID features only (paper §4.2)."""

from __future__ import annotations

import torch
from torch import nn

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs
from marn.models.baselines.common import IdFields
from marn.nn.interactions import factorization_machine_pairs

FACTOR_INIT_STD = 0.01  # small factors keep the initial pairwise term near 0 (libFM starts at 0.1 with fewer factors)


class FM(CTRModel):
    """logit = b + sum_i w_i + sum_{i<j} <v_i, v_j> over the ID fields of `IdFields` (target item, category,
    brand and the history's bags of the same); v has `train.embed_dim` factors. The target-history pairs are
    what makes it personal: <v_target item, mean v_history items> is a learned item-to-item affinity."""

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.weights = IdFields(table, dim=1, init_std=0.0)
        self.factors = IdFields(table, dim=architecture.embed_dim, init_std=FACTOR_INIT_STD)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        linear = self.weights(batch).sum(dim=(1, 2))
        return ctr_outputs(self.bias + linear + factorization_machine_pairs(self.factors(batch)))
