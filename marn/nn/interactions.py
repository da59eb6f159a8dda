"""Explicit feature interactions over field embeddings [B, F, E]: the FM pairwise term and xDeepFM's CIN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def factorization_machine_pairs(fields: torch.Tensor) -> torch.Tensor:
    """Rendle's second-order term sum_{i<j} <v_i, v_j> of fields [B, F, E], in O(F E): [B]."""
    square_of_sum = fields.sum(dim=1).square()
    sum_of_squares = fields.square().sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class CompressedInteractionNetwork(nn.Module):
    """xDeepFM's CIN (Lian et al., 2018, eq. 6): X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i o X^0_j).

    Each layer's feature maps are sum-pooled over the embedding dimension and the pools of all layers
    concatenated: fields [B, F, E] -> [B, sum(layer_sizes)]. No activation and no split-half, as in eq. 6.
    """

    def __init__(self, n_fields: int, layer_sizes: Sequence[int]):
        super().__init__()
        if n_fields < 1 or not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"CIN needs n_fields >= 1 and positive layer sizes, got {n_fields}, {list(layer_sizes)}")
        in_maps = [n_fields, *layer_sizes[:-1]]
        # a 1x1 convolution over the H_{k-1} * F outer-product maps is eq. 6's weighted sum, for every e at once
        self.layers = nn.ModuleList(nn.Conv1d(h * n_fields, size, kernel_size=1)
                                    for h, size in zip(in_maps, layer_sizes))
        self.out_dim = sum(layer_sizes)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        batch, _, dim = fields.shape
        hidden, pooled = fields, []
        for layer in self.layers:
            outer = torch.einsum("bhe,bfe->bhfe", hidden, fields).reshape(batch, -1, dim)
            hidden = layer(outer)
            pooled.append(hidden.sum(dim=2))
        return torch.cat(pooled, dim=1)
