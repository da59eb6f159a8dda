"""Attention of the candidate item over the behaviour states: u = sum_t alpha_t h_t over valid steps only."""

from __future__ import annotations

import torch
from torch import nn

from marn.nn.mlp import MLP


class CandidateAttention(nn.Module):
    """alpha_t = softmax over valid t of MLP([h_t, candidate]); a history with no valid step gives u = 0."""

    def __init__(self, state_dim: int, candidate_dim: int, hidden: int = 64):
        super().__init__()
        self.score = MLP(state_dim + candidate_dim, [hidden], 1)

    def forward(self, states: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states [B, T, H], candidate [B, C], mask [B, T] bool -> [B, H]."""
        expanded = candidate.unsqueeze(1).expand(-1, states.shape[1], -1)
        scores = self.score(torch.cat([states, expanded], dim=-1)).squeeze(-1)
        # a finite fill keeps an all-padding row free of NaN; multiplying by the mask then zeroes it
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1) * mask
        return torch.einsum("bt,bth->bh", weights, states)
