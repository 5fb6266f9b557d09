"""The asset checks' logic: plain async functions of the database, the time and the
settings, each returning an ``AssetCheckResult`` (see ``health.py`` for what each checks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from mdp_core.calendars import open_intervals
from mdp_core.dlq import DeadLetterRecord
from mdp_core.settings import CheckSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import rollup_mismatches
from mdp_dagster.check_sql import (
    DUPLICATE_KEYS_SQL,
    DUPLICATES_SQL,
    GAPS_SQL,
    NEWEST_SQL,
    OHLC_COUNT_SQL,
    OHLC_SAMPLE_SQL,
    SYMBOLS_5S_SQL,
    sql_for,
)
from mdp_dagster.rendering import iso, md_table

__all__ = [
    "check_dlq_depth",
    "check_duplicates",
    "check_freshness",
    "check_gaps",
    "check_matches_source",
    "check_ohlc",
]

SLOT = timedelta(seconds=5)
SAMPLE_ROWS = 10  # bad rows / duplicate keys / gaps listed in a check's metadata


def _open_throughout(calendar: str, start: datetime, end: datetime) -> bool:
    spans = open_intervals(calendar, start, end)
    covered = sum((hi - lo for lo, hi in spans), timedelta())
    return covered >= end - start


async def check_freshness(
    db: Database, table: str, now: datetime, settings: CheckSettings
) -> dg.AssetCheckResult:
    """``fresh``: see the module docstring. ``table`` is ``quotes`` or ``bars_5s``."""
    threshold = timedelta(minutes=settings.freshness_minutes)
    newest = await db.pool.fetchval(sql_for(NEWEST_SQL, table), now - timedelta(days=1))
    lag = (now - newest).total_seconds() if newest is not None else None
    market_open = _open_throughout(settings.calendar, now - threshold, now)
    meta: dict[str, Any] = {
        "newest_ts": iso(newest) if newest is not None else "none in the last day",
        "threshold_minutes": settings.freshness_minutes,
        "calendar": settings.calendar,
        "market_open": market_open,
    }
    if lag is not None:
        meta["lag_seconds"] = dg.MetadataValue.float(lag)
    if not market_open:
        meta["note"] = (
            f"market closed ({settings.calendar}) during the last {settings.freshness_minutes:g}"
            " minutes: freshness not required"
        )
        return dg.AssetCheckResult(passed=True, metadata=meta)
    passed = lag is not None and lag <= threshold.total_seconds()
    return dg.AssetCheckResult(passed=passed, metadata=meta)


def _open_slots(prev: datetime, ts: datetime, spans: Sequence[tuple[datetime, datetime]]) -> int:
    """How many of the 5-second slots strictly between bars ``prev`` and ``ts`` start
    while the market is open (in ``spans``)."""
    missing = 0
    for lo, hi in spans:
        a, b = max(lo, prev + SLOT), min(hi, ts)
        if a < b:  # slot starts prev + k*5s in [a, b)
            missing += -((prev - b) // SLOT) - -((prev - a) // SLOT)
    return missing


async def check_gaps(db: Database, now: datetime, settings: CheckSettings) -> dg.AssetCheckResult:
    """``gaps``: see the module docstring."""
    start = now - timedelta(minutes=settings.window_minutes)
    spans = open_intervals(settings.calendar, start, now)
    meta: dict[str, Any] = {
        "window_start": iso(start),
        "window_minutes": settings.window_minutes,
        "max_missing_per_symbol": settings.gap_max_missing,
        "calendar": settings.calendar,
    }
    if not spans:
        meta["note"] = f"market closed ({settings.calendar}) during the whole window"
        return dg.AssetCheckResult(passed=True, metadata=meta)
    rows = await db.pool.fetch(GAPS_SQL, start, now)
    symbols = int(await db.pool.fetchval(SYMBOLS_5S_SQL, start, now))
    per_symbol: Counter[str] = Counter()
    gaps: list[tuple[int, str, datetime, datetime]] = []
    for r in rows:
        n = _open_slots(r["ts"], r["next_ts"], spans)
        if n:
            per_symbol[r["symbol"]] += n
            gaps.append((n, r["symbol"], r["ts"] + SLOT, r["next_ts"]))
    worst = per_symbol.most_common(SAMPLE_ROWS)
    gaps.sort(key=lambda g: (-g[0], g[2]))
    meta |= {
        "symbols_checked": symbols,
        "missing_slots": sum(per_symbol.values()),
        "symbols_with_gaps": len(per_symbol),
        "worst_symbols": dg.MetadataValue.md(
            md_table(["symbol", "missing 5s slots"], worst) if worst else "no gaps"
        ),
        "largest_gaps": dg.MetadataValue.md(
            md_table(
                ["symbol", "missing", "from", "to (next bar or window end)"],
                [(s, n, iso(a), iso(b)) for n, s, a, b in gaps[:SAMPLE_ROWS]],
            )
            if gaps
            else "no gaps"
        ),
    }
    passed = not worst or worst[0][1] <= settings.gap_max_missing
    return dg.AssetCheckResult(passed=passed, metadata=meta)


async def check_ohlc(
    db: Database, resolution: str, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """``ohlc_sane``: see the module docstring."""
    counts = await db.pool.fetchrow(OHLC_COUNT_SQL, resolution, start, end)
    assert counts is not None
    meta: dict[str, Any] = {
        "window_start": iso(start),
        "window_end": iso(end),
        "rows_checked": int(counts["total"]),
        "bad_rows": int(counts["bad"]),
    }
    if counts["bad"]:
        sample = await db.pool.fetch(OHLC_SAMPLE_SQL, resolution, start, end)
        meta["sample"] = dg.MetadataValue.md(
            md_table(
                ["symbol", "ts", "open", "high", "low", "close", "volume"],
                [(r["symbol"], iso(r["ts"]), *list(r.values())[2:]) for r in sample],
            )
        )
    return dg.AssetCheckResult(passed=counts["bad"] == 0, metadata=meta)


async def check_duplicates(
    db: Database, table: str, resolution: str | None, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """``no_duplicates``: ``table`` is ``quotes`` or ``bars`` (with ``resolution``)."""
    args = (start, end) if table == "quotes" else (start, end, resolution)
    counts = await db.pool.fetchrow(sql_for(DUPLICATES_SQL, table), *args)
    assert counts is not None
    extra = int(counts["total"]) - int(counts["keys"])
    meta: dict[str, Any] = {
        "window_start": iso(start),
        "window_end": iso(end),
        "rows_checked": int(counts["total"]),
        "duplicate_rows": extra,
    }
    if extra:
        keys = await db.pool.fetch(sql_for(DUPLICATE_KEYS_SQL, table), *args)
        meta["duplicate_keys"] = dg.MetadataValue.md(
            md_table(
                ["symbol", "ts", "copies"], [(r["symbol"], iso(r["ts"]), r["n"]) for r in keys]
            )
        )
    return dg.AssetCheckResult(passed=extra == 0, metadata=meta)


def check_dlq_depth(
    records: Sequence[DeadLetterRecord], quarantined: int, kind: str, settings: CheckSettings
) -> dg.AssetCheckResult:
    """``dlq_depth``: ``records`` are the spool's records of ``kind``."""
    errors = Counter(r.error.type for r in records)
    streams = Counter(r.stream or "-" for r in records)
    oldest = min((r.first_failed_at for r in records), default=None)
    meta: dict[str, Any] = {
        "depth": len(records),
        "max_depth": settings.dlq_max_depth,
        "quarantined": quarantined,
        "oldest_failure": iso(oldest),
        "by_stream": dg.MetadataValue.json(dict(streams)),
        "by_error": dg.MetadataValue.json(dict(errors.most_common(SAMPLE_ROWS))),
    }
    passed = len(records) <= settings.dlq_max_depth
    if not passed:
        meta["note"] = (
            f"{len(records)} {kind} records wait in the DLQ: is the database reachable? "
            "`mdp dlq replay` or the dlq_replay job writes them once it is"
        )
    return dg.AssetCheckResult(passed=passed, metadata=meta)


async def check_matches_source(
    db: Database, resolution: str, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """``matches_source``: see the module docstring."""
    total, found = await rollup_mismatches(db, resolution, start, end, limit=SAMPLE_ROWS * 5)
    meta: dict[str, Any] = {
        "window_start": iso(start),
        "window_end": iso(end),
        "mismatches": total,
    }
    if found:
        by_kind = Counter(m.kind for m in found)
        meta["by_kind"] = dg.MetadataValue.json(dict(by_kind))
        meta["sample"] = dg.MetadataValue.md(
            md_table(["symbol", "ts", "kind"], [(m.symbol, iso(m.ts), m.kind) for m in found])
        )
        meta["note"] = "re-materialize the partitions of these windows (idempotent) to fix"
    return dg.AssetCheckResult(passed=total == 0, metadata=meta)
