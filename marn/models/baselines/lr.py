"""LR: logistic regression on the ID features only (paper §4.2)."""

from __future__ import annotations

import torch
from torch import nn

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs
from marn.models.baselines.common import IdFields


class LR(CTRModel):
    """logit = b + sum of one weight per ID field (`IdFields` with dim 1); the history's IDs enter as a
    normalised bag, so the model learns item, category and brand popularity but no user-item interaction.
    Weights start at zero, the convex problem's natural start."""

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.weights = IdFields(table, dim=1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        return ctr_outputs(self.weights(batch).sum(dim=(1, 2)) + self.bias)
