"""Which reader a raw file needs, told from its content, and the one call prepare makes to read a dataset.

Layouts: "amazon" (2014/2018 JSON lines: reviewerID, asin), "amazon2023" (JSON lines: user_id, parent_asin)
and "table" (CSV, TSV or parquet with a header: plain logs, RecBole atomic files, 2023 benchmark CSVs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from marn.config import ColumnsConfig
from marn.data import amazon, amazon2023, interactions
from marn.data.amazon import DataFileError, ItemMeta, Reviews, SkipLog, open_text, parse_record

AMAZON_META_STATISTICS = ("price", "sales_rank")
INTERACTION_STATISTICS = ("n_reviews", "mean_rating")  # computed by prepare from the training interactions
LINES_TO_DETECT = 20
_KEYS_2023 = frozenset({"parent_asin", "user_id", "main_category", "rating_number"})  # 2014/2018: asin, reviewerID


@dataclass
class RawDataset:
    layout: str  # of the interactions file
    reviews: Reviews
    meta: dict[str, ItemMeta]  # the reviewed items the catalogue describes
    meta_statistics: tuple[str, ...]  # statistic names the catalogue provides, in column order


def detect_layout(path: Path) -> str:
    """"amazon", "amazon2023" or "table", from the file's first bytes and first lines.

    A file whose first lines hold a line starting with "{" is JSON lines: the first object among them that
    parses tells the release (a file of no readable object goes to the 2014/2018 reader, which reports it).
    """
    with open(path, "rb") as probe:
        if probe.read(4) == b"PAR1":
            return "table"
    with open_text(path) as lines:
        first_lines = [line.strip() for line, _ in zip(filter(str.strip, lines), range(LINES_TO_DETECT))]
    if not first_lines:
        raise DataFileError(f"{path}: the file is empty (no records)")
    if not any(line.startswith("{") for line in first_lines):
        return "table"
    for line in first_lines:
        try:
            keys = set(parse_record(line))
        except (ValueError, SyntaxError):
            continue
        return "amazon2023" if keys & _KEYS_2023 else "amazon"
    return "amazon"


def read_dataset(reviews_path: Path, meta_path: Path | None, columns: ColumnsConfig, skips: SkipLog,
                 max_bad_share: float) -> RawDataset:
    """The interactions of `reviews_path` and the catalogue of `meta_path` (None: items known by id only)."""
    layout = detect_layout(reviews_path)
    if layout == "amazon":
        reviews = amazon.read_reviews(reviews_path, skips, max_bad_share)
    elif layout == "amazon2023":
        reviews = amazon2023.read_reviews(reviews_path, skips, max_bad_share)
    else:
        reviews = interactions.read_interactions(reviews_path, columns, skips, max_bad_share)
    wanted = set(reviews.asins.tolist())
    if meta_path is None:
        return RawDataset(layout, reviews, interactions.bare_catalogue(wanted), ())
    meta_layout = detect_layout(meta_path)
    if meta_layout == "amazon":
        return RawDataset(layout, reviews, amazon.read_meta(meta_path, wanted, skips, max_bad_share),
                          AMAZON_META_STATISTICS)
    if meta_layout == "amazon2023":
        return RawDataset(layout, reviews, amazon2023.read_meta(meta_path, wanted, skips, max_bad_share),
                          amazon2023.META_STATISTICS)
    meta, names = interactions.read_items(meta_path, wanted, columns, skips, max_bad_share, INTERACTION_STATISTICS)
    return RawDataset(layout, reviews, meta, names)


def missing_modalities(meta: dict[str, ItemMeta], meta_statistics: tuple[str, ...]) -> dict[str, str]:
    """The item modalities no item of the catalogue has, each with why: the model sees them masked."""
    missing = {}
    if not any(m.image_ref for m in meta.values()):
        missing["image"] = "no item has an image: every item gets the model's learned no-image vector"
    if not any(m.title.strip() for m in meta.values()):
        missing["title"] = "no item has a title: every item gets the model's learned no-title vector"
    if not any(not math.isnan(m.statistics.get(name, math.nan)) for m in meta.values() for name in meta_statistics):
        missing["statistics"] = ("the catalogue has no statistic: only the interaction counts and mean ratings "
                                 "of the training data are statistics")
    return missing
