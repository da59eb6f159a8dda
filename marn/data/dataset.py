"""Torch access to prepared samples: memory-mapped arrays, batches built with vectorised numpy gathers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

SECONDS_PER_DAY = 86_400.0


def time_gap_bucket(gap_seconds: np.ndarray, n_buckets: int) -> np.ndarray:
    """Log-scale bucket of a time gap: 0 below one day, then one bucket per doubling of days."""
    days = np.maximum(gap_seconds, 0) / SECONDS_PER_DAY
    with np.errstate(divide="ignore"):
        bucket = np.where(days < 1.0, 0, np.floor(np.log2(np.maximum(days, 1.0))) + 1)
    return np.minimum(bucket, n_buckets - 1).astype(np.int64)


class CTRDataset(Dataset):
    """Samples of one split; `__getitems__` returns a whole padded batch as a dict of tensors."""

    def __init__(self, prepared_dir: str | Path, split: str, max_len: int, time_gap_buckets: int = 12):
        prepared_dir = Path(prepared_dir)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        samples_path = prepared_dir / f"{split}.npy"
        if not samples_path.is_file():
            raise FileNotFoundError(f"{samples_path} not found: run the prepare stage first")
        self.samples = np.load(samples_path, mmap_mode="r")
        sequences = np.load(prepared_dir / "sequences.npz")
        self.offsets = sequences["offsets"]
        self.seq_items = sequences["items"]
        self.seq_times = sequences["times"]
        self.seq_types = sequences["types"]
        items = pq.read_table(prepared_dir / "items.parquet", columns=["cold", "popularity_level"])
        self.item_cold = items.column("cold").to_numpy(zero_copy_only=False)
        self.item_popularity = items.column("popularity_level").to_numpy().astype(np.int64)
        self.max_len = max_len
        self.time_gap_buckets = time_gap_buckets
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        rows = self.samples[np.asarray(indices, dtype=np.int64)]
        users = rows["user"].astype(np.int64)
        pos = rows["pos"].astype(np.int64)
        targets = rows["item"].astype(np.int64)
        lengths = np.minimum(pos, self.max_len)
        width = max(int(lengths.max(initial=0)), 1)
        starts = self.offsets[users] + pos - lengths
        steps = np.arange(width)
        mask = steps[None, :] < lengths[:, None]
        where = np.where(mask, starts[:, None] + steps[None, :], 0)
        target_time = self.seq_times[self.offsets[users] + pos]
        gap = time_gap_bucket(target_time[:, None] - self.seq_times[where], self.time_gap_buckets)
        return {
            "user": torch.from_numpy(users),
            "hist_items": torch.from_numpy(np.where(mask, self.seq_items[where], 0).astype(np.int64)),
            "hist_len": torch.from_numpy(lengths),
            "hist_mask": torch.from_numpy(mask),
            "hist_type": torch.from_numpy(np.where(mask, self.seq_types[where], 0).astype(np.int64)),
            "hist_gap": torch.from_numpy(np.where(mask, gap, 0)),
            "target_item": torch.from_numpy(targets),
            "label": torch.from_numpy(rows["label"].astype(np.float32)),
            "cold": torch.from_numpy(self.item_cold[targets].astype(bool)),
            "popularity_level": torch.from_numpy(self.item_popularity[targets]),
        }


def _keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`__getitems__` already built the batch; the loader must not collate it again."""
    return batch


def make_loader(dataset: CTRDataset, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A loader whose order depends only on (seed, epoch), so a run is repeatable and resumable."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_keep_batch, num_workers=num_workers)
