"""Rollups: coarser bars (1m, 5m, 1h, 1d, ...) computed in SQL from finer bars in ``mdp.bars``.

``rollup_bars`` is library-level (no Dagster): the Dagster rollup assets, benchmarks and
users call the same function.

Guarantees of ``rollup_bars``:
- windows are tumbling and epoch-aligned (``date_bin`` with origin 1970-01-01 UTC), so a
  ``1d`` bar is the UTC day; every window that overlaps ``[start, end)`` is recomputed in
  full (the range is widened to window boundaries), never from part of its source bars;
- one SQL statement per call: open = open of the earliest source bar, close = close of the
  latest, high = max, low = min, volume and trade_count summed, vwap volume-weighted over
  the source bars that have one; a window without source bars gets no row (no fill);
- idempotent: ``INSERT ... ON CONFLICT (symbol, resolution, ts) DO UPDATE``; running it
  again recomputes and rewrites only rows whose values changed (a late source bar is a
  revision); running it twice on the same data changes nothing;
- rollup rows carry ``source = 'rollup:<provider source>'``; a row a provider wrote itself
  at the target resolution (any other source) is never overwritten.

Identifiers are code constants; every value is a query parameter.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mdp_core.models import Bar, parse_resolution, resolution_seconds
from mdp_core.store.database import MAINTENANCE_TIMEOUT

if TYPE_CHECKING:
    from mdp_core.store.database import Database

__all__ = [
    "ROLLUP_SOURCE_PREFIX",
    "Mismatch",
    "RollupResult",
    "SymbolSummary",
    "align_range",
    "fetch_bars",
    "rollup_bars",
    "rollup_mismatches",
    "summarize_bars",
    "windows_with_bars",
]

#: Prefix of ``source`` on rows written by ``rollup_bars`` (what it may overwrite).
ROLLUP_SOURCE_PREFIX = "rollup:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The windows' bars computed from the source bars (no write). Shared by the rollup and the
# consistency check. $1 window length, $2 source resolution, $3 start, $4 end.
_AGG_CTE = """
WITH src AS (
    SELECT symbol,
           date_bin($1::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           ts, open, high, low, close, volume, vwap, trade_count, source
    FROM mdp.bars
    WHERE resolution = $2 AND ts >= $3 AND ts < $4
), agg AS (
    SELECT symbol,
           bucket AS ts,
           (array_agg(open ORDER BY ts))[1] AS open,
           max(high) AS high,
           min(low) AS low,
           (array_agg(close ORDER BY ts DESC))[1] AS close,
           sum(volume) AS volume,
           sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL)
               / nullif(sum(volume) FILTER (WHERE vwap IS NOT NULL), 0) AS vwap,
           sum(trade_count)::bigint AS trade_count,
           'rollup:' || min(source) AS source
    FROM src
    GROUP BY symbol, bucket
)"""

# $5 target resolution. (Concatenating two code constants: no outside text in the SQL.)
_ROLLUP_SQL = (
    _AGG_CTE  # noqa: S608
    + """, written AS (
    INSERT INTO mdp.bars AS b
        (symbol, resolution, ts, open, high, low, close, volume, vwap, trade_count, source)
    SELECT symbol, $5, ts, open, high, low, close, volume, vwap, trade_count, source
    FROM agg
    ON CONFLICT (symbol, resolution, ts) DO UPDATE SET
        open = EXCLUDED.open,
        high = EXCLUDED.high,
        low = EXCLUDED.low,
        close = EXCLUDED.close,
        volume = EXCLUDED.volume,
        vwap = EXCLUDED.vwap,
        trade_count = EXCLUDED.trade_count,
        source = EXCLUDED.source,
        ingested_at = now()
    WHERE starts_with(b.source, 'rollup:')
      AND (b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trade_count, b.source)
          IS DISTINCT FROM
          (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume,
           EXCLUDED.vwap, EXCLUDED.trade_count, EXCLUDED.source)
    RETURNING 1
)
SELECT count(*) AS bars,
       (SELECT count(*) FROM written) AS written,
       coalesce(array_agg(DISTINCT symbol), '{}'::text[]) AS symbols,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM agg
"""
)

# Rollup rows that differ from their source bars (stale: a source bar arrived or changed
# after the rollup; orphan: the source bars are gone), and source windows missing a rollup
# row while the same window has rollup rows for other symbols (rolled up before this
# symbol's bars arrived). $5 target resolution, $6 max rows returned.
_MISMATCH_SQL = (
    _AGG_CTE  # noqa: S608
    + """, stored AS (
    SELECT symbol, ts, open, high, low, close, volume
    FROM mdp.bars
    WHERE resolution = $5 AND ts >= $3 AND ts < $4 AND starts_with(source, 'rollup:')
), found AS (
    SELECT s.symbol, s.ts, CASE WHEN a.symbol IS NULL THEN 'orphan' ELSE 'stale' END AS kind
    FROM stored s LEFT JOIN agg a ON a.symbol = s.symbol AND a.ts = s.ts
    WHERE a.symbol IS NULL
       OR (s.open, s.high, s.low, s.close) IS DISTINCT FROM (a.open, a.high, a.low, a.close)
       OR abs(s.volume - a.volume) > 1e-9 * greatest(abs(a.volume), 1.0)
    UNION ALL
    SELECT a.symbol, a.ts, 'missing'
    FROM agg a
    WHERE NOT EXISTS (SELECT 1 FROM mdp.bars b
                      WHERE b.resolution = $5 AND b.symbol = a.symbol AND b.ts = a.ts)
      AND EXISTS (SELECT 1 FROM stored s WHERE s.ts = a.ts)
)
SELECT symbol, ts, kind, count(*) OVER () AS total
FROM found
ORDER BY ts, symbol
LIMIT $6
"""
)

_FETCH_SQL = """
SELECT symbol, ts, open, high, low, close, volume, resolution, vwap, trade_count, source
FROM mdp.bars
WHERE resolution = $1 AND ts >= $2 AND ts < $3
  AND ($4::text[] IS NULL OR symbol = ANY($4::text[]))
ORDER BY symbol, ts
"""

# $1 resolution, $2 start, $3 end, $4 closes kept per symbol, $5 symbols returned.
_SUMMARY_SQL = """
WITH r AS (
    SELECT symbol, ts, open, high, low, close, volume,
           row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS back
    FROM mdp.bars
    WHERE resolution = $1 AND ts >= $2 AND ts < $3
)
SELECT symbol,
       count(*) AS bars,
       min(ts) AS first_ts,
       max(ts) AS last_ts,
       (array_agg(open ORDER BY ts))[1] AS open,
       max(high) AS high,
       min(low) AS low,
       (array_agg(close ORDER BY ts DESC))[1] AS close,
       sum(volume) AS volume,
       array_agg(close ORDER BY ts) FILTER (WHERE back <= $4) AS closes
FROM r
GROUP BY symbol
ORDER BY symbol
LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class RollupResult:
    """What one ``rollup_bars`` call did over ``[start, end)`` (window-aligned).

    ``rows``: bars computed (one per symbol and non-empty window); ``written``: rows
    inserted or changed by this call (0 when re-run on unchanged data); ``symbols``: sorted;
    ``first_ts`` / ``last_ts``: the first and last window start (``None`` when no rows)."""

    resolution: str
    start: datetime
    end: datetime
    rows: int
    written: int
    symbols: tuple[str, ...]
    first_ts: datetime | None
    last_ts: datetime | None


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A rollup row that does not match its source bars (``kind``: ``stale`` = values
    differ, ``orphan`` = no source bars left, ``missing`` = source bars but no rollup row
    while other symbols have one for that window)."""

    symbol: str
    ts: datetime
    kind: str


@dataclass(frozen=True, slots=True)
class SymbolSummary:
    """One symbol's bars over a range: OHLCV of the whole range and its latest closes."""

    symbol: str
    bars: int
    first_ts: datetime
    last_ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    closes: tuple[float, ...]  # the last few closes, oldest first (for a sparkline)


def _aware(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} {value!r} is invalid: expected a timezone-aware datetime")
    return value.astimezone(UTC)


def align_range(resolution: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` widened to whole epoch-aligned windows of ``resolution``.

    Raises ``ValueError`` for a naive datetime or ``end < start``."""
    start, end = _aware("start", start), _aware("end", end)
    if end < start:
        raise ValueError(
            f"range end {end.isoformat()} is before start {start.isoformat()}: "
            "expected start <= end"
        )
    step = resolution_seconds(resolution)
    floor = (start - _EPOCH) // timedelta(seconds=step)
    ceil = -((_EPOCH - end) // timedelta(seconds=step))  # ceiling division
    return (
        _EPOCH + timedelta(seconds=floor * step),
        _EPOCH + timedelta(seconds=ceil * step),
    )


def _check_resolutions(resolution: str, source_resolution: str) -> tuple[str, str]:
    target, source = parse_resolution(resolution), parse_resolution(source_resolution)
    t, s = resolution_seconds(target), resolution_seconds(source)
    if t <= s or t % s:
        raise ValueError(
            f"cannot roll {source} bars up to {target}: expected a target resolution that is a "
            f"whole multiple (> 1) of the source resolution {source}"
        )
    return target, source


async def rollup_bars(
    db: Database,
    resolution: str,
    start: datetime,
    end: datetime,
    *,
    source_resolution: str = "5s",
    parallel: int = 2,
) -> RollupResult:
    """Compute ``resolution`` bars from ``source_resolution`` bars for every window
    overlapping ``[start, end)`` and upsert them into ``mdp.bars`` (see the module's
    guarantees). Raises ``ValueError`` for an unknown resolution, a target that is not a
    multiple of the source, a naive datetime or ``end < start``.

    The range is split into up to ``parallel`` runs of whole windows, rolled up at once on
    separate connections (each in its own transaction): the server then uses that many
    cores. Every window is computed whole by exactly one of them."""
    target, source = _check_resolutions(resolution, source_resolution)
    if not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel {parallel!r} is invalid: expected an int >= 1")
    start, end = align_range(target, start, end)
    # No partition to create: a window never crosses a UTC day (every resolution divides a
    # day), so its row lands in the daily partition that already holds its source bars.
    window = timedelta(seconds=resolution_seconds(target))
    windows = (end - start) // window
    n = max(1, min(parallel, windows))
    per = -(-windows // n)  # windows per piece, rounded up
    bounds = [min(start + i * per * window, end) for i in range(n + 1)]
    pieces = [(lo, hi) for lo, hi in itertools.pairwise(bounds) if lo < hi]
    pieces = pieces or [(start, end)]

    async def one(lo: datetime, hi: datetime) -> Any:
        async with db.pool.acquire() as conn:
            row = await conn.fetchrow(
                _ROLLUP_SQL, window, source, lo, hi, target, timeout=MAINTENANCE_TIMEOUT
            )
        assert row is not None  # an aggregate without GROUP BY always returns one row
        return row

    rows = await asyncio.gather(*(one(lo, hi) for lo, hi in pieces))
    firsts = [r["first_ts"] for r in rows if r["first_ts"] is not None]
    lasts = [r["last_ts"] for r in rows if r["last_ts"] is not None]
    row = {
        "bars": sum(r["bars"] for r in rows),
        "written": sum(r["written"] for r in rows),
        "symbols": set().union(*(r["symbols"] for r in rows)),
        "first_ts": min(firsts, default=None),
        "last_ts": max(lasts, default=None),
    }
    return RollupResult(
        resolution=target,
        start=start,
        end=end,
        rows=int(row["bars"]),
        written=int(row["written"]),
        symbols=tuple(sorted(row["symbols"])),
        first_ts=row["first_ts"],
        last_ts=row["last_ts"],
    )


async def fetch_bars(
    db: Database,
    symbols: str | Sequence[str] | None,
    resolution: str,
    start: datetime,
    end: datetime,
) -> list[Bar]:
    """Bars of ``resolution`` with ``ts`` in ``[start, end)``, for ``symbols`` (one, several,
    or ``None`` for all), ordered by symbol then time."""
    resolution = parse_resolution(resolution)
    start, end = _aware("start", start), _aware("end", end)
    wanted = [symbols] if isinstance(symbols, str) else None if symbols is None else list(symbols)
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(_FETCH_SQL, resolution, start, end, wanted)
    return [Bar(**dict(r)) for r in rows]


async def summarize_bars(
    db: Database,
    resolution: str,
    start: datetime,
    end: datetime,
    *,
    limit: int = 20,
    closes: int = 48,
) -> list[SymbolSummary]:
    """Per-symbol OHLCV over ``[start, end)`` for the first ``limit`` symbols (by name),
    each with its last ``closes`` closes: a preview of what a rollup wrote."""
    resolution = parse_resolution(resolution)
    start, end = _aware("start", start), _aware("end", end)
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(_SUMMARY_SQL, resolution, start, end, closes, limit)
    return [
        SymbolSummary(
            symbol=r["symbol"],
            bars=int(r["bars"]),
            first_ts=r["first_ts"],
            last_ts=r["last_ts"],
            open=r["open"],
            high=r["high"],
            low=r["low"],
            close=r["close"],
            volume=r["volume"],
            closes=tuple(r["closes"] or ()),
        )
        for r in rows
    ]


_PROBE_SQL = """
SELECT w.start
FROM unnest($1::timestamptz[]) AS w(start)
WHERE EXISTS (
    SELECT 1 FROM mdp.bars b
    WHERE b.resolution = $2 AND b.ts >= w.start AND b.ts < w.start + $3::interval
)
ORDER BY w.start
"""


async def windows_with_bars(
    db: Database, resolution: str, starts: Sequence[datetime], length: timedelta
) -> list[datetime]:
    """Which of the windows ``[s, s + length)`` hold at least one ``resolution`` bar, in
    order. One index probe per window (cheap enough for a sensor)."""
    resolution = parse_resolution(resolution)
    if not starts:
        return []
    async with db.pool.acquire() as conn:
        starts = [_aware("start", s) for s in starts]
        rows = await conn.fetch(_PROBE_SQL, starts, resolution, length)
    return [r["start"] for r in rows]


async def rollup_mismatches(
    db: Database,
    resolution: str,
    start: datetime,
    end: datetime,
    *,
    source_resolution: str = "5s",
    limit: int = 100,
) -> tuple[int, list[Mismatch]]:
    """Compare the ``resolution`` rollup rows of the windows overlapping ``[start, end)``
    with what ``rollup_bars`` would compute now (read-only). Returns the number of
    mismatches and the first ``limit`` of them, oldest first. Open, high, low and close must
    be equal; volume equal within a relative 1e-9 (sums)."""
    target, source = _check_resolutions(resolution, source_resolution)
    start, end = align_range(target, start, end)
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            _MISMATCH_SQL,
            timedelta(seconds=resolution_seconds(target)),
            source,
            start,
            end,
            target,
            limit,
        )
    total = int(rows[0]["total"]) if rows else 0
    return total, [Mismatch(r["symbol"], r["ts"], r["kind"]) for r in rows]
