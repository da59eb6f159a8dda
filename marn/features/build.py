"""Stage `features`: item table → VGG16 fc7 image features and title word ids + word vectors (FORMATS.md)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from marn.config import FeaturesConfig, Params, Paths
from marn.data.formats import ITEMS_FILE, REPORT_FILE, read_items, write_report, write_title_ids, write_word_vectors
from marn.features.images import (
    IMAGE_ENCODERS, THUMBNAIL_WEIGHTS, Fc7Weights, ThumbnailEncoder, extract_image_features, fc7_model,
)
from marn.features.word_vectors import build_word_vectors, encode_titles
from marn.items import RESERVED_ENTRIES

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_idx", "title_tokens", "image_ref"]
# What only this run knows (timings, where a resumed run started): in the returned report, not in report.json,
# whose bytes depend on the data and settings alone.
RUN_KEYS = frozenset({"seconds", "title_seconds", "image_seconds", "images_per_second", "images_computed",
                      "resumed_at_row"})
NO_IMAGE_WEIGHTS = Fc7Weights("none", "no image reference", None)


def run(config: Params, paths: Paths) -> dict:
    """Stage `features`: the features folder `paths.features` for the items of `paths.prepared`."""
    return build_features(config.features, paths)


def titles_and_images(prepared: Path) -> tuple[list[list[str]], list[str]]:
    """Title tokens and image references of the item table, where row i must be item index i."""
    table = read_items(prepared, columns=ITEM_COLUMNS)
    item_idx = table.column("item_idx").to_numpy()
    misplaced = np.flatnonzero(item_idx != np.arange(len(item_idx)))
    if misplaced.size:
        row = int(misplaced[0])
        raise ValueError(f"{Path(prepared) / ITEMS_FILE}: row {row} holds item_idx {item_idx[row]}; "
                         "row i must hold item index i")
    token_lists = [list(tokens or []) for tokens in table.column("title_tokens").to_pylist()]
    image_refs = [ref or "" for ref in table.column("image_ref").to_pylist()]
    return token_lists, image_refs


def build_features(features: FeaturesConfig, paths: Paths) -> dict:
    """Write title_ids.npy, word_vectors.npy, words.txt, image.npy, image_mask.npy and report.json into
    `paths.features` from the item table of `paths.prepared`; returns the report.

    Relative image paths are taken from `paths.raw`. Titles come first: they are quick, and a bad word-vector
    setting should fail before the long image pass. A run killed during the image pass continues from its last
    finished batch.
    """
    started = time.perf_counter()
    if features.image_encoder not in IMAGE_ENCODERS:
        raise ValueError(f"features.image_encoder must be one of {', '.join(IMAGE_ENCODERS)}, "
                         f"got {features.image_encoder!r}")
    out_dir = paths.features
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).unlink(missing_ok=True)  # a report only ever stands beside a finished run
    token_lists, image_refs = titles_and_images(paths.prepared)
    title_report = _title_features(features, token_lists, out_dir, paths.vectors_cache)
    image_report = _image_features(features, image_refs, out_dir, paths)
    report = {**image_report, **title_report, "seconds": round(time.perf_counter() - started, 2)}
    write_report(out_dir, {k: v for k, v in report.items() if k not in RUN_KEYS})
    failures = ", ".join(f"{reason} {n}" for reason, n in report["image_failures"].items()) or "none"
    print(f"features: {report['images_ok']} of {report['items']} items have image features (weights: "
          f"{report['weights']}); without one: {failures}; {report['seconds']} s")
    return report


def _title_features(features: FeaturesConfig, token_lists: list[list[str]], out_dir: Path,
                    vectors_cache: Path) -> dict:
    """Write the title word ids and the word-vector table; returns the title part of the report."""
    started = time.perf_counter()
    table = build_word_vectors(token_lists, features, vectors_cache, timeout=features.download_timeout_s,
                               retries=features.download_retries)
    title_ids, title_stats = encode_titles(token_lists, table.words, features.title_len)
    write_title_ids(out_dir, title_ids)
    write_word_vectors(out_dir, table.vectors, table.words)
    log.info("features: %d words (%s, %d-d), out-of-vocabulary rate %.3f",
             len(table.words), table.source, table.dim, title_stats["oov_rate"])
    return {
        "word_vectors": table.source,
        "word_vectors_location": table.location,
        "word_dim": table.dim,
        "words": len(table.words),
        "title_len": features.title_len,
        **title_stats,
        **({"word2vec_loss": round(table.word2vec_loss, 4)} if table.word2vec_loss is not None else {}),
        "title_seconds": round(time.perf_counter() - started, 2),
    }


def _image_features(features: FeaturesConfig, image_refs: list[str], out_dir: Path, paths: Paths) -> dict:
    """Write the image features with the encoder `features` asks for; returns the image part of the report."""
    if any(image_refs[RESERVED_ENTRIES:]) and features.image_encoder == "thumbnail":  # not the paper's: images.py
        model, weights = ThumbnailEncoder().eval(), THUMBNAIL_WEIGHTS
    elif any(image_refs[RESERVED_ENTRIES:]):
        model, weights = fc7_model(features, timeout=features.download_timeout_s, retries=features.download_retries)
    else:  # nothing to look at: the image modality is masked, and no VGG16 weights are fetched or loaded
        model, weights = None, NO_IMAGE_WEIGHTS
    report = extract_image_features(image_refs, out_dir, model, weights, features, raw_dir=paths.raw,
                                    image_cache_dir=paths.image_cache)
    if model is None:
        report["image_modality"] = "masked: no item has an image reference, so VGG16 was not loaded"
    return report
