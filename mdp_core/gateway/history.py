"""Historical-data request values: bar sizes, durations, end times and bar date strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["format_bar_date", "format_range_time", "parse_bar_size", "parse_duration", "parse_end"]

_BAR_SIZE = re.compile(r"^\s*(\d+)\s*(secs?|mins?|hours?|days?)\s*$", re.IGNORECASE)
_BAR_UNIT = {"sec": 1, "min": 60, "hour": 3600, "day": 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([SDWMY])\s*$", re.IGNORECASE)
_DURATION_UNIT = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 30 * 86400, "Y": 365 * 86400}
_END = re.compile(r"^(\d{8})(?:[ -]+(\d{2}:\d{2}:\d{2}))?(?:\s+(\S+))?$")


def parse_bar_size(text: str) -> int:
    """Seconds in a barSizeSetting (``"5 secs"``, ``"1 min"``, ``"1 hour"``, ``"1 day"``).

    Only sizes built from whole 5-second bars that tile a day are served; anything else
    raises ``ValueError`` naming the value.
    """
    match = _BAR_SIZE.match(text)
    seconds = int(match.group(1)) * _BAR_UNIT[match.group(2).lower().rstrip("s")] if match else 0
    if seconds <= 0 or seconds % 5 or 86400 % seconds:
        raise ValueError(
            f"unsupported bar size {text!r}: expected e.g. '5 secs', '30 secs', '1 min', "
            "'5 mins', '1 hour', '1 day' (a multiple of 5 seconds dividing a day)"
        )
    return seconds


def parse_duration(text: str) -> int:
    """Seconds in a durationStr: ``"1800 S"``, ``"1 D"``, ``"2 W"``, ``"1 M"`` (30 d), ``"1 Y"``."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}: expected '<n> S|D|W|M|Y' with n > 0")
    return int(match.group(1)) * _DURATION_UNIT[match.group(2).upper()]


def parse_end(text: str, now: float) -> float:
    """Epoch seconds of an endDateTime; empty means ``now``.

    Accepts ``yyyymmdd HH:MM:SS [TZ]``, ``yyyymmdd-HH:MM:SS`` (UTC) and ``yyyymmdd``
    (end of that day). A missing time zone means UTC (real TWS would use its own zone).
    """
    text = text.strip()
    if not text:
        return now
    match = _END.match(text)
    if not match:
        raise ValueError(f"invalid endDateTime {text!r}: expected 'yyyymmdd HH:MM:SS [TZ]'")
    day, clock, zone = match.groups()
    try:
        tz = ZoneInfo(zone) if zone else UTC
        when = datetime.strptime(day + (clock or "23:59:59"), "%Y%m%d%H:%M:%S").replace(tzinfo=tz)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise ValueError(f"invalid endDateTime {text!r}: {exc}") from None
    return when.timestamp()


def format_bar_date(t: int, bar_seconds: int, format_date: int) -> str:
    """A bar's date field: ``yyyymmdd`` for daily bars; else epoch seconds for formatDate 2
    and ``yyyymmdd HH:MM:SS UTC`` for formatDate 1 (both parsed by ib_async)."""
    when = datetime.fromtimestamp(t, UTC)
    if bar_seconds >= 86400:
        return when.strftime("%Y%m%d")
    if format_date == 2:
        return str(t)
    return when.strftime("%Y%m%d %H:%M:%S UTC")


def format_range_time(t: float) -> str:
    """Start/end of a historical reply, ``yyyymmdd-HH:MM:SS`` (UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%d-%H:%M:%S")
