"""Readers for the Amazon review datasets: the 2014 release (McAuley et al.) and the 2018 release (Ni et al.).

Both releases write reviews as JSON lines. Metadata lines are Python literals in 2014 (single quotes)
and strict JSON in 2018; each line is read by whichever parser accepts it, so one reader serves both.
Bad lines are never fatal one by one: they are counted per reason in a `SkipLog`, with the file and line
of the first few, and a file that is empty or mostly unreadable fails as a whole with its name.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

EXAMPLES_PER_REASON = 5
STATISTIC_NAMES = ("n_reviews", "mean_rating", "price", "sales_rank")
_ASIN_IN_LINE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")
_NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*")


class DataFileError(ValueError):
    """A whole input file is unusable (empty, or mostly lines that cannot be read)."""


@dataclass
class SkipLog:
    """Counts of skipped or repaired records per reason, with the location of the first few."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append(where)

    def as_report(self) -> dict:
        return {
            "skipped": dict(sorted(self.counts.items())),
            "skipped_examples": {k: v for k, v in sorted(self.examples.items())},
        }


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed text file (by magic bytes, not by name)."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, "rt", encoding="utf-8", errors="replace")


def parse_record(line: str) -> dict:
    """One review or metadata line: strict JSON first, then a Python literal (2014 metadata)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = ast.literal_eval(line)
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    return record


def _records(path: Path, skips: SkipLog, max_bad_share: float, wanted_asins: set[str] | None = None
             ) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each readable line; count the rest; fail on a hopeless file."""
    n_lines = n_bad = 0
    with open_text(path) as lines:
        for line_no, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            n_lines += 1
            if wanted_asins is not None:
                # Metadata files list every item of a category; parse only the lines of reviewed items.
                match = _ASIN_IN_LINE.search(line)
                if match is not None and match.group(1) not in wanted_asins:
                    continue
            try:
                record = parse_record(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                n_bad += 1
                skips.add("malformed_line", f"{path.name}:{line_no}")
                continue
            yield line_no, record
    if n_lines == 0:
        raise DataFileError(f"{path}: the file is empty (no records)")
    if n_bad / n_lines > max_bad_share:
        raise DataFileError(
            f"{path}: {n_bad} of {n_lines} lines cannot be parsed as JSON or Python literals "
            f"(more than {max_bad_share:.0%}); is this an Amazon reviews/metadata file?")


@dataclass
class Reviews:
    """Parsed reviews as parallel arrays (one entry per kept review)."""

    users: np.ndarray  # str
    asins: np.ndarray  # str
    times: np.ndarray  # int64 unix seconds
    ratings: np.ndarray  # float64, NaN where absent
    lines: np.ndarray  # int64 line numbers, for reporting
    types: np.ndarray | None = None  # int8 behaviour type per review (index into type_names); None: all 0
    type_names: tuple[str, ...] = ()  # the behaviour type names of a file that has them


def _review_time(record: dict) -> int | None:
    unix = record.get("unixReviewTime")
    if isinstance(unix, (int, float)) and not isinstance(unix, bool) and math.isfinite(unix) and unix > 0:
        return int(unix)
    text = record.get("reviewTime")
    if isinstance(text, str):
        try:  # the releases write "MM D, YYYY"
            return int(datetime.strptime(text.strip(), "%m %d, %Y").replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            return None
    return None


def read_reviews(path: Path, skips: SkipLog, max_bad_share: float = 0.5) -> Reviews:
    def reviewer_and_item(record: dict) -> tuple[str, str] | None:
        user, asin = record.get("reviewerID"), record.get("asin")
        if not isinstance(user, str) or not user or not isinstance(asin, str) or not asin:
            return None
        return user, asin

    return review_records(path, skips, max_bad_share, reviewer_and_item, lambda record, where: _review_time(record),
                          "overall")


def review_records(path: Path, skips: SkipLog, max_bad_share: float,
                   reviewer_and_item: Callable[[dict], tuple[str, str] | None],
                   review_time: Callable[[dict, str], int | None], rating_key: str) -> Reviews:
    """The reviews of a JSON-lines review file, whose releases differ in where the reviewer, item, time and rating
    are: a record without reviewer or item, or without a time, is skipped and counted."""
    users, items, times, ratings, lines = [], [], [], [], []
    for line_no, record in _records(path, skips, max_bad_share):
        where = f"{path.name}:{line_no}"
        reviewer = reviewer_and_item(record)
        if reviewer is None:
            skips.add("missing_field", where)
            continue
        time = review_time(record, where)
        if time is None:
            skips.add("missing_timestamp", where)
            continue
        users.append(reviewer[0])
        items.append(reviewer[1])
        times.append(time)
        ratings.append(_rating(record.get(rating_key), skips, where))
        lines.append(line_no)
    return Reviews(np.array(users, dtype=object), np.array(items, dtype=object),
                   np.array(times, dtype=np.int64), np.array(ratings, dtype=np.float64),
                   np.array(lines, dtype=np.int64))


def _rating(value, skips: SkipLog, where: str) -> float:
    """A review's rating in [0, 5]; NaN where there is none, and where it is out of range (counted)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return math.nan
    if not 0 <= value <= 5:
        skips.add("rating_out_of_range", where)
        return math.nan
    return float(value)


@dataclass
class ItemMeta:
    asin: str
    title: str
    category: str
    brand: str
    image_ref: str
    statistics: dict[str, float]  # by statistic name; a missing one is NaN or absent


def _leaf_category(record: dict) -> str:
    paths = record.get("categories")  # 2014: list of category paths
    if isinstance(paths, list) and paths and isinstance(paths[0], list) and paths[0]:
        return str(paths[0][-1])
    path = record.get("category")  # 2018: one path
    if isinstance(path, list) and path:
        return str(path[-1])
    main = record.get("main_cat")
    return str(main) if isinstance(main, str) else ""


def _image_ref(record: dict) -> str:
    """The item's image as the metadata names it: a URL, an absolute path, or a path relative to the raw folder
    (kept relative, so prepared data does not depend on where the project lives)."""
    ref = record.get("imUrl")
    if not ref:
        for key in ("imageURLHighRes", "imageURL", "image"):  # 2018 lists
            value = record.get(key)
            if isinstance(value, list) and value:
                ref = value[0]
                break
            if isinstance(value, str) and value:
                ref = value
                break
    return ref.strip() if isinstance(ref, str) else ""


def _number(value) -> float:
    """A statistic from either release: numbers as they are, "$1,299.00"-style strings parsed; else NaN."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _NUMBER.search(value)
        if match:
            try:
                return float(match.group(0).replace(",", ""))
            except ValueError:
                return math.nan
    return math.nan


def _sales_rank(record: dict) -> float:
    rank = record.get("salesRank")  # 2014: {category: rank}
    if isinstance(rank, dict) and rank:
        return _number(next(iter(rank.values())))
    rank = record.get("rank")  # 2018: "1,234 in Electronics (" or a list of such
    if isinstance(rank, list):
        rank = rank[0] if rank else None
    return _number(rank)


def is_new_wanted_item(item: str | None, wanted_items: set[str], items: dict[str, ItemMeta], skips: SkipLog,
                       where: str) -> bool:
    """Whether a catalogue record of `item` is to be read: it names an item, a reviewed one, not seen before.
    A record without an item and a repeated one are counted."""
    if not item:
        skips.add("meta_missing_asin", where)
        return False
    if item not in wanted_items:
        return False
    if item in items:
        skips.add("duplicate_meta", where)
        return False
    return True


def checked_statistics(stats: dict[str, float], skips: SkipLog, where: str) -> dict[str, float]:
    """`stats` with each negative or non-finite value counted and made missing (NaN)."""
    for name, value in stats.items():
        if not math.isnan(value) and (not math.isfinite(value) or value < 0):
            skips.add(f"bad_{name}", where)
            stats[name] = math.nan
    return stats


def read_meta(path: Path, wanted_asins: set[str], skips: SkipLog, max_bad_share: float = 0.5) -> dict[str, ItemMeta]:
    """Metadata of the reviewed items, keyed by asin; negative or non-finite statistics become missing."""
    items: dict[str, ItemMeta] = {}
    for line_no, record in _records(path, skips, max_bad_share, wanted_asins):
        where = f"{path.name}:{line_no}"
        asin = record.get("asin")
        if not is_new_wanted_item(asin if isinstance(asin, str) else None, wanted_asins, items, skips, where):
            continue
        stats = checked_statistics({"price": _number(record.get("price")), "sales_rank": _sales_rank(record)},
                                   skips, where)
        title = record.get("title")
        brand = record.get("brand")
        items[asin] = ItemMeta(
            asin=asin,
            title=title if isinstance(title, str) else "",
            category=_leaf_category(record),
            brand=brand.strip() if isinstance(brand, str) else "",
            image_ref=_image_ref(record),
            statistics=stats,
        )
    return items
