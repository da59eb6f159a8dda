"""Reader for the Amazon Reviews 2023 release (Hou et al., amazon-reviews-2023.github.io).

Review lines: `rating, title, text, images, asin, parent_asin, user_id, timestamp (ms), helpful_vote,
verified_purchase`. Item lines, keyed by `parent_asin`: `main_category, title, average_rating,
rating_number, features, description, price, images, videos, store, categories, details, bought_together`.
An item is a `parent_asin` (variants fold into their parent); `store` is the brand-like ID; the first
`MAIN` image (else the first image) gives the image URL; average_rating, rating_number and price are the
catalogue's statistics. Bad lines are counted in the `SkipLog` like the 2014/2018 reader's.
"""

from __future__ import annotations

from pathlib import Path

from marn.data.amazon import (
    ItemMeta, Reviews, SkipLog, _number, _records, checked_statistics, is_new_wanted_item, review_records,
)
from marn.data.timestamps import UnitTracker

META_STATISTICS = ("average_rating", "rating_number", "price")
REVIEW_KEYS = frozenset({"user_id", "parent_asin"})  # the 2014/2018 reviews write reviewerID and asin


def _item_of(record: dict) -> str | None:
    for key in ("parent_asin", "asin"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def read_reviews(path: Path, skips: SkipLog, max_bad_share: float = 0.5) -> Reviews:
    """Reviews of a 2023 review file, times in unix seconds (the file's milliseconds divided by 1000)."""
    units = UnitTracker(skips)

    def reviewer_and_item(record: dict) -> tuple[str, str] | None:
        user, item = record.get("user_id"), _item_of(record)
        if not isinstance(user, str) or not user.strip() or item is None:
            return None
        return user.strip(), item

    return review_records(path, skips, max_bad_share, reviewer_and_item,
                          lambda record, where: units.seconds(record.get("timestamp"), where), "rating")


def _image_url(images) -> str:
    """The `large` URL of the first MAIN image, else of the first image that has one."""
    if not isinstance(images, list):
        return ""
    entries = [image for image in images if isinstance(image, dict)]
    main = [image for image in entries if image.get("variant") == "MAIN"]
    for image in main + entries:
        url = image.get("large") or image.get("hi_res")
        if isinstance(url, str) and url.strip():
            return url.strip()
    return ""


def _category(record: dict) -> str:
    path = record.get("categories")
    if isinstance(path, list) and path and isinstance(path[-1], str) and path[-1].strip():
        return path[-1].strip()
    main = record.get("main_category")
    return main.strip() if isinstance(main, str) else ""


def read_meta(path: Path, wanted_items: set[str], skips: SkipLog, max_bad_share: float = 0.5) -> dict[str, ItemMeta]:
    """Metadata of the reviewed items, keyed by parent_asin; negative or non-finite statistics become missing."""
    items: dict[str, ItemMeta] = {}
    for line_no, record in _records(path, skips, max_bad_share):
        where = f"{path.name}:{line_no}"
        item = _item_of(record)
        if not is_new_wanted_item(item, wanted_items, items, skips, where):
            continue
        stats = checked_statistics({name: _number(record.get(name)) for name in META_STATISTICS}, skips, where)
        title, store = record.get("title"), record.get("store")
        items[item] = ItemMeta(
            asin=item,
            title=title.strip() if isinstance(title, str) else "",
            category=_category(record),
            brand=store.strip() if isinstance(store, str) else "",
            image_ref=_image_url(record.get("images")),
            statistics=stats,
        )
    return items
