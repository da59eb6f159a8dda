"""Pooling over padded sequences that reads valid steps only: masked softmax, masked mean, additive attention."""

from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of `scores` over the entries where `mask` is true; padded entries, and rows without a valid
    entry, get weight 0."""
    # a finite fill keeps an all-padding row free of NaN; multiplying by the mask then zeroes it
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return filled.softmax(dim=dim) * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, L, ...], mask [B, L] -> mean over the valid steps [B, ...]; zero for a row without one."""
    mask = mask.view(*mask.shape, *(1,) * (values.dim() - 2))
    total = values.masked_fill(~mask, 0.0).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(values.dtype)


class AdditiveAttentionPooling(nn.Module):
    """NAML's additive attention: alpha_i = softmax_i(q^T tanh(V x_i + v)) over valid i, pooled = sum_i alpha_i x_i."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.projection = nn.Linear(dim, attention_dim)
        self.query = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """values [B, L, D], mask [B, L] bool (None = all valid) -> pooled [B, D], weights [B, L]."""
        scores = self.query(torch.tanh(self.projection(values))).squeeze(-1)
        weights = scores.softmax(dim=1) if mask is None else masked_softmax(scores, mask, dim=1)
        return torch.einsum("bl,bld->bd", weights, values), weights
