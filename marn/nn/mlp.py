"""Fully connected stack: Linear + ReLU per hidden size, then a Linear to the output size."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int = 1):
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"MLP sizes must be positive, got in={in_dim}, hidden={list(hidden_sizes)}, out={out_dim}")
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [nn.Linear(in_dim, size), nn.ReLU()]
            in_dim = size
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
