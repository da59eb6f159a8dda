"""Stage `features`: item table → VGG16 fc7 image features and title word ids + word vectors (FORMATS.md)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from marn.config import resolve_path
from marn.features.images import (
    IMAGE_ENCODERS, RESERVED_ROWS, THUMBNAIL_WEIGHTS, Fc7Weights, ThumbnailEncoder, extract_image_features, fc7_model,
)
from marn.features.word_vectors import build_word_vectors, encode_titles, write_word_vectors

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_idx", "title_tokens", "image_ref")
# What only this run knows (timings, where a resumed run started): in the returned report, not in report.json,
# whose bytes depend on the data and settings alone.
RUN_KEYS = frozenset({"seconds", "title_seconds", "image_seconds", "images_per_second", "images_computed",
                      "resumed_at_row"})
NO_IMAGE_WEIGHTS = Fc7Weights("none", "no image reference", None)


def read_items(path: Path) -> tuple[list[list[str]], list[str]]:
    """Title tokens and image references of `items.parquet`, where row i must be item index i."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"item table not found: {path} (run the prepare stage first)")
    schema_names = set(pq.read_schema(path).names)
    missing = [column for column in ITEM_COLUMNS if column not in schema_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; FORMATS.md lists the item table's columns")
    table = pq.read_table(path, columns=list(ITEM_COLUMNS))
    item_idx = table.column("item_idx").to_numpy()
    misplaced = np.flatnonzero(item_idx != np.arange(len(item_idx)))
    if misplaced.size:
        row = int(misplaced[0])
        raise ValueError(f"{path}: row {row} holds item_idx {item_idx[row]}; row i must hold item index i")
    token_lists = [list(tokens or []) for tokens in table.column("title_tokens").to_pylist()]
    image_refs = [ref or "" for ref in table.column("image_ref").to_pylist()]
    return token_lists, image_refs


def build_features(cfg_features, prepared_dir: Path, out_dir: Path, *, raw_dir: Path | None = None) -> dict:
    """Write title_ids.npy, word_vectors.npy, words.txt, image.npy, image_mask.npy and report.json into
    `out_dir` from `prepared_dir/items.parquet`; returns the report.

    `cfg_features` is the `features` section of params.yaml. Relative image paths are taken from
    `raw_dir`. Titles come first: they are quick, and a bad word-vector setting should fail before the
    long image pass. A run killed during the image pass continues from its last finished batch.
    """
    started = time.perf_counter()
    cfg = cfg_features
    if cfg.image_encoder not in IMAGE_ENCODERS:
        raise ValueError(f"features.image_encoder must be one of {', '.join(IMAGE_ENCODERS)}, "
                         f"got {cfg.image_encoder!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)  # a report only ever stands beside a finished run
    token_lists, image_refs = read_items(Path(prepared_dir) / "items.parquet")

    title_started = time.perf_counter()
    table = build_word_vectors(
        token_lists, cfg, resolve_path(cfg.vectors_cache_dir),
        timeout=cfg.download_timeout_s, retries=cfg.download_retries,
    )
    title_ids, title_stats = encode_titles(token_lists, table.words, cfg.title_len)
    np.save(out_dir / "title_ids.npy", title_ids)
    write_word_vectors(table, out_dir)
    title_report = {
        "word_vectors": table.source,
        "word_vectors_location": table.location,
        "word_dim": table.dim,
        "words": len(table.words),
        "title_len": int(cfg.title_len),
        **title_stats,
        **({"word2vec_loss": round(table.word2vec_loss, 4)} if table.word2vec_loss is not None else {}),
        "title_seconds": round(time.perf_counter() - title_started, 2),
    }
    log.info("features: %d words (%s, %d-d), out-of-vocabulary rate %.3f",
             len(table.words), table.source, table.dim, title_stats["oov_rate"])

    if any(image_refs[RESERVED_ROWS:]) and cfg.image_encoder == "thumbnail":  # not the paper's: see images.py
        model, weights = ThumbnailEncoder().eval(), THUMBNAIL_WEIGHTS
    elif any(image_refs[RESERVED_ROWS:]):
        model, weights = fc7_model(cfg, timeout=cfg.download_timeout_s, retries=cfg.download_retries)
    else:  # nothing to look at: the image modality is masked, and no VGG16 weights are fetched or loaded
        model, weights = None, NO_IMAGE_WEIGHTS
    image_report = extract_image_features(
        image_refs, out_dir, model, weights, cfg, raw_dir=raw_dir, image_cache_dir=resolve_path(cfg.image_cache_dir)
    )
    if model is None:
        image_report["image_modality"] = "masked: no item has an image reference, so VGG16 was not loaded"
    report = {**image_report, **title_report, "seconds": round(time.perf_counter() - started, 2)}
    partial = out_dir / "report.json.part"
    partial.write_text(json.dumps({k: v for k, v in report.items() if k not in RUN_KEYS}, indent=2) + "\n")
    os.replace(partial, out_dir / "report.json")
    failures = ", ".join(f"{reason} {n}" for reason, n in report["image_failures"].items()) or "none"
    print(f"features: {report['images_ok']} of {report['items']} items have image features (weights: "
          f"{report['weights']}); without one: {failures}; {report['seconds']} s")
    return report
