"""The soak's end accounting: per stream, from the gateway to the table, and the checks.

Once every stream has stopped and drained and the DLQ has been replayed, ``account``
compares, per stream:

- the gateway: 5-second bars sent live and from history (``stats()``), and the bars that
  exist over the periods the stream was subscribed (``bars_between``); tick bursts sent;
- the source: records it handed to the pipeline (the tap of in-process streams, the
  ``received`` counter of ``mdp stream`` runs, counted at the provider's edge), poison rows
  pushed after them;
- each pipeline run: received == committed + dead-lettered + dropped (by policy), nothing
  pending (conservation);
- the DLQ: records spooled by the stream, replayed, quarantined (poison), still failing;
- the table, against ground truth rather than its own primary key: for bars, the bars
  missing over the covered periods and rows that differ from (or are unknown to) the
  gateway's model; for quotes, complete rows whose values no tick of the gateway had; for
  in-process streams, every row against the record the source delivered for its key;
  poison rows.

Each check becomes a ``Check`` (ok, message); the soak fails if any does not hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import markdown_table
from benchmarks.soak_faults import Event
from benchmarks.soak_streams import POISON_SOURCE, CliStream, InProcessStream, RunRecord
from mdp_core.dlq import DeadLetterQueue, DeadLetterRecord
from mdp_core.gateway import SimBar, SimulatedGateway
from mdp_core.store.database import Database

__all__ = ["Check", "DlqCounts", "StreamAccount", "account", "poison_rows_in_table", "render"]

Stream = InProcessStream | CliStream
BAR = 5

# Identifiers are code constants; values are parameters.
_BAR_ROWS_SQL = (
    "SELECT symbol, ts, open, high, low, close, volume, vwap, trade_count FROM mdp.bars "
    "WHERE symbol = ANY($1::text[]) AND resolution = '5s' AND source <> $2"
)
_QUOTE_ROWS_SQL = (
    "SELECT symbol, ts, bid, ask, last, bid_size, ask_size, last_size FROM mdp.quotes "
    "WHERE symbol = ANY($1::text[]) AND source <> $2"
)
_HEARTBEATS_SQL = (
    "SELECT count(*) AS n, (array_agg(counters ORDER BY ts DESC))[1] AS last "
    "FROM mdp.stream_heartbeats WHERE stream = $1"
)
_POISON_ROWS_SQL = {
    "bars": "SELECT count(*) FROM mdp.bars WHERE source = $1 AND symbol = ANY($2::text[])",
    "quotes": "SELECT count(*) FROM mdp.quotes WHERE source = $1 AND symbol = ANY($2::text[])",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DlqCounts:
    """A stream's DLQ records before and after the final replay."""

    spooled: int = 0  # records of the stream in the spool before the replay
    spooled_poison: int = 0
    replayed: int = 0  # left the spool by committing
    quarantined_poison: int = 0
    quarantined_other: int = 0
    still_failing: int = 0  # real records still in the spool after the replay


@dataclass
class Window:
    """A stated period excluded from the missing-bars check, and why."""

    start: float
    end: float
    reason: str
    bars: int = 0  # bars the gateway has in it (all symbols)
    present: int = 0  # of them, in the table anyway

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": _iso(self.start),
            "to": _iso(self.end),
            "reason": self.reason,
            "bars": self.bars,
            "present": self.present,
        }


@dataclass
class StreamAccount:
    """Everything counted for one stream."""

    name: str
    mode: str
    runner: str
    client_id: int
    symbols: list[str]
    runs: list[dict[str, Any]]
    gateway_sent: int = 0  # bars: live bars sent; quotes: tick bursts sent
    gateway_history_bars: int = 0  # bars sent in historical replies (backfill)
    received: int = 0  # real records the source handed to the pipeline
    poison: int = 0
    committed: int = 0
    new_rows: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)
    dlq: DlqCounts = field(default_factory=DlqCounts)
    rows: int = 0
    rows_differing: int | None = None  # in-process: rows unlike the record delivered for their key
    unknown_quotes: int = 0  # quote rows holding a bid, ask or trade no gateway tick had
    unknown_quote_examples: list[str] = field(default_factory=list)
    incomplete_quotes: int = 0  # quote rows missing a side (right after a reconnect): not checked
    poison_rows_in_table: int = 0
    expected_rows: int | None = None  # count check (subprocess streams)
    keys_missing: int | None = None  # received, not in the table nor the DLQ (in-process)
    keys_extra: int | None = None  # in the table, never received (in-process)
    covered: list[tuple[float, float]] = field(default_factory=list)
    expected_bars: int = 0  # gateway bars over the covered periods
    missing_bars: int = 0
    missing_examples: list[str] = field(default_factory=list)
    mismatched_bars: int = 0  # rows whose values differ from the gateway's bar
    unknown_bars: int = 0  # rows at times the gateway has no bar
    excluded: list[Window] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # summed IBKR source counters
    heartbeats: int = 0
    last_heartbeat: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["covered"] = [{"from": _iso(a), "to": _iso(b)} for a, b in self.covered]
        data["excluded"] = [w.to_dict() for w in self.excluded]
        return data


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _floor(t: float) -> int:
    return math.floor(t / BAR) * BAR


# -- gathering ------------------------------------------------------------------------


def dlq_before(dlq: DeadLetterQueue, names: list[str]) -> dict[str, DlqCounts]:
    """Per stream: what the spool holds before the replay."""
    out = {name: DlqCounts() for name in names}
    for record in dlq.list():
        counts = out.get(record.stream)
        if counts is not None:
            counts.spooled += 1
            counts.spooled_poison += _is_poison(record)
    return out


def dlq_after(dlq: DeadLetterQueue, counts: dict[str, DlqCounts]) -> None:
    """Fill in what the replay did, per stream (from the spool and the quarantine)."""
    remaining: dict[str, int] = dict.fromkeys(counts, 0)
    for record in dlq.list():
        if record.stream in remaining:
            remaining[record.stream] += 1
            if not _is_poison(record):
                counts[record.stream].still_failing += 1
    for record in dlq.list(quarantined=True):
        c = counts.get(record.stream)
        if c is not None:
            if _is_poison(record):
                c.quarantined_poison += 1
            else:
                c.quarantined_other += 1
    for name, c in counts.items():
        c.replayed = c.spooled - remaining[name] - c.quarantined_poison - c.quarantined_other


def _is_poison(record: DeadLetterRecord) -> bool:
    return record.source == POISON_SOURCE or record.item.get("source") == POISON_SOURCE


def _bar_values(b: SimBar) -> tuple[Any, ...]:
    bar = b.to_bar()
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.vwap, bar.trade_count)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9):
            return False
    return True


def coverage(runs: list[RunRecord]) -> tuple[list[tuple[float, float]], list[Window]]:
    """The periods whose bars must all be in the table, and the stated window after them.
    A run covers ``[its subscription, its stop)``: every bar that ended by the time the stop
    was requested (the soak waits until the stream holds the last of them before it stops
    it). The gap between two runs is covered too: the next run resumes where the table ends
    and backfills it. The last window runs to infinity (``math.inf``)."""
    covered: list[tuple[float, float]] = []
    excluded: list[Window] = []
    usable = [r for r in runs if r.subscribed_sim is not None and r.stop_sim is not None]
    for i, run in enumerate(usable):
        assert run.subscribed_sim is not None and run.stop_sim is not None
        begin, end = _floor(run.subscribed_sim), _floor(run.stop_sim)
        if end > begin:
            covered.append((begin, end))
        if i == len(usable) - 1:
            reason = "after the final stop was requested (the bar in progress, and later ones)"
            excluded.append(Window(max(begin, end), math.inf, reason))
        else:
            nxt = usable[i + 1]
            assert nxt.subscribed_sim is not None
            gap = (max(begin, end), _floor(nxt.subscribed_sim))
            if gap[1] > gap[0]:
                covered.append(gap)  # backfilled by the next run (it resumes from the table)
    return covered, excluded


async def poison_rows_in_table(db: Database, mode: str, symbols: list[str]) -> int:
    """Poison rows of ``symbols`` in the table of ``mode`` (``bars`` or ``quotes``)."""
    return int(await db.pool.fetchval(_POISON_ROWS_SQL[mode], POISON_SOURCE, symbols))


async def account(
    streams: list[Stream],
    gw: SimulatedGateway,
    db: Database,
    dlq_counts: dict[str, DlqCounts],
) -> list[StreamAccount]:
    """The per-stream accounting (after the streams stopped and the DLQ was replayed)."""
    stats = gw.stats()["symbols"]
    out = []
    for stream in streams:
        s = stream.sdef
        runs = stream.runs
        acc = StreamAccount(
            s.name, s.mode, s.runner, s.client_id, list(s.symbols), [r.to_dict() for r in runs]
        )
        acc.dlq = dlq_counts[s.name]
        for sym in s.symbols:
            per = stats.get(sym, {})
            acc.gateway_sent += per.get("bars" if s.mode == "bars" else "ticks", 0)
            acc.gateway_history_bars += per.get("history_bars", 0)
        received = 0
        for run in runs:
            c = run.counters
            received += int(c.get("received", 0))
            acc.committed += int(c.get("committed", 0))
            acc.new_rows += int(c.get("new_rows", 0))
            acc.dead_lettered += int(c.get("dead_lettered", 0))
            acc.dropped += int(c.get("dropped_total", 0))
            for policy, n in (c.get("dropped") or {}).items():
                acc.dropped_by[policy] = acc.dropped_by.get(policy, 0) + int(n)
            for key, value in (run.source_stats or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    acc.source[key] = acc.source.get(key, 0) + value
        if isinstance(stream, InProcessStream):
            acc.poison = len(stream.tap.poison_sent)
            acc.received = stream.tap.received
        else:
            acc.received = received
        beats = await db.pool.fetchrow(_HEARTBEATS_SQL, s.name)
        acc.heartbeats = int(beats["n"])
        acc.last_heartbeat = json.loads(beats["last"]) if beats["last"] else {}
        symbols = list(s.symbols)
        acc.poison_rows_in_table = await poison_rows_in_table(db, s.mode, symbols)
        stored: dict[tuple[Any, ...], tuple[Any, ...]]
        if s.mode == "bars":
            rows = await db.pool.fetch(_BAR_ROWS_SQL, symbols, POISON_SOURCE)
            stored = {(r["symbol"], "5s", r["ts"]): _bar_row(r) for r in rows}
            _check_bars(acc, gw, rows, runs)
        else:
            rows = await db.pool.fetch(_QUOTE_ROWS_SQL, symbols, POISON_SOURCE)
            stored = {(r["symbol"], r["ts"]): _quote_row(r) for r in rows}
            _check_quotes(acc, gw, rows, runs)
        acc.rows = len(rows)
        if isinstance(stream, InProcessStream):
            failing = {
                r.record().key for r in stream.pipeline.dlq.iter(stream=s.name) if not _is_poison(r)
            }
            delivered = stream.tap.values
            acc.keys_missing = len(delivered.keys() - stored.keys() - failing)
            acc.keys_extra = len(stored.keys() - delivered.keys())
            acc.rows_differing = sum(
                1 for k, v in stored.items() if k in delivered and not _same(v, delivered[k])
            )
        else:
            acc.expected_rows = acc.received - acc.dropped - acc.dlq.still_failing
        out.append(acc)
    return out


def _bar_row(r: Any) -> tuple[Any, ...]:
    return (r["open"], r["high"], r["low"], r["close"], r["volume"], r["vwap"], r["trade_count"])


def _quote_row(r: Any) -> tuple[Any, ...]:
    return (r["bid"], r["ask"], r["last"], r["bid_size"], r["ask_size"], r["last_size"])


def _check_quotes(
    acc: StreamAccount, gw: SimulatedGateway, rows: list[Any], runs: list[RunRecord]
) -> None:
    """Every stored quote's bid (with its size), ask (with its size) and last trade (with
    its size) must each be one the gateway's model has for its symbol over the soak.

    By sides, not whole states: a quote is the client's ticker after one socket read, and
    a read may end between the messages of one tick (a new bid, the old ask), so a quote
    can mix two consecutive ticks; it can never hold a value the gateway did not send.
    Quotes carry the client's receive time, so the match is by value."""
    times = [t for r in runs for t in (r.subscribed_sim, r.stop_sim) if t is not None]
    if not times or not rows:
        return
    begin, end = min(times) - 3600, max(times) + 3600
    sides: dict[str, tuple[set[Any], set[Any], set[Any]]] = {}
    for r in rows:
        bid, ask, last, bid_size, ask_size, last_size = _quote_row(r)
        if bid is None or ask is None:
            acc.incomplete_quotes += 1  # before a fresh subscription's first full update
        known = sides.get(r["symbol"])
        if known is None:
            ticks = gw.ticks_between(r["symbol"], begin, end)
            known = sides[r["symbol"]] = (
                {(t.bid, t.bid_size) for t in ticks},
                {(t.ask, t.ask_size) for t in ticks},
                {(t.last, t.last_size) for t in ticks},
            )
        got = ((bid, bid_size), (ask, ask_size), (last, last_size))
        if any(pair[0] is not None and pair not in k for pair, k in zip(got, known, strict=True)):
            acc.unknown_quotes += 1
            if len(acc.unknown_quote_examples) < 5:
                acc.unknown_quote_examples.append(f"{r['symbol']} {r['ts'].isoformat()} {got}")


def _check_bars(
    acc: StreamAccount,
    gw: SimulatedGateway,
    rows: list[Any],
    runs: list[RunRecord],
) -> None:
    acc.covered, acc.excluded = coverage(runs)
    by_symbol: dict[str, dict[int, tuple[Any, ...]]] = {sym: {} for sym in acc.symbols}
    for r in rows:
        by_symbol[r["symbol"]][int(r["ts"].timestamp())] = (
            r["open"], r["high"], r["low"], r["close"], r["volume"], r["vwap"], r["trade_count"]
        )  # fmt: skip
    last_row = max((max(t, default=0) for t in by_symbol.values()), default=0) + BAR
    for window in acc.excluded:
        if window.end == math.inf:  # up to the last row, received after the stop
            window.end = max(window.start + BAR, last_row)
    for sym, table in by_symbol.items():
        if table:  # every row must be one of the gateway's bars, with its values
            truth = {b.time: b for b in gw.bars_between(sym, min(table), max(table) + BAR)}
            for t, values in table.items():
                bar = truth.get(t)
                if bar is None:
                    acc.unknown_bars += 1
                elif not _same(values, _bar_values(bar)):
                    acc.mismatched_bars += 1
        for begin, end in acc.covered:
            for bar in gw.bars_between(sym, begin, end):
                acc.expected_bars += 1
                if bar.time not in table:
                    acc.missing_bars += 1
                    if len(acc.missing_examples) < 10:
                        acc.missing_examples.append(f"{sym} {_iso(bar.time)}")
        for window in acc.excluded:
            for bar in gw.bars_between(sym, window.start, window.end):
                window.bars += 1
                window.present += bar.time in table


# -- checks -----------------------------------------------------------------------------


def checks(
    accounts: list[StreamAccount],
    timeline: list[Event],
    streams: list[Stream],
) -> list[Check]:
    """Every invariant of the soak as a named check."""
    out: list[Check] = []
    for e in timeline:
        if not e.recovered:
            out.append(Check(f"fault {e.number} {e.kind}", False, e.note.strip()))
    for stream in streams:
        if isinstance(stream, CliStream) and stream.unexpected_exits:
            out.append(Check(f"{stream.sdef.name}: subprocess", False,
                             f"{stream.unexpected_exits} unexpected exit(s)"))  # fmt: skip
    for a in accounts:
        n = a.name
        for run in a.runs:
            c = run["counters"]
            detail = (
                f"run {run['run']}: received {c.get('received')} = committed "
                f"{c.get('committed')} + dead-lettered {c.get('dead_lettered')} + dropped "
                f"{c.get('dropped_total')} {c.get('dropped') or ''}; pending {c.get('pending')}"
            )
            if run["ended"] == "failed to start":
                # a child that exited before subscribing (gateway or database down then),
                # retried; it may have no summary when it failed before its pipeline ran
                ok = not c or (bool(run["balanced"]) and not c.get("received"))
                detail = f"run {run['run']} failed to start (retried): {run['error']}"
            else:
                ok = bool(run["balanced"]) and not run["error"]
                if run["error"]:
                    detail += f"; error: {run['error']}"
            out.append(Check(f"{n}: conservation", ok, detail))
        final = a.runs[-1]["counters"] if a.runs else {}
        beat = a.last_heartbeat
        out.append(Check(
            f"{n}: final heartbeat",
            beat.get("state") == "finished" and beat.get("committed") == final.get("committed"),
            f"{a.heartbeats} heartbeats; the last says state {beat.get('state')!r}, committed "
            f"{beat.get('committed')} (the final run committed {final.get('committed')})",
        ))  # fmt: skip
        if a.mode == "quotes":
            out.append(Check(
                f"{n}: quotes are the gateway's", a.unknown_quotes == 0,
                f"{a.unknown_quotes} rows hold a bid, ask or trade no gateway tick had "
                f"{a.unknown_quote_examples or ''} ({a.incomplete_quotes} rows with a side "
                "missing)",
            ))  # fmt: skip
        out.append(Check(
            f"{n}: dead-lettered == spooled", a.dead_lettered == a.dlq.spooled,
            f"counters say {a.dead_lettered} dead-lettered, the DLQ holds {a.dlq.spooled}",
        ))  # fmt: skip
        out.append(Check(
            f"{n}: poison isolated",
            a.dlq.spooled_poison == a.poison == a.dlq.quarantined_poison
            and a.poison_rows_in_table == 0,
            f"{a.poison} pushed, {a.dlq.spooled_poison} dead-lettered, "
            f"{a.dlq.quarantined_poison} quarantined by the replay, "
            f"{a.poison_rows_in_table} in the table",
        ))  # fmt: skip
        out.append(Check(
            f"{n}: DLQ replayed", a.dlq.still_failing == 0 and a.dlq.quarantined_other == 0,
            f"{a.dlq.replayed} replayed, {a.dlq.still_failing} still failing, "
            f"{a.dlq.quarantined_other} real records quarantined",
        ))  # fmt: skip
        if a.keys_missing is not None:
            out.append(Check(
                f"{n}: every delivered record stored, as delivered",
                a.keys_missing == 0 and a.keys_extra == 0 and a.rows_differing == 0,
                f"{a.received} delivered; {a.keys_missing} neither in the table nor the DLQ; "
                f"{a.keys_extra} rows never delivered; {a.rows_differing} rows differ from "
                "the record delivered for their key",
            ))  # fmt: skip
        if a.expected_rows is not None:
            out.append(Check(
                f"{n}: rows == received - dropped - still failing",
                a.rows == a.expected_rows,
                f"{a.rows} rows, expected {a.expected_rows}",
            ))  # fmt: skip
        if a.mode == "bars":
            examples = f" (e.g. {', '.join(a.missing_examples[:3])})" if a.missing_bars else ""
            out.append(Check(
                f"{n}: no missing bars", a.missing_bars == 0,
                f"{a.missing_bars} of {a.expected_bars} gateway bars missing over the covered "
                f"periods{examples}",
            ))  # fmt: skip
            out.append(Check(
                f"{n}: bars equal the gateway's", a.mismatched_bars == 0 and a.unknown_bars == 0,
                f"{a.mismatched_bars} rows differ, {a.unknown_bars} rows the gateway never had",
            ))  # fmt: skip
    return out


# -- rendering --------------------------------------------------------------------------


def render(
    config: dict[str, Any],
    timeline: list[Event],
    accounts: list[StreamAccount],
    results: list[Check],
) -> str:
    """The report as text: timeline, runs, accounting per stream, bars detail, checks."""
    lines = [
        f"# Soak: {config['minutes']:g} min, seed {config['seed']}, time compression "
        f"x{config['time_compression']:g}, {len(accounts)} streams",
        "",
        "## Fault timeline",
        "",
    ]
    lines.append(markdown_table(
        ["#", "planned s", "ran s", "sim time", "fault", "params", "took s", "recovered", "what"],
        [[e.number, f"{e.planned_at:.1f}", f"{e.ran_at:.1f}",
          datetime.fromtimestamp(e.sim_time, UTC).strftime("%H:%M:%S"), e.kind,
          " ".join(f"{k}={v}" for k, v in e.params.items()), f"{e.took:.1f}",
          "yes" if e.recovered else "NO", e.note] for e in timeline],
    ) if timeline else "(no faults)")  # fmt: skip
    lines += [
        "",
        "## Pipeline runs (conservation: received == committed + dead-lettered + dropped)",
        "",
    ]
    run_rows = []
    for a in accounts:
        for r in a.runs:
            c = r["counters"]
            drops = ", ".join(f"{k} {v}" for k, v in (c.get("dropped") or {}).items())
            run_rows.append([
                a.name, r["run"], r["ended"] or "-", c.get("received", "-"),
                c.get("committed", "-"), c.get("dead_lettered", "-"),
                f"{c.get('dropped_total', '-')}" + (f" ({drops})" if drops else ""),
                "yes" if r["balanced"] else "NO", "-" if r["exit_code"] is None else r["exit_code"],
            ])  # fmt: skip
    lines.append(markdown_table(
        ["stream", "run", "ended", "received", "committed", "dead-lettered", "dropped",
         "balanced", "exit"], run_rows))  # fmt: skip
    lines += ["", "## Accounting per stream", ""]
    lines.append(markdown_table(
        ["stream", "mode", "runner", "gateway sent", "received", "poison", "committed",
         "dead-lettered", "replayed", "quarantined", "dropped", "rows", "not the gateway's",
         "missing bars"],
        [[a.name, a.mode, a.runner, a.gateway_sent, a.received, a.poison, a.committed,
          a.dead_lettered, a.dlq.replayed, a.dlq.quarantined_poison + a.dlq.quarantined_other,
          a.dropped, a.rows,
          a.mismatched_bars + a.unknown_bars if a.mode == "bars" else a.unknown_quotes,
          a.missing_bars if a.mode == "bars" else "n/a"]
         for a in accounts],
    ))  # fmt: skip
    for a in accounts:
        lines += ["", f"### {a.name} ({a.mode}, {a.runner}, client {a.client_id}, "
                      f"{','.join(a.symbols)})"]  # fmt: skip
        if a.mode == "bars":
            lines.append(
                f"- gateway: {a.gateway_sent} live bars and {a.gateway_history_bars} history "
                f"bars (backfill) sent; {a.expected_bars} bars exist over the covered periods "
                f"{', '.join(f'{_iso(x)[11:19]}-{_iso(y)[11:19]}' for x, y in a.covered)} (sim)"
            )
            lines.append(
                f"- table: {a.rows} rows; missing {a.missing_bars}, differing from the gateway "
                f"{a.mismatched_bars}, unknown to the gateway {a.unknown_bars}"
            )
            for w in a.excluded:
                lines.append(
                    f"- excluded {_iso(w.start)[11:19]}-{_iso(w.end)[11:19]} (sim): {w.reason}: "
                    f"{w.bars} bars, {w.present} present anyway"
                )
        else:
            lines.append(
                f"- gateway: {a.gateway_sent} tick bursts sent to this client; the source made "
                f"{a.received} quotes from them (one per ticker update per socket read, "
                "unchanged updates skipped; nothing while disconnected or stopped, and IB "
                "cannot backfill quotes), so received <= sent is expected"
            )
            lines.append(
                f"- table: {a.rows} rows; {a.unknown_quotes} with a value no gateway tick had; "
                f"dropped by policy: {a.dropped_by or 'none'}"
            )
        if a.runner == "cli":
            ended = [r["ended"] for r in a.runs]
            lines.append(
                f"- mdp stream children: {len(ended)} runs ({ended.count('sigterm')} ended by "
                f"SIGTERM, {ended.count('failed to start')} failed to start and were retried, "
                f"{ended.count('exited on its own')} exited on their own)"
            )
        if a.source:
            keys = ("reconnects", "resubscribes", "backfill_requests", "backfilled_bars",
                    "duplicates_dropped", "invalid", "pauses")  # fmt: skip
            shown = ", ".join(f"{k} {a.source.get(k, 0)}" for k in keys)
            lines.append(f"- source: {shown}")
        lines.append(
            f"- DLQ: {a.dlq.spooled} spooled ({a.dlq.spooled_poison} poison), "
            f"{a.dlq.replayed} replayed, {a.dlq.quarantined_poison} poison quarantined, "
            f"{a.dlq.still_failing} still failing"
        )
    failed = [c for c in results if not c.ok]
    lines += ["", f"## Checks: {len(results) - len(failed)} of {len(results)} hold", ""]
    for c in results:
        lines.append(f"- [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    lines.append("")
    lines.append(
        "SOAK PASSED" if not failed else f"SOAK FAILED: {len(failed)} check(s) do not hold"
    )
    return "\n".join(lines)
