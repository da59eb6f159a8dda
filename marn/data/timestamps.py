"""Behaviour times as unix seconds, whichever unit a file writes them in.

The 2023 Amazon release and many logs write milliseconds, older files seconds, and some tables mix both.
A number at or above `MILLISECONDS_FROM` is taken as milliseconds: as seconds it would lie after the year
5000, as milliseconds it lies after March 1973. Dates written as ISO 8601 text are read as UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from marn.data.amazon import SkipLog

MILLISECONDS_FROM = 100_000_000_000


def unix_seconds(value) -> tuple[int, str] | None:
    """(unix seconds, the unit the value was written in: "s", "ms" or "iso"), or None when it is no time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):  # a parquet timestamp column
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return int(moment.timestamp()), "iso"
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return int(moment.timestamp()), "iso"
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    if value >= MILLISECONDS_FROM:
        return int(value) // 1000, "ms"
    return int(value), "s"


class UnitTracker:
    """Counts the times written in another unit than the file's first one, as a skip reason with examples.

    The value is still used (converted); the count tells a reader the file mixes units.
    """

    def __init__(self, skips: SkipLog):
        self.skips = skips
        self.first_unit: str | None = None

    def seconds(self, value, where: str) -> int | None:
        parsed = unix_seconds(value)
        if parsed is None:
            return None
        seconds, unit = parsed
        if self.first_unit is None:
            self.first_unit = unit
        elif unit != self.first_unit:
            self.skips.add(f"timestamp_in_{unit}_converted", where)
        return seconds
