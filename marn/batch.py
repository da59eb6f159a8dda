"""The one batch type models read: padded histories and their targets, as tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """B rows of (history, target item); histories padded to the batch's longest, W >= 1 steps.

    `user`, `label`, `cold` and `popularity_level` are None where they are unknown (a serving request)."""

    hist_items: torch.Tensor  # [B, W] int64 item indices, 0 = padding
    hist_len: torch.Tensor  # [B] int64 valid steps of each row
    hist_mask: torch.Tensor  # [B, W] bool, true at valid steps
    hist_type: torch.Tensor  # [B, W] int64 behaviour types, 0 at padding
    hist_gap: torch.Tensor  # [B, W] int64 time-gap buckets to the target, 0 at padding
    target_item: torch.Tensor  # [B] int64
    user: torch.Tensor | None = None  # [B] int64
    label: torch.Tensor | None = None  # [B] float32, 1 = click
    cold: torch.Tensor | None = None  # [B] bool, the target is a cold item
    popularity_level: torch.Tensor | None = None  # [B] int64 popularity level of the target

    def __len__(self) -> int:
        return int(self.target_item.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on `device`."""
        return dataclasses.replace(self, **{
            field.name: value.to(device, non_blocking=non_blocking)
            for field in dataclasses.fields(self)
            if (value := getattr(self, field.name)) is not None})
