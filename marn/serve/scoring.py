"""Scoring from pre-extracted item representations (paper §4.9.2).

An item's representation `rep` (modality embeddings, attention fusion and the pooled invariant part) reads
nothing of the user, so `export_item_representations` computes it once for every item. A
`RepresentationScorer` then scores a request, one user's behaviour history and the candidate items, by
looking representations up and running only the user side: behaviour properties, the APGRU over the
history (once per request, shared by every candidate), candidate attention and the prediction MLP.

An export folder (`python -m marn.serve export`, default `data/serving/<MODEL>/`) holds:
- `item_representations.npy`: float32 `N_items x hidden`, row = item index (docs/FORMATS.md);
- `item_ids.parquet`: `item_idx:int32, asin:str`, the id map;
- `manifest.json`: the model name, the SHA-256 of the model file, `max_len` and the sizes.
A request (`parse_request`) is `{"history": [asin, ...], "candidates": [asin, ...]}` with optional
`history_types` (ints), `history_times` (unix seconds) and `request_time`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from marn import ops
from marn.config import Paths
from marn.batch import Batch
from marn.data.dataset import CTRDataset, build_batch
from marn.data.formats import read_items
from marn.data.item_table import load_item_table
from marn.files import atomic_path, atomic_write_text, file_sha256
from marn.models.marn import MARN
from marn.models.persistence import ModelFileError, load_model, model_file

EXPORT_FORMAT = 1
REPRESENTATIONS_FILE, ID_MAP_FILE, MANIFEST_FILE = "item_representations.npy", "item_ids.parquet", "manifest.json"
EXPORT_CHUNK_ITEMS = 1024  # items encoded at once: bounds the 4096-d image rows gathered per chunk
REQUEST_KEYS = frozenset({"history", "candidates", "history_types", "history_times", "request_time"})


@dataclass(frozen=True)
class ScoringRequest:
    """One user's behaviours, oldest first, and the items to score for them (item indices)."""

    history_items: Sequence[int]
    candidate_items: Sequence[int]
    history_types: Sequence[int] | None = None  # behaviour type per history item; None: all 0 (review/click)
    history_times: Sequence[int] | None = None  # unix seconds per history item; None: all in the last day
    request_time: int | None = None  # unix seconds; required with history_times


def request_of_sample(dataset: CTRDataset, index: int, candidates: Sequence[int]) -> ScoringRequest:
    """The behaviours before prepared sample `index` as a client would send them, to score `candidates`."""
    row = dataset.samples[index]
    start = int(dataset.offsets[row["user"]])
    end = start + int(row["pos"])
    return ScoringRequest(dataset.seq_items[start:end].tolist(), candidates, dataset.seq_types[start:end].tolist(),
                          dataset.seq_times[start:end].tolist(), int(dataset.seq_times[end]))


def _require_marn(model, model_name: str) -> MARN:
    if not isinstance(model, MARN):
        raise ValueError(f"model {model_name!r} is a {type(model).__name__}, which has no item-only representation")
    return model


@torch.inference_mode()
def item_representations(model: MARN, n_items: int) -> torch.Tensor:
    """`rep` [n_items, hidden] of every item index, computed in eval mode (no adversarial losses)."""
    model.eval()
    chunks = [model.encode_items(torch.arange(start, min(start + EXPORT_CHUNK_ITEMS, n_items)))[0]
              for start in range(0, n_items, EXPORT_CHUNK_ITEMS)]
    return torch.cat(chunks).float()


def export_item_representations(model_name: str, max_len: int, paths: Paths, export_dir: Path) -> dict:
    """Write the representations, the id map and the manifest of `<paths.models>/<model_name>/model.pt` to
    `export_dir`, with the ops backend the caller entered; `max_len` (`data.max_len`) goes to the manifest.
    Returns the manifest."""
    model_path = model_file(paths.models, model_name)
    table = load_item_table(paths.prepared, paths.features)
    model = _require_marn(load_model(model_path, model_name, table), model_name)
    representations = item_representations(model, table.n_items)
    ids = read_items(paths.prepared, ["item_idx", "asin"])

    with atomic_path(export_dir / REPRESENTATIONS_FILE) as temporary, open(temporary, "wb") as f:
        np.save(f, representations.numpy())
    with atomic_path(export_dir / ID_MAP_FILE) as temporary:
        pq.write_table(pa.table({"item_idx": ids.column("item_idx").cast(pa.int32()), "asin": ids.column("asin")}),
                       temporary)
    manifest = {"format": EXPORT_FORMAT, "model_name": model_name, "model_sha256": file_sha256(model_path),
                "n_items": table.n_items, "hidden": int(representations.shape[1]), "max_len": max_len}
    # written last: an export with a manifest is whole
    atomic_write_text(export_dir / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


class RepresentationScorer:
    """Scores requests from stored item representations with the user side of a trained MARN, on the ops backend
    `ops_backend` (entered where it scores: a server's handlers run in other threads than the one that loaded it)."""

    def __init__(self, model: MARN, representations: torch.Tensor, max_len: int, ops_backend: str,
                 asins: Sequence[str] = ()):
        if representations.dim() != 2 or representations.shape[1] != model.sequence.input_size:
            raise ValueError(f"representations of shape {list(representations.shape)} do not fit the model's "
                             f"representation size {model.sequence.input_size}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.model = model.eval()
        self.representations = representations
        self.max_len = max_len
        self.ops_backend = ops_backend
        self.item_index_of = {asin: index for index, asin in enumerate(asins)}

    @property
    def n_items(self) -> int:
        return int(self.representations.shape[0])

    def item_indices(self, asins: Sequence[str]) -> list[int]:
        """Item indices of external item ids, through the exported id map."""
        unknown = [a for a in asins if a not in self.item_index_of]
        if unknown:
            raise ValueError(f"items {unknown[:5]} are not in the exported id map ({len(unknown)} unknown)")
        return [self.item_index_of[a] for a in asins]

    def _checked_items(self, what: str, items: Sequence[int]) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(items, dtype=np.int64).reshape(-1))
        outside = tensor[(tensor < 0) | (tensor >= self.n_items)]
        if outside.numel():
            raise ValueError(f"{what} item {int(outside[0])} is outside the {self.n_items} exported items")
        return tensor

    def _batch(self, request: ScoringRequest, candidates: torch.Tensor) -> Batch:
        """The request's history cut to its last `max_len` behaviours, as `CTRDataset` cuts it, shared by the
        `candidates` as targets."""
        items = self._checked_items("history", request.history_items)[-self.max_len:].numpy()
        types = np.zeros(len(items), np.int64)
        if request.history_types is not None:
            if len(request.history_types) != len(request.history_items):
                raise ValueError(f"{len(request.history_types)} history_types for {len(request.history_items)} "
                                 "history items")
            types = np.asarray(request.history_types, np.int64)[-self.max_len:]
        times, target_time, buckets = None, None, 1
        if request.history_times is not None:
            if len(request.history_times) != len(request.history_items):
                raise ValueError(f"{len(request.history_times)} history_times for {len(request.history_items)} "
                                 "history items")
            if request.request_time is None:
                raise ValueError("history_times need the request_time they are measured from")
            if self.model.behaviour_property is not None:  # a model without behaviour properties reads no gaps
                buckets = self.model.behaviour_property.gap_embedding.num_embeddings
                times = np.asarray(request.history_times, np.int64)[-self.max_len:]
                target_time = np.array([request.request_time], np.int64)
        return build_batch(items, types, np.zeros(1, np.int64), np.array([len(items)]), candidates.numpy(),
                           behaviour_times=times, target_time=target_time, time_gap_buckets=buckets)

    def request_batch(self, request: ScoringRequest) -> Batch:
        """The request as the full model's batch: the history repeated for every candidate."""
        return self._batch(request, self._checked_items("candidate", request.candidate_items))

    @torch.inference_mode()
    def logits(self, request: ScoringRequest) -> torch.Tensor:
        """Click logits [C] of the request's candidates, in their order."""
        candidates = self._checked_items("candidate", request.candidate_items)
        if candidates.numel() == 0:
            raise ValueError("a request needs at least one candidate item")
        history = self._batch(request, candidates[:1])  # one history row: the APGRU runs once per request
        mask = history.hist_mask
        count = candidates.shape[0]
        with ops.use_backend(self.ops_backend):
            states, last_state = self.model.read_history(self.representations[history.hist_items] * mask.unsqueeze(-1),
                                                         history)
            return self.model.click_logit(states.expand(count, -1, -1), last_state.expand(count, -1),
                                          self.representations[candidates], mask.expand(count, -1))

    def score(self, request: ScoringRequest) -> torch.Tensor:
        """Click probabilities [C] of the request's candidates, in their order."""
        return torch.sigmoid(self.logits(request))


def load_scorer(model_name: str, paths: Paths, export_dir: Path, ops_backend: str) -> RepresentationScorer:
    """The scorer of `export_dir` on `ops_backend`, refusing an export of another model file than
    `<paths.models>/<model>/model.pt`."""
    manifest_path = export_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run python -m marn.serve export {model_name} first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{manifest_path} has format {manifest.get('format')!r}, expected {EXPORT_FORMAT}")
    if manifest["model_name"] != model_name:
        raise ModelFileError(f"{export_dir} holds model {manifest['model_name']!r}, not {model_name!r}")
    model_path = model_file(paths.models, model_name)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train {model_name!r} first")
    if file_sha256(model_path) != manifest["model_sha256"]:
        raise ModelFileError(f"{export_dir} was exported from another {model_path}; "
                             f"run python -m marn.serve export {model_name} again")
    table = load_item_table(paths.prepared, paths.features)
    model = _require_marn(load_model(model_path, model_name, table), model_name)
    representations = torch.from_numpy(np.load(export_dir / REPRESENTATIONS_FILE))
    asins = pq.read_table(export_dir / ID_MAP_FILE, columns=["asin"]).column("asin").to_pylist()
    return RepresentationScorer(model, representations, manifest["max_len"], ops_backend, asins)


class RequestError(ValueError):
    """A scoring request that does not fit the format; `unknown_items` lists ids the export does not have."""

    def __init__(self, message: str, unknown_items: Sequence[str] = ()):
        super().__init__(message)
        self.unknown_items = list(unknown_items)


def _int_list(fields: dict, key: str) -> list[int] | None:
    values = fields.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RequestError(f"{key} must be a list of integers")
    return values


def parse_request(scorer: RepresentationScorer, fields) -> ScoringRequest:
    """The `ScoringRequest` of one request object (a line of `score`, the body of `POST /score`)."""
    if not isinstance(fields, dict):
        raise RequestError(f"a request is a JSON object, got {type(fields).__name__}")
    unexpected = sorted(set(fields) - REQUEST_KEYS)
    if unexpected:
        raise RequestError(f"unknown request keys {unexpected}; known: {sorted(REQUEST_KEYS)}")
    ids = {}
    for key in ("history", "candidates"):
        values = fields.get(key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise RequestError(f"{key} must be a list of item ids (strings)")
        if not values:
            raise RequestError(f"{key} is empty: a request needs at least one " +
                               ("behaviour" if key == "history" else "candidate item"))
        ids[key] = values
    unknown = [a for a in dict.fromkeys(ids["history"] + ids["candidates"]) if a not in scorer.item_index_of]
    if unknown:
        raise RequestError(f"items {unknown[:5]} are not in the exported id map ({len(unknown)} unknown)", unknown)
    request_time = fields.get("request_time")
    if request_time is not None and (not isinstance(request_time, int) or isinstance(request_time, bool)):
        raise RequestError("request_time must be an integer (unix seconds)")
    return ScoringRequest(scorer.item_indices(ids["history"]), scorer.item_indices(ids["candidates"]),
                          _int_list(fields, "history_types"), _int_list(fields, "history_times"), request_time)


def score_lines(scorer: RepresentationScorer, lines, out) -> None:
    """`{"scores": [...]}` on `out` for each request line of `lines`; a bad line fails naming its number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request = parse_request(scorer, json.loads(line))
            out.write(json.dumps({"scores": scorer.score(request).tolist()}) + "\n")
        except ValueError as err:  # json.JSONDecodeError and RequestError are ValueErrors
            raise ValueError(f"request line {number}: {err}") from err
