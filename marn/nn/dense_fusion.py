"""Dense multimodal fusion (Hu et al., 2018, "Dense Multimodal Fusion for Hierarchically Joint Representation")."""

from __future__ import annotations

import torch
from torch import nn

from marn.nn.fusion import PerModalityLinear


class DenseMultimodalFusion(nn.Module):
    """Modality embeddings [N, M, in_dim] -> item representation [N, dim] through layer-by-layer shared layers.

    Level l has one hidden layer per modality, h_m^l = relu(W_m^l h_m^{l-1}) with h_m^0 = e^m, and a shared
    layer z^l = relu(sum_m A_m^l h_m^l + B^l z^{l-1}) (no B^1 term); the representation is the top z^L.
    """

    def __init__(self, n_modalities: int, in_dim: int, dim: int, depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"DenseMultimodalFusion needs depth >= 1, got {depth}")
        self.modality_layers = nn.ModuleList(
            PerModalityLinear(n_modalities, in_dim if level == 0 else dim, dim) for level in range(depth))
        # sum_m A_m h_m is one linear map of the concatenated h_m
        self.shared_from_modalities = nn.ModuleList(nn.Linear(n_modalities * dim, dim) for _ in range(depth))
        self.shared_from_below = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(depth - 1))

    def forward(self, modality_embeddings: torch.Tensor) -> torch.Tensor:
        hidden, shared = modality_embeddings, None
        levels = zip(self.modality_layers, self.shared_from_modalities)
        for level, (modality_layer, from_modalities) in enumerate(levels):
            hidden = torch.relu(modality_layer(hidden))
            pre_activation = from_modalities(hidden.flatten(1))
            if shared is not None:
                pre_activation = pre_activation + self.shared_from_below[level - 1](shared)
            shared = torch.relu(pre_activation)
        return shared
