"""APGRU layer (paper §3.4.1): a GRU over the user's behaviours whose update gate reads the behaviour
property (e.g. behaviour type and time gap embeddings). The math and the kernels are in marn.ops.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from marn import ops


class APGRU(nn.Module):
    """Batch-first APGRU over padded sequences.

    Parameters carry nn.GRU's names and layout (`weight_ih_l0` [3H, I], `weight_hh_l0` [3H, H],
    `bias_ih_l0`, `bias_hh_l0` [3H], gate blocks r, z, n) plus `weight_pz` [H, P] when
    `use_property`. So `load_state_dict(gru.state_dict())` loads a single-layer batch-first nn.GRU:
    exactly with `use_property=False`, with `strict=False` otherwise (then zero `weight_pz` to match it).
    """

    def __init__(self, input_size: int, hidden_size: int, property_size: int, use_property: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.property_size = property_size if use_property else 0
        self.use_property = use_property
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size))
        if use_property:
            self.weight_pz = nn.Parameter(torch.empty(hidden_size, property_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.GRU's initialisation: every parameter uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(
        self,
        x: torch.Tensor,
        prop: torch.Tensor | None,
        lengths: torch.Tensor,
        h0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, input_size], prop [B, T, property_size] (ignored, may be None, without use_property),
        lengths [B] (any device; moved to x.device).

        Returns out [B, T, hidden_size] (zero at padded steps) and h_last [B, hidden_size].
        """
        batch, time, _ = x.shape
        if self.use_property:
            if prop is None:
                raise ValueError("APGRU(use_property=True) needs prop [batch, time, property_size], got None")
            weight_pz = self.weight_pz
        else:
            prop = x.new_empty(batch, time, 0)
            weight_pz = x.new_empty(self.hidden_size, 0)
        if h0 is None:
            h0 = x.new_zeros(batch, self.hidden_size)
        return ops.apgru_sequence(
            x,
            prop,
            lengths.to(device=x.device, dtype=torch.int64),
            h0,
            self.weight_ih_l0,
            self.weight_hh_l0,
            self.bias_ih_l0,
            self.bias_hh_l0,
            weight_pz,
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, property_size={self.property_size}, use_property={self.use_property}"
