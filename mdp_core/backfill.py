"""Backfill: fill ``mdp.bars`` with IB's historical bars, following IB's pacing rules, asking
only for what the table does not hold yet.

    async with Database.connect() as db:
        result = await Backfill(db, ["AAPL", "ES:CONTFUT:CME"], start, end, "1m").run()

Guarantees:

- **asks only for what is missing.** The range is cut to the exchange's regular sessions
  (``rth=True``, the default; exchange_calendars, per instrument) or kept whole; what
  ``mdp.bars`` already holds and what an earlier backfill recorded in
  ``mdp.backfill_ranges`` (including ranges IB had no data for) is taken out; the rest is
  planned in requests sized to IB's limits per bar size (``plan_requests``). A second run
  asks for nothing; a run killed halfway asks, when started again, only for the rest.
- **IB's pacing rules are kept** (``HistoryPacer``: at most 60 requests in any 10 minutes, no
  identical request within 15 s, at most 5 for one contract within 2 s). Should IB still
  answer "pacing violation" (another client on the same account), the request waits and is
  asked again, at most ``max_pacing_retries`` times.
- **"no data" is an answer**: recorded as an empty range, never asked again.
- **bars go through the WriteCoordinator**: batches, retries, the dead-letter spool;
  ``received == committed + dead_lettered + dropped`` once done. A range is recorded as
  fetched only once every one of its bars is committed, so bars that went to the spool are
  asked for again by the next run (the spool's replay and the new answer are the same rows).
- only complete bars are fetched: the range ends at the bar in progress on IB's clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mdp_core.calendars import get_calendar, open_intervals
from mdp_core.coordinator import (
    CoordinatorSettings,
    CoordinatorStats,
    RetryPolicy,
    WriteCoordinator,
)
from mdp_core.dlq import DeadLetterQueue
from mdp_core.instruments import parse_instrument
from mdp_core.logs import logger
from mdp_core.models import Bar, parse_resolution, resolution_seconds
from mdp_core.providers.base import ProviderError, normalize_symbols
from mdp_core.providers.ibkr.contracts import ib_contract, what_to_show_for
from mdp_core.providers.ibkr.history import (
    HistoryRequest,
    HistoryRequestError,
    PacingViolation,
    bar_size_setting,
    fetch_history,
    plan_requests,
)
from mdp_core.providers.ibkr.pacing import HistoryPacer, PacingRules
from mdp_core.settings import IBKRSettings
from mdp_core.store.database import Database
from mdp_core.store.sinks import BarsSink
from mdp_core.store.write_path import WritePathCounts, WritePathPolicy

__all__ = [
    "Backfill",
    "BackfillProgress",
    "BackfillResult",
    "SymbolReport",
    "covered_spans",
    "subtract_spans",
]

Span = tuple[datetime, datetime]

#: Backfills retry a failing batch for about 20 s before spooling it (like streams).
BACKFILL_RETRY_POLICY = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=5.0)

# Islands of consecutive bars: (epoch / step) - row_number is constant along a run of
# consecutive windows. $1 symbol, $2 resolution, $3 start, $4 end, $5 step seconds.
_ISLANDS_SQL = """
SELECT min(ts) AS lo, max(ts) AS hi
FROM (
    SELECT ts,
           floor(extract(epoch FROM ts) / $5)::bigint - row_number() OVER (ORDER BY ts) AS grp
    FROM mdp.bars
    WHERE symbol = $1 AND resolution = $2 AND ts >= $3 AND ts < $4
) runs
GROUP BY grp
ORDER BY lo
"""
# Ranges fetched before; an all-hours plan ($6 false) does not count regular-hours ones.
_RANGES_SQL = """
SELECT start_ts, end_ts
FROM mdp.backfill_ranges
WHERE symbol = $1 AND resolution = $2 AND what_to_show = $5
  AND (NOT use_rth OR $6) AND start_ts < $4 AND end_ts > $3
ORDER BY start_ts
"""
_RECORD_SQL = """
INSERT INTO mdp.backfill_ranges
    (symbol, resolution, what_to_show, use_rth, start_ts, end_ts, bars)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[],
                     $6::timestamptz[], $7::integer[])
ON CONFLICT (symbol, resolution, what_to_show, use_rth, start_ts) DO UPDATE SET
    end_ts = greatest(mdp.backfill_ranges.end_ts, EXCLUDED.end_ts),
    bars = EXCLUDED.bars,
    fetched_at = now()
"""


# -- spans -------------------------------------------------------------------------------


def _merge(spans: Iterable[Span]) -> list[Span]:
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        elif hi > lo:
            out.append((lo, hi))
    return out


def subtract_spans(spans: Sequence[Span], covered: Sequence[Span]) -> list[Span]:
    """The parts of ``spans`` outside every span of ``covered`` (both half-open), sorted."""
    cut = _merge(covered)
    out: list[Span] = []
    for lo, hi in _merge(spans):
        for c_lo, c_hi in cut:
            if c_hi <= lo or c_lo >= hi:
                continue
            if c_lo > lo:
                out.append((lo, c_lo))
            lo = max(lo, c_hi)
            if lo >= hi:
                break
        if lo < hi:
            out.append((lo, hi))
    return out


def _intersects(spans: Sequence[Span], lo: datetime, hi: datetime) -> bool:
    return any(s_lo < hi and lo < s_hi for s_lo, s_hi in spans)


async def covered_spans(
    db: Database,
    symbol: str,
    resolution: str,
    start: datetime,
    end: datetime,
    *,
    what_to_show: str = "TRADES",
    use_rth: bool = True,
) -> list[Span]:
    """What ``[start, end)`` already holds for ``symbol`` at ``resolution``: the spans of
    consecutive bars in ``mdp.bars`` and the ranges recorded in ``mdp.backfill_ranges``."""
    step = resolution_seconds(resolution)
    async with db.pool.acquire() as conn:
        islands = await conn.fetch(_ISLANDS_SQL, symbol, resolution, start, end, step)
        ranges = await conn.fetch(
            _RANGES_SQL, symbol, resolution, start, end, what_to_show, use_rth
        )
    width = timedelta(seconds=step)
    spans = [(r["lo"], r["hi"] + width) for r in islands]
    spans += [(r["start_ts"], r["end_ts"]) for r in ranges]
    return _merge(spans)


# -- reports -------------------------------------------------------------------------------


@dataclass
class SymbolReport:
    """What a backfill did for one symbol. ``requested`` counts requests sent (a retry after
    a pacing violation counts again); ``empty`` the answers without data."""

    symbol: str
    planned: int = 0
    requested: int = 0
    received: int = 0
    committed: int = 0
    empty: int = 0
    failed: int = 0
    unknown: bool = False  # IB has no such instrument (error 200)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Requests answered so far out of those planned, and bars received."""

    done: int
    planned: int
    received: int


@dataclass
class BackfillResult:
    """The outcome of ``Backfill.run``."""

    resolution: str
    start: datetime
    end: datetime
    symbols: dict[str, SymbolReport]
    planned: int
    pacing_violations: int
    waited: float  # seconds spent waiting for the pacing rules
    elapsed: float
    coordinator: CoordinatorStats | None

    @property
    def received(self) -> int:
        return sum(r.received for r in self.symbols.values())

    @property
    def failed(self) -> int:
        """Requests given up on, plus symbols IB does not know."""
        return sum(r.failed + r.unknown for r in self.symbols.values())

    @property
    def balanced(self) -> bool:
        """Every bar received is committed, dead-lettered or dropped."""
        h = self.coordinator
        if h is None:
            return self.received == 0
        return self.received == h.committed + h.dead_lettered + h.dropped and h.pending == 0


# -- the backfill -----------------------------------------------------------------------------


class _TrackingSink:
    """``BarsSink`` that counts committed bars per symbol and tells when every bar of a
    request is committed."""

    kind = BarsSink.kind

    def __init__(self, inner: BarsSink, on_done: Callable[[HistoryRequest, int], None]) -> None:
        self.inner = inner
        self.committed: Counter[str] = Counter()
        self._owner: dict[tuple[str, datetime], HistoryRequest] = {}
        self._left: dict[HistoryRequest, int] = {}
        self._size: dict[HistoryRequest, int] = {}
        self._on_done = on_done

    @property
    def paths(self) -> WritePathCounts:
        return self.inner.paths

    def expect(self, request: HistoryRequest, bars: Sequence[Bar]) -> None:
        for bar in bars:
            self._owner[(bar.symbol, bar.ts)] = request
        self._left[request] = self._size[request] = len(bars)

    async def write(self, batch: Sequence[Bar]) -> int:
        new_rows = await self.inner.write(batch)
        for bar in batch:
            self.committed[bar.symbol] += 1
            request = self._owner.pop((bar.symbol, bar.ts), None)
            if request is None:
                continue
            self._left[request] -= 1
            if self._left[request] == 0:
                del self._left[request]
                self._on_done(request, self._size.pop(request))
        return new_rows


class Backfill:
    """Fetch the bars of ``symbols`` (instrument ids) at ``resolution`` starting in
    ``[start, end)`` from IB into ``mdp.bars``; see the module docstring for what it
    guarantees.

    Args:
        rth: regular trading hours only (the default): the instrument's exchange calendar
            (``calendar`` overrides it for every symbol) and IB's ``useRTH``.
        what_to_show: ``TRADES`` (FX gets ``MIDPOINT``: IB has no trades for it),
            ``MIDPOINT``, ``BID`` or ``ASK``.
        ib: a connected ib_async ``IB`` to use (left connected); else one is connected with
            ``ibkr_settings`` (``MDP_IBKR_*``) and disconnected at the end.
        pacing: IB's pacing rules (scale them with ``PacingRules().scaled(f)`` only against a
            simulated gateway scaled the same way); ``concurrency`` requests may be in
            flight at once; ``request_timeout`` seconds per request.
        on_progress: called after every answer with a ``BackfillProgress``.
    """

    def __init__(
        self,
        db: Database,
        symbols: str | Iterable[str],
        start: datetime,
        end: datetime,
        resolution: str = "1m",
        *,
        rth: bool = True,
        what_to_show: str = "TRADES",
        calendar: str | None = None,
        ib: Any = None,
        ibkr_settings: IBKRSettings | None = None,
        pacing: PacingRules | None = None,
        pacing_margin: float = 0.0,
        concurrency: int = 4,
        request_timeout: float = 60.0,
        max_pacing_retries: int = 5,
        coordinator: CoordinatorSettings | None = None,
        retry_policy: RetryPolicy | None = None,
        dlq: DeadLetterQueue | None = None,
        source: str = "ibkr",
        on_progress: Callable[[BackfillProgress], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"{name} {value!r}: expected a timezone-aware datetime")
        if not end > start:
            raise ValueError(
                f"empty range [{start.isoformat()}, {end.isoformat()}): expected end > start"
            )
        bar_size_setting(resolution)
        if what_to_show not in ("TRADES", "MIDPOINT", "BID", "ASK"):
            raise ValueError(
                f"what_to_show {what_to_show!r}: expected TRADES, MIDPOINT, BID or ASK"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency!r}: expected >= 1")
        if calendar is not None and calendar not in _calendar_names():
            raise ValueError(
                f"unknown market calendar {calendar!r}: expected an exchange_calendars name "
                "such as 'XNYS' (NYSE), 'CMES' (CME), '24/5' or '24/7'"
            )
        self.db = db
        self.symbols = normalize_symbols(symbols)
        self.specs = {s: parse_instrument(s) for s in self.symbols}
        self.start, self.end = start.astimezone(UTC), end.astimezone(UTC)
        self.resolution = resolution = parse_resolution(resolution)
        self.step = resolution_seconds(resolution)
        self.rth = rth
        self.what_to_show = what_to_show
        self.calendar = calendar
        self.settings = ibkr_settings or IBKRSettings()
        self.pacer = HistoryPacer(pacing, margin=pacing_margin, clock=clock, sleep=sleep)
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.max_pacing_retries = max_pacing_retries
        self.coordinator_settings = coordinator or CoordinatorSettings.from_env()
        self.retry_policy = retry_policy or BACKFILL_RETRY_POLICY
        self.dlq = dlq if dlq is not None else DeadLetterQueue()
        self.source = source
        self.on_progress = on_progress
        self._clock = clock
        self._ib = ib
        self._reports = {s: SymbolReport(s) for s in self.symbols}
        self._contracts: dict[str, Any] = {}
        self._what: dict[str, str] = {}
        self._to_record: list[tuple[HistoryRequest, int]] = []
        self._recorded = asyncio.Event()
        self._stop_recording = False
        self.plan: list[HistoryRequest] = []  # the requests, in the order they go (after run)
        self._done = 0
        self._planned = 0
        self._violations = 0

    # -- running ------------------------------------------------------------------------

    async def run(self) -> BackfillResult:
        """Plan, fetch, store; return what happened (per symbol). Raises ``ProviderError``
        if IB cannot be reached or none of the symbols is known to it."""
        started = self._clock()
        # Building an exchange calendar takes about a second: do it while connecting.
        names = {self.calendar or spec.calendar for spec in self.specs.values()}
        calendars = asyncio.gather(
            *(asyncio.to_thread(get_calendar, n) for n in (names if self.rth else ()))
        )
        own = self._ib is None
        ib: Any = None
        health: CoordinatorStats | None = None
        try:
            ib = self._ib if not own else await self._connect()
            server_now = await asyncio.wait_for(ib.reqCurrentTimeAsync(), self.request_timeout)
            end = min(self.end, _floor(server_now, self.step))
            await self._qualify(ib)
            await calendars
            self.plan = plan = await self._plan(end)
            self._planned = len(plan)
            if plan:
                health = await self._fetch_all(ib, plan)
        finally:
            await asyncio.gather(calendars, return_exceptions=True)
            if own and ib is not None:
                ib.disconnect()
        return BackfillResult(
            self.resolution, self.start, self.end, self._reports, self._planned,
            self._violations, self.pacer.waited, self._clock() - started, health,
        )  # fmt: skip

    async def _connect(self) -> Any:
        from mdp_core.providers.ibkr.compat import load_ib_library
        from mdp_core.providers.ibkr.connection import connect_ib

        lib = load_ib_library()
        ib = lib.IB()
        s = self.settings
        await connect_ib(
            ib, lib, host=s.host, port=s.port, client_id=s.client_id,
            timeout=s.connect_timeout, readonly=s.readonly, account=s.account,
        )  # fmt: skip
        return ib

    async def _qualify(self, ib: Any) -> None:
        contracts = {s: ib_contract(spec) for s, spec in self.specs.items()}
        timeout = 2 * self.settings.connect_timeout + len(contracts) / 40
        try:
            await asyncio.wait_for(ib.qualifyContractsAsync(*contracts.values()), timeout)
        except TimeoutError:
            raise ProviderError(
                f"qualifying {len(contracts)} contract(s) took longer than {timeout:.0f}s"
            ) from None
        for symbol, contract in contracts.items():
            if getattr(contract, "conId", 0):
                self._contracts[symbol] = contract
                self._what[symbol] = what_to_show_for(contract, self.what_to_show)
            else:
                message = f"{symbol}: unknown to IB (error 200, no security definition)"
                self._reports[symbol].unknown = True
                self._reports[symbol].errors.append(message)
                logger.error("backfill: {}", message)
        if not self._contracts:
            raise ProviderError(
                f"none of the symbols {', '.join(self.symbols)} is known to IB: check the "
                "instrument ids (e.g. AAPL, EUR:CASH:IDEALPRO:USD, ES:FUT:CME:USD:202503)"
            )

    async def _plan(self, end: datetime) -> list[HistoryRequest]:
        """Every symbol's requests, interleaved (one of each symbol in turn)."""
        per_symbol: list[list[HistoryRequest]] = []
        for symbol in self._contracts:
            if end <= self.start:
                continue
            expected = (
                open_intervals(self.calendar or self.specs[symbol].calendar, self.start, end)
                if self.rth
                else [(self.start, end)]
            )
            covered = await covered_spans(
                self.db, symbol, self.resolution, self.start, end,
                what_to_show=self._what[symbol], use_rth=self.rth,
            )  # fmt: skip
            needed = subtract_spans(expected, covered)

            def bridgeable(lo: datetime, hi: datetime, expected: list[Span] = expected) -> bool:
                return not _intersects(expected, lo, hi)

            requests = plan_requests(symbol, self.resolution, needed, bridgeable)
            self._reports[symbol].planned = len(requests)
            per_symbol.append(requests)
            logger.info(
                "backfill: {} {}: {} request(s) for {} missing span(s) of [{}, {})",
                symbol, self.resolution, len(requests), len(needed), self.start.isoformat(),
                end.isoformat(),
            )  # fmt: skip
        plan: list[HistoryRequest] = []
        for k in range(max((len(r) for r in per_symbol), default=0)):
            plan.extend(r[k] for r in per_symbol if k < len(r))
        return plan

    async def _fetch_all(self, ib: Any, plan: list[HistoryRequest]) -> CoordinatorStats:
        # history is often stored already (an overlapping backfill): start idempotent
        policy = WritePathPolicy(start_idempotent=True)
        sink = _TrackingSink(BarsSink(self.db, policy), self._record)
        coordinator: WriteCoordinator[Bar] = WriteCoordinator(
            sink,
            self.coordinator_settings,
            self.retry_policy,
            self.dlq,
            name="backfill",
        )
        queue: deque[tuple[HistoryRequest, int]] = deque((r, 0) for r in plan)
        recorder = asyncio.create_task(self._recorder(), name="backfill-recorder")
        try:
            async with coordinator:
                workers = [
                    asyncio.create_task(self._worker(ib, queue, sink, coordinator))
                    for _ in range(min(self.concurrency, len(plan)))
                ]
                try:
                    await asyncio.gather(*workers)
                finally:
                    for w in workers:
                        w.cancel()
                await coordinator.drain()
        finally:
            self._stop_recording = True
            self._recorded.set()
            await recorder
        for symbol, n in sink.committed.items():
            self._reports[symbol].committed = n
        return coordinator.stats()

    async def _worker(
        self,
        ib: Any,
        queue: deque[tuple[HistoryRequest, int]],
        sink: _TrackingSink,
        coordinator: WriteCoordinator[Bar],
    ) -> None:
        while queue:
            request, attempt = queue.popleft()
            symbol = request.symbol
            report = self._reports[symbol]
            what = self._what[symbol]
            try:
                async with self.pacer.slot(*self.pacing_keys(request)):
                    report.requested += 1
                    bars = await fetch_history(
                        ib, self._contracts[symbol], request, what_to_show=what,
                        use_rth=self.rth, timeout=self.request_timeout, source=self.source,
                    )  # fmt: skip
            except PacingViolation as exc:
                self._violations += 1
                if attempt < self.max_pacing_retries:
                    rules = self.pacer.rules  # from the identical-request window up to the longest
                    wait = min(rules.window, rules.identical_window * 4**attempt)
                    logger.warning("backfill: {} (retrying in {:.1f}s)", exc, wait)
                    self.pacer.hold_off(wait)
                    queue.appendleft((request, attempt + 1))
                    continue
                self._fail(report, request, f"{exc} (gave up after {attempt + 1} attempts)")
            except HistoryRequestError as exc:
                self._fail(report, request, str(exc))
            else:
                unique = list({b.ts: b for b in bars}.values())
                report.received += len(unique)
                if unique:
                    sink.expect(request, unique)
                    await coordinator.submit_many(unique)
                else:
                    report.empty += 1
                    self._record(request, 0)
            self._done += 1
            await self._progress()

    def pacing_keys(self, request: HistoryRequest) -> tuple[Hashable, Hashable]:
        """(contract, request) keys of ``request`` for IB's pacing rules: same contract and
        tick type; identical request."""
        symbol, what = request.symbol, self._what.get(request.symbol, self.what_to_show)
        identity = (symbol, request.end, request.duration, request.resolution, what, self.rth)
        return (symbol, what), identity

    def _fail(self, report: SymbolReport, request: HistoryRequest, message: str) -> None:
        report.failed += 1
        text = f"[{request.start.isoformat()}, {request.end.isoformat()}): {message}"
        report.errors.append(text)
        logger.error("backfill: {} {}", request.symbol, text)

    async def _progress(self) -> None:
        if self.on_progress is None:
            return
        received = sum(r.received for r in self._reports.values())
        result = self.on_progress(BackfillProgress(self._done, self._planned, received))
        if result is not None:
            await result

    # -- recording fetched ranges ---------------------------------------------------------

    def _record(self, request: HistoryRequest, bars: int) -> None:
        self._to_record.append((request, bars))
        self._recorded.set()

    async def _recorder(self) -> None:
        """Record fetched ranges as they complete (answers arriving meanwhile share the next
        INSERT) until ``_stop_recording`` is set; then record the rest."""
        while not self._stop_recording:
            await self._recorded.wait()
            self._recorded.clear()
            await self._flush_records()
        await self._flush_records()

    async def _flush_records(self) -> None:
        rows, self._to_record = self._to_record, []
        if not rows:
            return
        what = self._what
        try:
            await self.db.pool.execute(
                _RECORD_SQL,
                [r.symbol for r, _ in rows],
                [r.resolution for r, _ in rows],
                [what[r.symbol] for r, _ in rows],
                [self.rth] * len(rows),
                [r.start for r, _ in rows],
                [r.end for r, _ in rows],
                [n for _, n in rows],
            )
        except Exception as exc:  # the bars are stored; only the bookkeeping is missing
            logger.warning(
                "backfill: could not record {} fetched range(s) ({}: {}); a later backfill "
                "may ask for them again", len(rows), type(exc).__name__, exc,
            )  # fmt: skip


def _calendar_names() -> set[str]:
    import exchange_calendars as xcals

    return set(xcals.get_calendar_names(include_aliases=True))


def _floor(t: datetime, step: int) -> datetime:
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, UTC)
