"""MMSS's item encoder as the MARN paper describes it (§4.2): modality attention with image filters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from marn.nn.fusion import PerModalityLinear


class ImageFilteredModalityAttention(nn.Module):
    """Modality embeddings [N, M, in_dim] -> item representation [N, dim].

    1. Image filter: e^image o sigmoid(F [e^m for m != image]), so the other modalities choose which
       image dimensions the item keeps.
    2. Modality attention: one scalar weight per modality, alpha = softmax_m(w_m^T tanh(W_m e^m)).
    3. rep = relu(P sum_m alpha_m e^m).
    """

    def __init__(self, modalities: Sequence[str], in_dim: int, dim: int):
        super().__init__()
        if "image" not in modalities or len(modalities) < 2:
            raise ValueError(f"the image filter needs the image and another modality, got {list(modalities)}")
        n_modalities = len(modalities)
        self.image_index = list(modalities).index("image")
        self.image_filter = nn.Linear((n_modalities - 1) * in_dim, in_dim)
        self.attention_hidden = PerModalityLinear(n_modalities, in_dim, in_dim)
        self.attention_score = PerModalityLinear(n_modalities, in_dim, 1)
        self.projection = nn.Linear(in_dim, dim)

    def filtered_and_weights(self, modality_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings with the image filtered [N, M, in_dim] and the modality weights alpha [N, M]."""
        image = modality_embeddings[:, self.image_index]
        before, after = modality_embeddings[:, :self.image_index], modality_embeddings[:, self.image_index + 1:]
        filtered_image = image * torch.sigmoid(self.image_filter(torch.cat([before, after], dim=1).flatten(1)))
        embeddings = torch.cat([before, filtered_image.unsqueeze(1), after], dim=1)
        weights = self.attention_score(torch.tanh(self.attention_hidden(embeddings))).squeeze(-1).softmax(dim=1)
        return embeddings, weights

    def forward(self, modality_embeddings: torch.Tensor) -> torch.Tensor:
        embeddings, weights = self.filtered_and_weights(modality_embeddings)
        return torch.relu(self.projection(torch.einsum("nm,nmd->nd", weights, embeddings)))
