"""Fusion of the modality embeddings into one item representation (paper §3.2 and the CONC ablation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class PerModalityLinear(nn.Module):
    """One affine map per modality, applied to all modalities at once: [N, M, in] -> [N, M, out]."""

    def __init__(self, n_modalities: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_modalities, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n_modalities, out_dim))
        bound = in_dim ** -0.5  # nn.Linear's default uniform range
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nmi,mio->nmo", x, self.weight) + self.bias


class ModalitySum(nn.Module):
    """CONC (and a single modality when M = 1): the element-wise sum of the nonlinearly projected modalities."""

    def __init__(self, n_modalities: int, in_dim: int, out_dim: int):
        super().__init__()
        self.projection = PerModalityLinear(n_modalities, in_dim, out_dim)

    def forward(self, modality_embeddings: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(modality_embeddings)).sum(dim=1)


@dataclass
class FusionParts:
    specific: torch.Tensor  # s^m  [N, M, D]
    invariant: torch.Tensor  # c^m  [N, M, D]
    attention: torch.Tensor  # atten^m  [N, M, D]
    fused_specific: torch.Tensor  # s = sum_m atten^m * s^m  [N, D]


class MultimodalAttentionFusion(nn.Module):
    """MAF: specific projections S_m, one shared invariant projection I, vector attention over s^m (eq. 2-3).

    How the invariant features c^m are pooled (max, mean, DDMA-weighted max) is the caller's choice.
    """

    def __init__(self, n_modalities: int, in_dim: int, out_dim: int):
        super().__init__()
        self.specific_projection = PerModalityLinear(n_modalities, in_dim, out_dim)
        self.invariant_projection = nn.Linear(in_dim, out_dim)
        self.attention = PerModalityLinear(n_modalities, out_dim, out_dim)

    def specific(self, modality_embeddings: torch.Tensor) -> torch.Tensor:
        """s^m = ReLU(S_m e^m) [N, M, D]."""
        return torch.relu(self.specific_projection(modality_embeddings))

    def invariant(self, modality_embeddings: torch.Tensor) -> torch.Tensor:
        """c^m = ReLU(I e^m) [N, M, D], one projection I shared by all modalities."""
        return torch.relu(self.invariant_projection(modality_embeddings))

    def forward(self, modality_embeddings: torch.Tensor) -> FusionParts:
        specific = self.specific(modality_embeddings)
        invariant = self.invariant(modality_embeddings)
        attention = torch.tanh(self.attention(specific))
        return FusionParts(specific, invariant, attention, (attention * specific).sum(dim=1))
