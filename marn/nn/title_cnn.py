"""Title encoder after Kim (2014): word vectors, 1-D convolutions of several window widths, max over time.

The convolutions run as one projection of the batch's distinct words (titles repeat words, and padding)
followed by shifted sums, over the positions up to the batch's longest title only.
"""

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
        self.filters = filters
        self.out_dim = filters * len(self.windows)

    def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
        title_len = word_ids.shape[1]
        if title_len < max(self.windows):
            raise ValueError(f"titles of {title_len} tokens are shorter than the widest window {max(self.windows)}")
        # After the batch's last word every position is padding, so every window there has the same response:
        # one of them is kept wherever the full title has one, which leaves the max over time unchanged.
        occupied = (word_ids != 0).any(dim=0).nonzero()
        used = int(occupied[-1]) + 1 if len(occupied) else 0
        distinct, position = torch.unique(word_ids[:, :min(title_len, used + max(self.windows))], return_inverse=True)
        # Each distinct word once through every (window, offset) slice of the filters: a convolution's response
        # is the sum over offsets k of the projection of the word at t + k by the filters' k-th slice.
        slices = torch.cat([conv.weight.permute(2, 0, 1).reshape(-1, conv.in_channels) for conv in self.convolutions])
        projected = F.linear(self.word_vectors(distinct), slices).view(-1, self.filters)  # row: word * slices + slice
        pooled, first_slice = [], 0
        for conv, window in zip(self.convolutions, self.windows):
            steps = min(title_len - window + 1, used + 1)
            # rows[n, t, k]: the projection of title n's word at t + k by this window's k-th slice
            rows = position.unfold(1, window, 1)[:, :steps] * sum(self.windows) + first_slice \
                + torch.arange(window, device=word_ids.device)
            response = F.embedding(rows, projected).sum(dim=2) + conv.bias
            # relu(max) = max(relu); tied windows (all padding) see the same words, so which one takes the gradient
            # does not change the filters' gradient; max pooling is max over time, at a third of max()'s cost
            pooled.append(F.relu(F.adaptive_max_pool1d(response.transpose(1, 2), 1).squeeze(2)))
            first_slice += window
        return torch.cat(pooled, dim=1)
