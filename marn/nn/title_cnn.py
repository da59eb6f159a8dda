"""Title encoder after Kim (2014): word vectors, 1-D convolutions of several window widths, max over time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TitleCNN(nn.Module):
    """Word ids [N, T] (0 = padding) to [N, len(windows) * filters]."""

    def __init__(self, word_vectors: torch.Tensor, freeze: bool, filters: int, windows: Sequence[int] = (2, 3, 4)):
        super().__init__()
        if filters < 1 or not windows or min(windows) < 1:
            raise ValueError(f"TitleCNN needs filters >= 1 and positive windows, got {filters}, {list(windows)}")
        self.word_vectors = nn.Embedding.from_pretrained(word_vectors.float(), freeze=freeze, padding_idx=0)
        self.windows = tuple(windows)
        self.convolutions = nn.ModuleList(nn.Conv1d(word_vectors.shape[1], filters, w) for w in self.windows)
        self.out_dim = filters * len(self.windows)

    def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
        if word_ids.shape[1] < max(self.windows):
            raise ValueError(f"titles of {word_ids.shape[1]} tokens are shorter than the widest window {max(self.windows)}")
        words = self.word_vectors(word_ids).transpose(1, 2)  # [N, D, T] for Conv1d
        return torch.cat([F.relu(conv(words)).amax(dim=2) for conv in self.convolutions], dim=1)
