"""Readers for plain interaction logs: a table of `user, item, timestamp[, rating][, type]` and an item table.

Tables are CSV, TSV (by the header line's separator) or parquet, plain or gzip-compressed, with a header.
Columns are found by role: `data.columns` names them (`user`, `item`, `timestamp`, `rating`, `type` and for
the item table `title`, `category`, `brand`, `image`); without it the usual names are recognised, among
them RecBole's atomic files (`.inter`/`.item`, typed headers such as `user_id:token`) and the Amazon 2023
benchmark CSVs (`user_id,parent_asin,rating,timestamp[,history]`, milliseconds). Numeric item columns
(RecBole `:float`, or every value a number) are the catalogue's statistics. Rows that cannot be read are
counted in the `SkipLog` with their file and line, as the Amazon readers do.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marn.config import ColumnsConfig
from marn.data.amazon import DataFileError, ItemMeta, Reviews, SkipLog, is_new_wanted_item, open_text
from marn.data.timestamps import UnitTracker

INTERACTION_ROLES = ("user", "item", "timestamp", "rating", "type")
ITEM_ROLES = ("item", "title", "category", "brand", "image")
# Recognised column names per role, compared lower-cased and without a RecBole type suffix.
KNOWN_COLUMNS = {
    "user": ("user_id", "user", "userid", "uid", "reviewerid", "visitorid", "customer_id"),
    "item": ("item_id", "item", "itemid", "iid", "movieid", "parent_asin", "asin", "product_id"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "unixreviewtime", "event_time"),
    "rating": ("rating", "overall", "score", "stars"),
    "type": ("type", "behaviour", "behavior", "behaviour_type", "behavior_type", "event", "event_type", "action"),
    "title": ("title", "movie_title", "name", "item_name", "product_title"),
    "category": ("category", "main_category", "categories", "genre", "genres", "class"),
    "brand": ("brand", "store", "brand_id", "seller"),
    "image": ("image", "image_url", "image_ref", "imurl", "img", "picture"),
}
REQUIRED_INTERACTION_ROLES = ("user", "item", "timestamp")
_PARQUET_MAGIC = b"PAR1"
_RECBOLE_FLOAT = "float"


@dataclass(frozen=True)
class Column:
    index: int
    name: str  # the header's name without a RecBole type suffix
    recbole_type: str | None  # "token", "token_seq", "float", "float_seq" in RecBole atomic files


def _columns_of(header: list[str]) -> list[Column]:
    columns = []
    for index, raw in enumerate(header):
        name, _, recbole_type = raw.strip().partition(":")
        columns.append(Column(index, name.strip(), recbole_type.strip() or None))
    return columns


def _rows(path: Path) -> tuple[list[Column], Iterator[tuple[int, str, list]]]:
    """The table's columns and its rows as (line or row number, where, values); values are text for CSV/TSV,
    typed for parquet."""
    with open(path, "rb") as probe:
        is_parquet = probe.read(4) == _PARQUET_MAGIC
    if is_parquet:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        columns = _columns_of(parquet.schema_arrow.names)

        def parquet_rows() -> Iterator[tuple[int, str, list]]:
            row = 0
            for batch in parquet.iter_batches(batch_size=65_536):
                values = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                for record in zip(*values):
                    row += 1
                    yield row, f"{path.name}:row {row}", list(record)

        return columns, parquet_rows()

    handle = open_text(path)
    header_line = handle.readline()
    if not header_line.strip():
        handle.close()
        raise DataFileError(f"{path}: line 1: no header (the table needs one naming its columns)")
    delimiter = "\t" if header_line.count("\t") >= header_line.count(",") else ","
    columns = _columns_of(next(csv.reader([header_line], delimiter=delimiter)))

    def text_rows() -> Iterator[tuple[int, str, list]]:
        with handle:
            reader = csv.reader(handle, delimiter=delimiter)
            for values in reader:
                if values:
                    yield reader.line_num + 1, f"{path.name}:{reader.line_num + 1}", values

    return columns, text_rows()


def _find_columns(path: Path, columns: list[Column], roles: tuple[str, ...], named: ColumnsConfig,
                  required: tuple[str, ...]) -> dict[str, Column]:
    """The column of each role: the one `named` (data.columns) names, else the first recognised name."""
    by_name = {column.name: column for column in columns}
    by_lower = {}
    for column in columns:
        by_lower.setdefault(column.name.lower(), column)
    found = {}
    for role in roles:
        name = getattr(named, role)
        if name:
            if name not in by_name:
                raise DataFileError(f"{path}: line 1: data.columns.{role} is {name!r}, but the header has "
                                    f"{[c.name for c in columns]}")
            found[role] = by_name[name]
            continue
        match = next((by_lower[name] for name in KNOWN_COLUMNS[role] if name in by_lower), None)
        if match is not None:
            found[role] = match
    missing = [role for role in required if role not in found]
    if missing:
        raise DataFileError(
            f"{path}: line 1: no {' / '.join(missing)} column among {[c.name for c in columns]}; name it with "
            + " ".join(f"-S data.columns.{role}=COLUMN" for role in missing))
    return found


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _float(value) -> float | None:
    """The value as a finite float; None when it is not a number (an empty cell is NaN)."""
    text = _text(value)
    if not text:
        return math.nan
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _rows_of_header_width(path: Path, header: list[Column], rows: Iterator[tuple[int, str, list]], skips: SkipLog,
                          max_bad_share: float) -> Iterator[tuple[int, str, list]]:
    """The rows with the header's number of fields; the others are counted as malformed, and a table that is
    empty or mostly malformed stops once every row is read."""
    n_rows = n_bad = 0
    for line_no, where, values in rows:
        n_rows += 1
        if len(values) != len(header):
            n_bad += 1
            skips.add("malformed_line", where)
            continue
        yield line_no, where, values
    if n_rows == 0:
        raise DataFileError(f"{path}: the table has a header but no rows")
    if n_bad / n_rows > max_bad_share:
        raise DataFileError(f"{path}: {n_bad} of {n_rows} rows do not have the header's number of fields "
                            f"(more than {max_bad_share:.0%}); is the separator right?")


def _type_order(names: set[str]) -> list[str]:
    """Behaviour type names in a fixed order: numerically where all are integers, else alphabetically."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def read_interactions(path: Path, columns: ColumnsConfig, skips: SkipLog,
                      max_bad_share: float = 0.5) -> Reviews:
    """The interactions of a table as `Reviews`; behaviour types from its type column, when it has one."""
    header, rows = _rows(path)
    found = _find_columns(path, header, INTERACTION_ROLES, columns, REQUIRED_INTERACTION_ROLES)
    units = UnitTracker(skips)
    users, items, times, ratings, lines, type_values = [], [], [], [], [], []
    for line_no, where, values in _rows_of_header_width(path, header, rows, skips, max_bad_share):
        user, item = _text(values[found["user"].index]), _text(values[found["item"].index])
        if not user or not item:
            skips.add("missing_field", where)
            continue
        time = units.seconds(values[found["timestamp"].index], where)
        if time is None:
            skips.add("missing_timestamp", where)
            continue
        rating = math.nan
        if "rating" in found:
            rating = _float(values[found["rating"].index])
            if rating is None:
                skips.add("bad_rating", where)
                rating = math.nan
        behaviour = ""
        if "type" in found:
            behaviour = _text(values[found["type"].index])
            if not behaviour:
                skips.add("missing_type", where)
                continue
        users.append(user)
        items.append(item)
        times.append(time)
        ratings.append(rating)
        lines.append(line_no)
        type_values.append(behaviour)
    type_names: tuple[str, ...] = ()
    types = None
    if "type" in found:
        type_names = tuple(_type_order(set(type_values)))
        index = {name: i for i, name in enumerate(type_names)}
        types = np.array([index[name] for name in type_values], dtype=np.int8)
    return Reviews(np.array(users, dtype=object), np.array(items, dtype=object), np.array(times, dtype=np.int64),
                   np.array(ratings, dtype=np.float64), np.array(lines, dtype=np.int64), types, type_names)


def _first_piece(text: str, recbole_type: str | None) -> str:
    """One category out of a list-valued cell: "Action|Comedy" and RecBole token_seq "Action Comedy"."""
    text = text.split("|")[0].strip()
    if recbole_type == "token_seq":
        text = text.split()[0] if text.split() else ""
    return text.strip("[]'\" ")


def read_items(path: Path, wanted_items: set[str], columns: ColumnsConfig, skips: SkipLog,
               max_bad_share: float = 0.5, reserved_statistics: tuple[str, ...] = ()
               ) -> tuple[dict[str, ItemMeta], tuple[str, ...]]:
    """Items of an item table, keyed by item id, and the names of its numeric columns (the statistics).

    A statistic whose name is in `reserved_statistics` (computed from the interactions) gets an `item_` prefix.
    """
    header, rows = _rows(path)
    found = _find_columns(path, header, ITEM_ROLES, columns, ("item",))
    used = {column.index for column in found.values()}
    candidates = [c for c in header if c.index not in used and c.recbole_type in (None, _RECBOLE_FLOAT)]
    records: list[tuple[str, list]] = []
    numeric = {column.index: True for column in candidates}
    for _, where, values in _rows_of_header_width(path, header, rows, skips, max_bad_share):
        for index in numeric:
            if numeric[index] and _float(values[index]) is None:
                numeric[index] = False
        records.append((where, values))
    statistic_columns = [c for c in candidates if numeric[c.index]]
    names = tuple(f"item_{c.name}" if c.name in reserved_statistics else c.name for c in statistic_columns)

    def cell(values: list, role: str) -> str:
        return _text(values[found[role].index]) if role in found else ""

    items: dict[str, ItemMeta] = {}
    for where, values in records:
        item = cell(values, "item")
        if not is_new_wanted_item(item, wanted_items, items, skips, where):
            continue
        stats = {}
        for name, column in zip(names, statistic_columns):
            value = _float(values[column.index])
            if not math.isnan(value) and value < 0:
                skips.add(f"bad_{name}", where)
                value = math.nan
            stats[name] = value
        category = cell(values, "category")
        if category and "category" in found:
            category = _first_piece(category, found["category"].recbole_type)
        items[item] = ItemMeta(asin=item, title=cell(values, "title"), category=category,
                               brand=cell(values, "brand"), image_ref=cell(values, "image"), statistics=stats)
    return items, names


def bare_catalogue(item_ids) -> dict[str, ItemMeta]:
    """Items known only by their id (no item table): no title, category, brand, image or statistic."""
    return {item: ItemMeta(asin=item, title="", category="", brand="", image_ref="", statistics={})
            for item in set(item_ids)}
