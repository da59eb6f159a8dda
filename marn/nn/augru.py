"""AUGRU (Zhou et al., 2019, DIEN eq. 3-6): a GRU whose update gate is scaled by an attention score per step."""

from __future__ import annotations

import torch
from torch import nn


class AUGRU(nn.Module):
    """u'_t = a_t * u_t and h_t = (1 - u'_t) o h_{t-1} + u'_t o h~_t, with r_t, u_t, h~_t as in a GRU.

    A step with a_t = 0 leaves the state exactly as it was, so with attention that is zero on padding the
    final state is the state after the last valid step, whatever the padded inputs hold.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_gates = nn.Linear(input_size, 3 * hidden_size)  # reset, update, candidate blocks
        self.hidden_gates = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """x [B, T, input_size], attention [B, T] -> final state [B, hidden_size]."""
        if attention.shape != x.shape[:2]:
            raise ValueError(f"attention must be [batch, time] = {list(x.shape[:2])}, got {list(attention.shape)}")
        state = x.new_zeros(x.shape[0], self.hidden_size)
        input_gates = self.input_gates(x)
        for t in range(x.shape[1]):
            input_reset, input_update, input_candidate = input_gates[:, t].chunk(3, dim=1)
            hidden_reset, hidden_update, hidden_candidate = self.hidden_gates(state).chunk(3, dim=1)
            reset = torch.sigmoid(input_reset + hidden_reset)
            update = attention[:, t, None] * torch.sigmoid(input_update + hidden_update)
            candidate = torch.tanh(input_candidate + reset * hidden_candidate)
            state = (1.0 - update) * state + update * candidate
        return state
