"""The prepared and features folders' formats (docs/FORMATS.md): file names, record types, readers and writers.

Every module that reads or writes these files goes through here, so a change of format touches this file alone.
Row i of every item-indexed file is item index i; indices PAD and OOV (marn.items) are reserved in every
vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marn.files import atomic_path, atomic_write_text

# --- the prepared folder (stage `prepare`) ---------------------------------------------------------------
ITEMS_FILE = "items.parquet"
SEQUENCES_FILE = "sequences.npz"
VOCAB_FILE = "vocab.json"
STAT_BOUNDARIES_FILE = "stat_boundaries.npz"
REPORT_FILE = "report.json"  # a stage's report, in the prepared and in the features folder
SPLITS = ("train", "test")
SAMPLE_DTYPE = np.dtype([("user", np.int32), ("pos", np.int32), ("item", np.int32), ("label", np.int8)])
RESERVED_NAMES = ("<pad>", "<oov>")  # the vocabulary entries at PAD and OOV (marn.items)

# --- the features folder (stage `features`) --------------------------------------------------------------
IMAGE_FILE = "image.npy"
IMAGE_MASK_FILE = "image_mask.npy"
TITLE_IDS_FILE = "title_ids.npy"
WORD_VECTORS_FILE = "word_vectors.npy"
WORDS_FILE = "words.txt"


class FormatError(ValueError):
    """A prepared or features file that is missing or does not hold what its format says."""


def _existing(folder: Path, name: str, stage: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first")
    return path


def samples_file(split: str) -> str:
    """`train.npy` or `test.npy`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return f"{split}.npy"


# --- readers ---------------------------------------------------------------------------------------------


def read_items(prepared: Path, columns: list[str] | None = None) -> pa.Table:
    """`items.parquet` (all columns, or `columns`); row i is item index i."""
    path = _existing(prepared, ITEMS_FILE, "prepare")
    missing = [column for column in columns or () if column not in pq.read_schema(path).names]
    if missing:
        raise FormatError(f"{path}: missing column(s) {missing}; docs/FORMATS.md lists the item table's columns")
    return pq.read_table(path, columns=columns)


def count_items(prepared: Path) -> int:
    """Rows of `items.parquet` (items, reserved entries included), without reading them."""
    return pq.read_metadata(_existing(prepared, ITEMS_FILE, "prepare")).num_rows


@dataclass(frozen=True)
class Sequences:
    """Every user's behaviours by time, flat: user u's are rows offsets[u] .. offsets[u+1]-1."""

    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [B] int32 item indices
    times: np.ndarray  # [B] int64 unix seconds
    types: np.ndarray  # [B] int8 behaviour types (0 where the data has none)


def read_sequences(prepared: Path) -> Sequences:
    with np.load(_existing(prepared, SEQUENCES_FILE, "prepare")) as npz:
        return Sequences(offsets=npz["offsets"], items=npz["items"], times=npz["times"], types=npz["types"])


def read_samples(prepared: Path, split: str) -> np.ndarray:
    """The samples of `split` (SAMPLE_DTYPE records), memory-mapped read-only."""
    path = _existing(prepared, samples_file(split), "prepare")
    samples = np.load(path, mmap_mode="r")
    if samples.dtype != SAMPLE_DTYPE:
        raise FormatError(f"{path} holds {samples.dtype} records, expected {SAMPLE_DTYPE}")
    return samples


@dataclass(frozen=True)
class Vocab:
    """Names of the indices: `users[u]` is user index u's id, and so on; RESERVED_NAMES first in each."""

    users: list[str]
    categories: list[str]
    brands: list[str]
    behaviour_types: list[str] | None = None  # None where the data has no behaviour types

    def as_json(self) -> dict:
        plain = {"users": self.users, "categories": self.categories, "brands": self.brands}
        if self.behaviour_types:
            plain["behaviour_types"] = self.behaviour_types  # history_types of a scoring request index this
        return plain


def read_vocab(prepared: Path) -> Vocab:
    plain = json.loads(_existing(prepared, VOCAB_FILE, "prepare").read_text())
    return Vocab(users=plain["users"], categories=plain["categories"], brands=plain["brands"],
                 behaviour_types=plain.get("behaviour_types"))


@dataclass(frozen=True)
class StatBoundaries:
    """Equal-frequency bin boundaries of each item statistic, per granularity G: a K x (G-1) float32 array."""

    statistic_names: tuple[str, ...]
    granularities: tuple[int, ...]
    boundaries: tuple[np.ndarray, ...]  # one per granularity, in the order of `granularities`


def read_stat_boundaries(prepared: Path) -> StatBoundaries:
    """`stat_boundaries.npz` (keys `names` and `g<G>`), granularities in ascending G."""
    path = _existing(prepared, STAT_BOUNDARIES_FILE, "prepare")
    with np.load(path) as npz:
        statistic_names = tuple(str(n) for n in npz["names"])
        keys = sorted((k for k in npz.files if k.startswith("g")), key=lambda k: int(k[1:]))
        boundaries = tuple(np.asarray(npz[k], dtype=np.float32) for k in keys)
    if not boundaries:
        raise FormatError(f"{path} holds no granularity (keys g<G>)")
    for key, array in zip(keys, boundaries):
        if array.shape[0] != len(statistic_names):
            raise FormatError(f"{path.name}[{key}] has {array.shape[0]} rows for {len(statistic_names)} statistics")
    return StatBoundaries(statistic_names, tuple(int(k[1:]) for k in keys), boundaries)


def read_report(folder: Path) -> dict | None:
    """A stage's `report.json`, or None where the stage has not finished in `folder`."""
    path = Path(folder) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_image_features(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """`image.npy` (float16 [N, D], memory-mapped) and `image_mask.npy` (bool [N])."""
    return (np.load(_existing(features, IMAGE_FILE, "features"), mmap_mode="r"),
            np.load(_existing(features, IMAGE_MASK_FILE, "features")))


def read_title_ids(features: Path) -> np.ndarray:
    """`title_ids.npy`: int32 [N, title_len] word ids, 0 = padding."""
    return np.load(_existing(features, TITLE_IDS_FILE, "features"))


def read_word_vectors(features: Path) -> np.ndarray:
    """`word_vectors.npy`: float32 [V, D], row 0 zeros."""
    return np.load(_existing(features, WORD_VECTORS_FILE, "features"))


# --- writers ---------------------------------------------------------------------------------------------


def write_prepared(out_dir: Path, *, items: pa.Table, stat_boundaries: StatBoundaries, sequences: Sequences,
                   samples: dict[str, np.ndarray], vocab: Vocab, report: dict) -> None:
    """The whole prepared folder at once: readers see the old folder or the complete new one."""
    with atomic_path(out_dir) as folder:
        folder.mkdir()
        pq.write_table(items, folder / ITEMS_FILE)
        np.savez(folder / STAT_BOUNDARIES_FILE, names=np.array(stat_boundaries.statistic_names),
                 **{f"g{g}": b for g, b in zip(stat_boundaries.granularities, stat_boundaries.boundaries)})
        np.savez(folder / SEQUENCES_FILE, offsets=sequences.offsets, items=sequences.items.astype(np.int32),
                 times=sequences.times.astype(np.int64), types=sequences.types.astype(np.int8))
        for split in SPLITS:
            np.save(folder / samples_file(split), samples[split])
        (folder / VOCAB_FILE).write_text(json.dumps(vocab.as_json()))
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def write_report(folder: Path, report: dict) -> None:
    """A stage's `report.json`, written atomically."""
    atomic_write_text(Path(folder) / REPORT_FILE, json.dumps(report, indent=2) + "\n")


def write_npy(path: Path, array: np.ndarray) -> None:
    """One `.npy` file, written atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)


def write_title_ids(features: Path, title_ids: np.ndarray) -> None:
    write_npy(Path(features) / TITLE_IDS_FILE, title_ids)


def write_word_vectors(features: Path, vectors: np.ndarray, words: list[str]) -> None:
    """`word_vectors.npy` (float32) and `words.txt` (one word a line, in row order)."""
    write_npy(Path(features) / WORD_VECTORS_FILE, vectors.astype(np.float32, copy=False))
    atomic_write_text(Path(features) / WORDS_FILE, "".join(f"{word}\n" for word in words))
