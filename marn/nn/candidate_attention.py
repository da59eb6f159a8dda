"""Attention of the candidate item over the behaviour states: u = sum_t alpha_t h_t over valid steps only
(and scored at valid steps only: padding costs no work)."""

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
        # scored and summed at the valid steps only; the finite fill at padding keeps a row without a valid step
        # free of NaN, and such a row sums nothing: u = 0
        row = mask.nonzero()[:, 0]
        valid_states = states[mask]
        valid_scores = self.score(torch.cat([valid_states, candidate[row]], dim=-1)).squeeze(-1)
        scores = torch.full_like(mask, torch.finfo(states.dtype).min, dtype=states.dtype).masked_scatter(mask, valid_scores)
        weights = scores.softmax(dim=1)[mask]
        return states.new_zeros(len(states), states.shape[2]).index_add(0, row, weights.unsqueeze(1) * valid_states)
