"""Statistic features (paper §3.1.1): each item statistic discretized at several granularities, one
embedding per (statistic, granularity) bucket, NaN in a bucket of its own. The lookup is marn.ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from marn import ops


class StatisticEmbedding(nn.Module):
    """values [..., K] -> [..., K·|G|, dim]; slot k·|G| + g is statistic k at granularity g.

    `boundaries[g]` is the K × (G_g − 1) sorted boundary array of granularity g (buffers
    `boundaries_<g>`, float32); table g (`tables.<g>`, a parameter) has K·(G_g + 1) rows: row
    k·(G_g + 1) + b is statistic k's bucket b, bucket G_g is NaN. Flatten the last two dims for
    the concatenated vector of the paper.
    """

    def __init__(self, boundaries: Sequence[torch.Tensor | np.ndarray], dim: int = 8):
        super().__init__()
        if not boundaries:
            raise ValueError("StatisticEmbedding needs the boundaries of at least one granularity")
        self.dim = dim
        self.num_granularities = len(boundaries)
        self.num_statistics = int(np.shape(boundaries[0])[0])
        tables = []
        for g, bounds in enumerate(boundaries):
            bounds = torch.as_tensor(bounds, dtype=torch.float32).contiguous()
            if bounds.dim() != 2 or bounds.shape[0] != self.num_statistics:
                raise ValueError(
                    f"boundaries[{g}] must be [{self.num_statistics}, bins - 1] like boundaries[0], "
                    f"got shape {list(bounds.shape)}"
                )
            self.register_buffer(f"boundaries_{g}", bounds)
            # N(0, 1) like nn.Embedding: the tables are embeddings looked up by bucket.
            tables.append(nn.Parameter(torch.randn(self.num_statistics * (bounds.shape[1] + 2), dim)))
        self.tables = nn.ParameterList(tables)

    @property
    def boundaries(self) -> list[torch.Tensor]:
        return [getattr(self, f"boundaries_{g}") for g in range(self.num_granularities)]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.shape[-1] != self.num_statistics:
            raise ValueError(f"StatisticEmbedding expects [..., {self.num_statistics}] values, got {list(values.shape)}")
        leading = values.shape[:-1]
        flat = values.reshape(-1, self.num_statistics).to(torch.float32)
        out = ops.multi_granularity_embedding(flat, self.boundaries, list(self.tables))
        return out.view(*leading, self.num_statistics * self.num_granularities, self.dim)
