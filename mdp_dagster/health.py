"""Asset checks on the raw tables and the rollups, and the ``health`` asset.

Checks (each a small query over a recent window; thresholds from ``MDP_CHECK_*``):

- ``fresh`` (quotes, bars_5s): while the market is open, the newest row is at most
  ``freshness_minutes`` old. When the market is closed (or opened less than that ago) the
  check passes and says so. Market hours come from exchange_calendars (``calendar``,
  default XNYS; ``24/7`` for the simulated gateway, which trades around the clock).
- ``gaps`` (bars_5s): per symbol, the 5-second slots missing between consecutive bars in
  the last ``window_minutes`` and after its last bar up to now (a symbol that stopped
  getting bars), counting only open-market time; fails when a symbol misses more than
  ``gap_max_missing`` slots.
- ``ohlc_sane`` (bars_5s and each rollup): no bar with low > open/close, open/close > high,
  a non-positive or infinite price, or a negative volume.
- ``no_duplicates`` (quotes, bars_5s and each rollup): ``count(*)`` equals the number of
  distinct keys.
- ``dlq_depth`` (quotes, bars_5s): records of that kind waiting in the dead-letter spool
  at most ``dlq_max_depth``.
- ``matches_source`` (each rollup): the rollup rows of recent closed partitions still
  equal a recomputation from the 5-second bars (a late bar makes them stale: re-materialize
  the partitions listed in the metadata).

Raw-table checks look at the last ``window_minutes``; rollup checks at their last three
partitions. The ``health`` asset tabulates every stream of streams.yaml (state, rate,
committed, dead-lettered, last heartbeat, DLQ depth). The job ``mdp_health`` (the health
asset and every check, in one process) runs on the schedule ``mdp_health_schedule``
(``MDP_CHECK_CRON``, default every 5 minutes, RUNNING by default).
"""

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from mdp_core.calendars import open_intervals
from mdp_core.dlq import DeadLetterRecord
from mdp_core.settings import CheckSettings, RollupSettings
from mdp_core.store.database import Database
from mdp_core.store.rollups import rollup_mismatches
from mdp_core.streams import StreamsConfigError
from mdp_dagster.assets import BARS_5S, QUOTES
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.rollups import PARTITION_LENGTH, ROLLUP_KEYS
from mdp_dagster.streaming import load_stream_specs
from mdp_dagster.supervisor import SupervisorPolicy

__all__ = [
    "HEALTH_KEY",
    "build_health_defs",
    "defs",
    "open_intervals",
]

HEALTH_KEY = dg.AssetKey(["mdp", "health"])
SLOT = timedelta(seconds=5)
SAMPLE_ROWS = 10  # bad rows / duplicate keys / gaps listed in a check's metadata
RUN_TAGS = {"mdp/kind": "health"}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# -- market hours ---------------------------------------------------------------------------


def _open_throughout(calendar: str, start: datetime, end: datetime) -> bool:
    spans = open_intervals(calendar, start, end)
    covered = sum((hi - lo for lo, hi in spans), timedelta())
    return covered >= end - start


# -- SQL (identifiers are constants; values are parameters) ---------------------------------

_NEWEST = {
    "quotes": "SELECT max(ts) FROM mdp.quotes WHERE ts >= $1",
    "bars_5s": "SELECT max(ts) FROM mdp.bars WHERE resolution = '5s' AND ts >= $1",
}

# Each bar with the next one of its symbol, or the window's end after its last bar (so a
# symbol that stopped getting bars shows a gap up to now); only gaps of a slot or more.
_GAPS_SQL = """
SELECT symbol, ts, next_ts
FROM (
    SELECT symbol, ts, coalesce(lead(ts) OVER (PARTITION BY symbol ORDER BY ts), $2) AS next_ts
    FROM mdp.bars
    WHERE resolution = '5s' AND ts >= $1 AND ts < $2
) g
WHERE next_ts - ts > interval '5 seconds'
"""
_SYMBOLS_5S_SQL = """
SELECT count(DISTINCT symbol) FROM mdp.bars WHERE resolution = '5s' AND ts >= $1 AND ts < $2
"""

# A bar is sane when 0 < low <= open, close <= high < Infinity and 0 <= volume < Infinity
# (PostgreSQL sorts NaN above Infinity, so NaN fails too). $1 resolution, $2 start, $3 end.
_OHLC_COUNT_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE NOT (low > 0 AND low <= least(open, close)
                                   AND greatest(open, close) <= high AND high < 'Infinity'
                                   AND volume >= 0 AND volume < 'Infinity'))  AS bad
FROM mdp.bars WHERE resolution = $1 AND ts >= $2 AND ts < $3
"""
_OHLC_SAMPLE_SQL = """
SELECT symbol, ts, open, high, low, close, volume
FROM mdp.bars
WHERE resolution = $1 AND ts >= $2 AND ts < $3
  AND NOT (low > 0 AND low <= least(open, close) AND greatest(open, close) <= high
           AND high < 'Infinity' AND volume >= 0 AND volume < 'Infinity')
ORDER BY ts DESC
LIMIT 10
"""

# $1 start, $2 end (quotes); $1 start, $2 end, $3 resolution (bars).
_DUPLICATES_SQL = {
    "quotes": """
        SELECT count(*) AS total, count(DISTINCT (symbol, ts)) AS keys
        FROM mdp.quotes WHERE ts >= $1 AND ts < $2
    """,
    "bars": """
        SELECT count(*) AS total, count(DISTINCT (symbol, resolution, ts)) AS keys
        FROM mdp.bars WHERE ts >= $1 AND ts < $2 AND resolution = $3
    """,
}
_DUPLICATE_KEYS_SQL = {
    "quotes": """
        SELECT symbol, ts, count(*) AS n FROM mdp.quotes
        WHERE ts >= $1 AND ts < $2
        GROUP BY symbol, ts HAVING count(*) > 1 ORDER BY n DESC, ts DESC LIMIT 10
    """,
    "bars": """
        SELECT symbol, ts, count(*) AS n FROM mdp.bars
        WHERE ts >= $1 AND ts < $2 AND resolution = $3
        GROUP BY symbol, ts HAVING count(*) > 1 ORDER BY n DESC, ts DESC LIMIT 10
    """,
}

_LATEST_HEARTBEATS_SQL = """
SELECT DISTINCT ON (stream) stream, run_id, ts, counters
FROM mdp.stream_heartbeats
WHERE stream = ANY($1::text[])
ORDER BY stream, ts DESC
"""


# -- check logic (plain functions of the database and the time) -----------------------------


def _sql_for(queries: dict[str, str], table: str) -> str:
    """The query for ``table``; ``ValueError`` naming the known tables for any other name."""
    try:
        return queries[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}: expected one of {', '.join(queries)}") from None


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat() if t is not None else "-"


async def check_freshness(
    db: Database, table: str, now: datetime, settings: CheckSettings
) -> dg.AssetCheckResult:
    """``fresh``: see the module docstring. ``table`` is ``quotes`` or ``bars_5s``."""
    threshold = timedelta(minutes=settings.freshness_minutes)
    newest = await db.pool.fetchval(_sql_for(_NEWEST, table), now - timedelta(days=1))
    lag = (now - newest).total_seconds() if newest is not None else None
    market_open = _open_throughout(settings.calendar, now - threshold, now)
    meta: dict[str, Any] = {
        "newest_ts": _iso(newest) if newest is not None else "none in the last day",
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
        "window_start": _iso(start),
        "window_minutes": settings.window_minutes,
        "max_missing_per_symbol": settings.gap_max_missing,
        "calendar": settings.calendar,
    }
    if not spans:
        meta["note"] = f"market closed ({settings.calendar}) during the whole window"
        return dg.AssetCheckResult(passed=True, metadata=meta)
    rows = await db.pool.fetch(_GAPS_SQL, start, now)
    symbols = int(await db.pool.fetchval(_SYMBOLS_5S_SQL, start, now))
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
            _md_table(["symbol", "missing 5s slots"], worst) if worst else "no gaps"
        ),
        "largest_gaps": dg.MetadataValue.md(
            _md_table(
                ["symbol", "missing", "from", "to (next bar or window end)"],
                [(s, n, _iso(a), _iso(b)) for n, s, a, b in gaps[:SAMPLE_ROWS]],
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
    counts = await db.pool.fetchrow(_OHLC_COUNT_SQL, resolution, start, end)
    assert counts is not None
    meta: dict[str, Any] = {
        "window_start": _iso(start),
        "window_end": _iso(end),
        "rows_checked": int(counts["total"]),
        "bad_rows": int(counts["bad"]),
    }
    if counts["bad"]:
        sample = await db.pool.fetch(_OHLC_SAMPLE_SQL, resolution, start, end)
        meta["sample"] = dg.MetadataValue.md(
            _md_table(
                ["symbol", "ts", "open", "high", "low", "close", "volume"],
                [(r["symbol"], _iso(r["ts"]), *list(r.values())[2:]) for r in sample],
            )
        )
    return dg.AssetCheckResult(passed=counts["bad"] == 0, metadata=meta)


async def check_duplicates(
    db: Database, table: str, resolution: str | None, start: datetime, end: datetime
) -> dg.AssetCheckResult:
    """``no_duplicates``: ``table`` is ``quotes`` or ``bars`` (with ``resolution``)."""
    args = (start, end) if table == "quotes" else (start, end, resolution)
    counts = await db.pool.fetchrow(_sql_for(_DUPLICATES_SQL, table), *args)
    assert counts is not None
    extra = int(counts["total"]) - int(counts["keys"])
    meta: dict[str, Any] = {
        "window_start": _iso(start),
        "window_end": _iso(end),
        "rows_checked": int(counts["total"]),
        "duplicate_rows": extra,
    }
    if extra:
        keys = await db.pool.fetch(_sql_for(_DUPLICATE_KEYS_SQL, table), *args)
        meta["duplicate_keys"] = dg.MetadataValue.md(
            _md_table(
                ["symbol", "ts", "copies"], [(r["symbol"], _iso(r["ts"]), r["n"]) for r in keys]
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
        "oldest_failure": _iso(oldest),
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
        "window_start": _iso(start),
        "window_end": _iso(end),
        "mismatches": total,
    }
    if found:
        by_kind = Counter(m.kind for m in found)
        meta["by_kind"] = dg.MetadataValue.json(dict(by_kind))
        meta["sample"] = dg.MetadataValue.md(
            _md_table(["symbol", "ts", "kind"], [(m.symbol, _iso(m.ts), m.kind) for m in found])
        )
        meta["note"] = "re-materialize the partitions of these windows (idempotent) to fix"
    return dg.AssetCheckResult(passed=total == 0, metadata=meta)


# -- the health asset -----------------------------------------------------------------------

HEALTH_COLUMNS = [
    dg.TableColumn("stream", "string"),
    dg.TableColumn("enabled", "bool"),
    dg.TableColumn("mode", "string"),
    dg.TableColumn("provider", "string"),
    dg.TableColumn("symbols", "int"),
    dg.TableColumn("state", "string", description="running, stale or stopped"),
    dg.TableColumn("last_heartbeat", "string"),
    dg.TableColumn("heartbeat_age_s", "float"),
    dg.TableColumn("rate", "float", description="records committed per second"),
    dg.TableColumn("received", "int", description="records counted at the provider's edge"),
    dg.TableColumn("committed", "int"),
    dg.TableColumn("dead_lettered", "int"),
    dg.TableColumn("dropped", "int", description="by a named policy (conflate, ...)"),
    dg.TableColumn("dlq_depth", "int", description="records of this stream in the DLQ"),
    dg.TableColumn("run_id", "string"),
    dg.TableColumn("error", "string"),
]


@dataclass(frozen=True)
class Heartbeat:
    run_id: str
    ts: datetime
    counters: dict[str, Any]


def stream_state(heartbeat: Heartbeat | None, now: datetime, stale_after: float) -> str:
    """``running`` (fresh heartbeat of a live pipeline), ``stale`` (a live pipeline's last
    heartbeat is older than ``stale_after`` seconds) or ``stopped`` (none, or it ended)."""
    if heartbeat is None or heartbeat.counters.get("state") in ("finished", "failed"):
        return "stopped"
    if (now - heartbeat.ts).total_seconds() > stale_after:
        return "stale"
    return "running"


async def latest_heartbeats(db: Database, streams: Sequence[str]) -> dict[str, Heartbeat]:
    rows = await db.pool.fetch(_LATEST_HEARTBEATS_SQL, list(streams))
    out: dict[str, Heartbeat] = {}
    for r in rows:
        counters = r["counters"]
        counters = json.loads(counters) if isinstance(counters, str) else dict(counters)
        out[r["stream"]] = Heartbeat(r["run_id"], r["ts"], counters)
    return out


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def health_rows(
    specs: Sequence[Any],
    heartbeats: dict[str, Heartbeat],
    dlq_by_stream: Counter[str],
    now: datetime,
    stale_after: float,
) -> list[dict[str, Any]]:
    """One row per stream of streams.yaml (``specs``: ``StreamSpec``)."""
    rows = []
    for spec in specs:
        hb = heartbeats.get(spec.name)
        c = hb.counters if hb else {}
        rows.append(
            {
                "stream": spec.name,
                "enabled": spec.enabled,
                "mode": spec.mode,
                "provider": spec.provider,
                "symbols": len(spec.symbols),
                "state": stream_state(hb, now, stale_after),
                "last_heartbeat": _iso(hb.ts) if hb else "-",
                "heartbeat_age_s": round((now - hb.ts).total_seconds(), 1) if hb else None,
                "rate": float(c.get("rate") or 0.0),
                "received": _int(c.get("received")),
                "committed": _int(c.get("committed")),
                "dead_lettered": _int(c.get("dead_lettered")),
                "dropped": _int(c.get("dropped_total")),
                "dlq_depth": dlq_by_stream.get(spec.name, 0),
                "run_id": hb.run_id if hb else "-",
                "error": str(c.get("error") or ""),
            }
        )
    return rows


def health_metadata(rows: list[dict[str, Any]], dlq_depth: int, quarantined: int) -> dict[str, Any]:
    states = Counter(r["state"] for r in rows)
    table = dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in rows],
        schema=dg.TableSchema(columns=HEALTH_COLUMNS),
    )
    md_cols = ["stream", "state", "last_heartbeat", "rate", "committed", "dead_lettered",
               "dlq_depth", "error"]  # fmt: skip
    return {
        "streams": table,
        "summary": dg.MetadataValue.md(
            _md_table(md_cols, [[r[c] for c in md_cols] for r in rows]) if rows else "no streams"
        ),
        "streams_total": len(rows),
        "running": states.get("running", 0),
        "stale": states.get("stale", 0),
        "stopped": states.get("stopped", 0),
        "dlq_depth": dlq_depth,
        "dlq_quarantined": quarantined,
    }


# -- definitions ----------------------------------------------------------------------------

Span = Callable[[], tuple[datetime, datetime]]


def _fresh_check(spec: dg.AssetSpec, table: str, cfg: CheckSettings, clock: Clock) -> Any:
    @dg.asset_check(
        asset=spec.key,
        name="fresh",
        description=f"While the market ({cfg.calendar}) is open, the newest row is at most "
        f"{cfg.freshness_minutes:g} minutes old.",
    )
    def fresh(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_freshness(db, table, clock(), cfg))

    return fresh


def _gaps_check(cfg: CheckSettings, clock: Clock) -> Any:
    @dg.asset_check(
        asset=BARS_5S.key,
        name="gaps",
        description=f"Per symbol, at most {cfg.gap_max_missing} missing 5-second slots in the "
        f"last {cfg.window_minutes:g} minutes of open-market time.",
    )
    def gaps(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_gaps(db, clock(), cfg))

    return gaps


def _ohlc_check(key: dg.AssetKey, resolution: str, span: Span) -> Any:
    @dg.asset_check(
        asset=key,
        name="ohlc_sane",
        description="Every recent bar has 0 < low <= open, close <= high and 0 <= volume.",
    )
    def ohlc_sane(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_ohlc(db, resolution, *span()))

    return ohlc_sane


def _duplicates_check(key: dg.AssetKey, table: str, resolution: str | None, span: Span) -> Any:
    what = "(symbol, ts)" if table == "quotes" else "(symbol, resolution, ts)"

    @dg.asset_check(
        asset=key,
        name="no_duplicates",
        description=f"No two recent rows share a key {what}.",
    )
    def no_duplicates(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_duplicates(db, table, resolution, *span()))

    return no_duplicates


def _dlq_check(spec: dg.AssetSpec, kind: str, cfg: CheckSettings) -> Any:
    @dg.asset_check(
        asset=spec.key,
        name="dlq_depth",
        description=f"At most {cfg.dlq_max_depth} {kind} records wait in the dead-letter spool.",
    )
    def dlq_depth(dlq: DlqResource) -> dg.AssetCheckResult:
        queue = dlq.queue()
        quarantined = len(queue.list(kind=kind, quarantined=True))
        return check_dlq_depth(queue.list(kind=kind), quarantined, kind, cfg)

    return dlq_depth


def _matches_check(key: dg.AssetKey, resolution: str, span: Span) -> Any:
    @dg.asset_check(
        asset=key,
        name="matches_source",
        description="Rollup rows of the last three closed partitions equal a recomputation "
        "from the 5-second bars (a late source bar makes them stale).",
    )
    def matches_source(store: StoreResource) -> dg.AssetCheckResult:
        return store.run(lambda db: check_matches_source(db, resolution, *span()))

    return matches_source


def _health_asset(clock: Clock, stale_after: float) -> dg.AssetsDefinition:
    @dg.asset(
        key=HEALTH_KEY,
        group_name="health",
        kinds={"postgres"},
        description="Every stream of streams.yaml: state (running / stale / stopped, from its "
        "last heartbeat), rate, committed, dead-lettered, last heartbeat, DLQ depth.",
    )
    def health(
        context: AssetExecutionContext, store: StoreResource, dlq: DlqResource
    ) -> dg.MaterializeResult:
        try:
            specs = load_stream_specs()
        except StreamsConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        queue = dlq.queue()
        pending = queue.list()
        heartbeats = store.run(lambda db: latest_heartbeats(db, [s.name for s in specs]))
        by_stream = Counter(r.stream for r in pending)
        rows = health_rows(specs, heartbeats, by_stream, clock(), stale_after)
        meta = health_metadata(rows, len(pending), queue.count(quarantined=True))
        context.log.info(
            f"{meta['streams_total']} streams: {meta['running']} running, {meta['stale']} "
            f"stale, {meta['stopped']} stopped; DLQ depth {len(pending)}"
        )
        return dg.MaterializeResult(metadata=meta)

    return health


def _last_closed_partitions(length: timedelta, grace: timedelta, clock: Clock) -> Span:
    """The last three partitions whose window closed ``grace`` ago (the rollup sensor has
    had its chance to roll them up)."""

    def span() -> tuple[datetime, datetime]:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        end = epoch + ((clock() - grace - epoch) // length) * length
        return end - 3 * length, end

    return span


def build_health_defs(
    settings: CheckSettings | None = None,
    *,
    clock: Clock = _utc_now,
    stale_after: float | None = None,
) -> dg.Definitions:
    """The checks, the health asset, their job and schedule (resources: ``store``, ``dlq``).

    ``stale_after``: seconds after which a live stream's heartbeat is stale (default: the
    supervisor's threshold). The market calendar is built by the first check that needs it
    (not here: every run worker imports the definitions); an unknown name fails the
    ``fresh`` and ``gaps`` checks with a ``ValueError`` naming it."""
    cfg = settings or CheckSettings()
    stale = stale_after if stale_after is not None else SupervisorPolicy().stale_after
    grace = timedelta(seconds=RollupSettings().grace_seconds)
    window = timedelta(minutes=cfg.window_minutes)

    def recent() -> tuple[datetime, datetime]:
        now = clock()
        return now - window, now

    checks = [
        _fresh_check(QUOTES, "quotes", cfg, clock),
        _duplicates_check(QUOTES.key, "quotes", None, recent),
        _dlq_check(QUOTES, "quote", cfg),
        _fresh_check(BARS_5S, "bars_5s", cfg, clock),
        _gaps_check(cfg, clock),
        _ohlc_check(BARS_5S.key, "5s", recent),
        _duplicates_check(BARS_5S.key, "bars", "5s", recent),
        _dlq_check(BARS_5S, "bar", cfg),
    ]
    for resolution, key in ROLLUP_KEYS.items():
        span = _last_closed_partitions(PARTITION_LENGTH[resolution], grace, clock)
        checks += [
            _ohlc_check(key, resolution, span),
            _duplicates_check(key, "bars", resolution, span),
            _matches_check(key, resolution, span),
        ]
    health = _health_asset(clock, stale)
    job = dg.define_asset_job(
        "mdp_health",
        selection=dg.AssetSelection.assets(health) | dg.AssetSelection.checks(*checks),
        executor_def=dg.in_process_executor,  # two dozen small queries: no process each
        tags=RUN_TAGS,
        description="The health asset and every asset check (scheduled).",
    )
    schedule = dg.ScheduleDefinition(
        name="mdp_health_schedule",
        job=job,
        cron_schedule=cfg.cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Materializes health and runs every asset check.",
    )
    return dg.Definitions(assets=[health], asset_checks=checks, jobs=[job], schedules=[schedule])


defs = build_health_defs()
