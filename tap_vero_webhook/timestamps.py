"""Time stamps: the one format this package writes, and its one parser.

Every time it stores or prints (an event's `received_at`, a token's
`created_at`, a refusal's `time`, a report's `generated_at`) is RFC 3339 in UTC
with microseconds, ``2026-11-30T02:14:26.123456Z``, so that text order is time
order. A UTC day (a rejects file's name) is its first ten characters.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

_second_prefix: tuple[int, str] = (-1, "")


def utc_timestamp(epoch_seconds: float) -> str:
    """`epoch_seconds` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    The text up to the second is made once per second: strftime on every request
    costs more than the rest of the stamping.
    """
    global _second_prefix
    whole = math.floor(epoch_seconds)
    micro = round((epoch_seconds - whole) * 1_000_000)
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    cached_whole, prefix = _second_prefix
    if whole != cached_whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_prefix = (whole, prefix)
    return f"{prefix}.{micro:06d}Z"


def utc_now() -> str:
    return utc_timestamp(time.time())


def utc_day(epoch_seconds: float) -> str:
    """The UTC day of `epoch_seconds`, ``YYYY-MM-DD``."""
    return utc_timestamp(epoch_seconds)[:10]


def parse_utc_timestamp(text: str) -> datetime:
    """A time stamp written by `utc_timestamp`, as an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"time stamp {text!r} has no time zone")
    return moment.astimezone(UTC)
