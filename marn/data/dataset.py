"""Torch access to prepared samples: memory-mapped arrays, batches built with vectorised numpy gathers."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from marn.batch import Batch
from marn.config import DataConfig
from marn.data.formats import SAMPLE_DTYPE, SPLITS, read_items, read_samples, read_sequences

SECONDS_PER_DAY = 86_400.0
SPLIT_WORDS = {"train": "training", "test": "test"}  # how error messages name a split's samples


def time_gap_bucket(gap_seconds: np.ndarray, n_buckets: int) -> np.ndarray:
    """Log-scale bucket of a time gap: 0 below one day, then one bucket per doubling of days."""
    days = np.maximum(gap_seconds, 0) / SECONDS_PER_DAY
    with np.errstate(divide="ignore"):
        bucket = np.where(days < 1.0, 0, np.floor(np.log2(np.maximum(days, 1.0))) + 1)
    return np.minimum(bucket, n_buckets - 1).astype(np.int64)


def build_batch(behaviour_items: np.ndarray, behaviour_types: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                target_item: np.ndarray, *, behaviour_times: np.ndarray | None = None,
                target_time: np.ndarray | None = None, time_gap_buckets: int = 1,
                user: np.ndarray | None = None, label: np.ndarray | None = None, cold: np.ndarray | None = None,
                popularity_level: np.ndarray | None = None) -> Batch:
    """The batch of histories cut from flat behaviour arrays, with their targets.

    Row r's history is behaviours starts[r] .. starts[r] + lengths[r] - 1, padded to the longest row (at least one
    step). Time gaps are bucketed from `target_time[r]` back to each behaviour's time, and are 0 without
    `behaviour_times`. One history row (len(starts) == 1) is shared by every target: its tensors are expanded
    views, not copies. The optional per-row arrays become the batch's `user`, `label`, `cold`, `popularity_level`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    steps = np.arange(width)
    mask = steps[None, :] < lengths[:, None]
    where = (np.asarray(starts, dtype=np.int64)[:, None] + steps[None, :])[mask]

    def padded(values: np.ndarray) -> np.ndarray:
        out = np.zeros(mask.shape, dtype=np.int64)
        out[mask] = values
        return out

    gap = np.zeros(mask.shape, dtype=np.int64)
    if behaviour_times is not None:
        seconds = np.broadcast_to(np.asarray(target_time)[:, None], mask.shape)[mask] - behaviour_times[where]
        gap[mask] = time_gap_bucket(seconds, time_gap_buckets)
    history = {"hist_items": torch.from_numpy(padded(behaviour_items[where])), "hist_len": torch.from_numpy(lengths),
               "hist_mask": torch.from_numpy(mask), "hist_type": torch.from_numpy(padded(behaviour_types[where])),
               "hist_gap": torch.from_numpy(gap)}
    n_targets = len(target_item)
    if len(lengths) == 1 and n_targets != 1:
        history = {key: value.expand(n_targets, *value.shape[1:]) for key, value in history.items()}
    optional = {"user": user, "label": label, "cold": cold, "popularity_level": popularity_level}
    return Batch(**history, target_item=torch.from_numpy(np.asarray(target_item, dtype=np.int64)),
                 **{key: None if value is None else torch.from_numpy(value) for key, value in optional.items()})


class CTRDataset(Dataset):
    """Samples of one split; `__getitems__` returns a whole padded `Batch`."""

    def __init__(self, prepared_dir: Path, split: str, max_len: int, time_gap_buckets: int = 12):
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.samples = read_samples(prepared_dir, split)
        sequences = read_sequences(prepared_dir)
        self.offsets = sequences.offsets
        self.seq_items = sequences.items
        self.seq_times = sequences.times
        self.seq_types = sequences.types
        items = read_items(prepared_dir, columns=["cold", "popularity_level"])
        self.item_cold = items.column("cold").to_numpy(zero_copy_only=False)
        self.item_popularity = items.column("popularity_level").to_numpy().astype(np.int64)
        self.max_len = max_len
        self.time_gap_buckets = time_gap_buckets
        self.split = split

    def with_samples(self, rows: np.ndarray) -> CTRDataset:
        """The same data with other sample rows (SAMPLE_DTYPE): extra negatives, candidates to score."""
        if rows.dtype != SAMPLE_DTYPE:
            raise ValueError(f"sample rows must have dtype {SAMPLE_DTYPE}, got {rows.dtype}")
        other = copy.copy(self)
        other.samples = rows
        return other

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices) -> Batch:
        rows = self.samples[np.asarray(indices, dtype=np.int64)]
        users = rows["user"].astype(np.int64)
        pos = rows["pos"].astype(np.int64)
        targets = rows["item"].astype(np.int64)
        lengths = np.minimum(pos, self.max_len)
        target_index = self.offsets[users] + pos
        return build_batch(self.seq_items, self.seq_types, target_index - lengths, lengths, targets,
                           behaviour_times=self.seq_times, target_time=self.seq_times[target_index],
                           time_gap_buckets=self.time_gap_buckets, user=users,
                           label=rows["label"].astype(np.float32), cold=self.item_cold[targets].astype(bool),
                           popularity_level=self.item_popularity[targets])


def load_split(prepared: Path, split: str, data: DataConfig) -> CTRDataset:
    """The samples of `split` as `data` cuts histories; a split without samples is an error."""
    dataset = CTRDataset(prepared, split, data.max_len, data.time_gap_buckets)
    if len(dataset) == 0:
        raise ValueError(f"{prepared} has no {SPLIT_WORDS[split]} samples")
    return dataset


def _keep_batch(batch: Batch) -> Batch:
    """`__getitems__` already built the batch; the loader must not collate it again."""
    return batch


def make_loader(dataset: CTRDataset, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0) -> DataLoader:
    """A loader whose order depends only on (seed, epoch), so a run is repeatable and resumable."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_keep_batch, num_workers=num_workers)
