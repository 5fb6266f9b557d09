"""ReplaySource: replay quotes or bars from a CSV, Parquet or JSON file.

Formats (``format="auto"`` picks one from the file name and first line) and the timestamp
convention assumed for each; the one used is logged when the source is built:

- ``"ninjatrader"``: no header, ``;``-separated ``yyyymmdd HHMMSS;open;high;low;close;volume``
  (NinjaTrader export, e.g. ``SPY_1min_2011-01.csv``). Times are UTC and a bar is stamped
  with its END, so by default ``ts = stamp - resolution`` (``bar_timestamp="end"``).
- ``"csv"``: a header naming the columns, like the model fields (``symbol, ts, bid, ask,
  bid_size, ask_size, last, last_size`` or ``open, high, low, close, volume, vwap,
  trade_count, resolution``); ``date``/``time``/``timestamp`` name the time too, and stray
  pandas index columns (``""``, ``"Unnamed: 0"``) are ignored (e.g. ``AAPL_1min_2023-05.csv``).
  Times are ISO 8601 (an offset is honoured, a naive time is taken as UTC) or epoch
  seconds/ms/us/ns. Bars are taken as stamped with their START (the model's convention;
  the AAPL/GOOGL upstream does not say): pass ``bar_timestamp="end"`` otherwise.
- ``"parquet"``: the same columns as ``"csv"`` (read with ``pyarrow``).
- ``"json"``: ``{"results": [...]}`` or a list of objects, e.g. polygon.io quotes
  (``bid_price, bid_size, ask_price, ask_size, sip_timestamp`` in ns since the epoch, UTC,
  truncated to microseconds). The file is read whole and replayed in time order (polygon
  pages list the newest first).

Symbol: from a ``symbol``/``ticker`` column, else the ``symbol`` argument, else the first
all-capital word of the file name (``AAPL_1min_...`` -> AAPL). Bar resolution: the
``file_resolution`` argument, else a ``resolution`` column, else the file name (``_1min_``),
else the smallest gap between a symbol's first timestamps. ``bar_resolution`` is the
resolution the caller wants; ``self.resolution`` is the file's (``RuntimeOrchestrator``
resamples from one to the other).

A malformed row is skipped: it is logged as an error naming the file, the line and the
value, counted in ``stats.skipped`` and kept in ``errors`` (the first 100), and the rest of
the file keeps flowing. ``strict=True`` raises that ``ValueError`` from ``stream()`` instead.

``speed``: 0 replays as fast as possible, 1 in real time (the gaps between event times), N
N times faster. ``loop=True`` repeats the file forever, each pass shifted forward by the
file's span so keys never repeat.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import itertools
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from mdp_core.logs import logger
from mdp_core.models import Bar, Quote, Record, parse_resolution, resolution_timedelta
from mdp_core.providers.base import Mode, ProviderError, ProviderSource, normalize_symbols

__all__ = ["ReplaySource", "ReplayStats"]

Format = Literal["auto", "ninjatrader", "csv", "parquet", "json"]
_FORMATS = ("auto", "ninjatrader", "csv", "parquet", "json")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_KEPT_ERRORS = 100
_YIELD_EVERY = 512
_INFER_ROWS = 2000
_NT_FIELDS = ["ts", "open", "high", "low", "close", "volume"]
_NT_LINE = re.compile(r"^\s*\d{8} \d{6};")

# Column names accepted for each model field, in order of preference.
_ALIASES: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "timestamp", "datetime", "date", "time", "sip_timestamp",
           "participant_timestamp", "t"),
    "symbol": ("symbol", "ticker", "sym"),
    "bid": ("bid", "bid_price"),
    "ask": ("ask", "ask_price"),
    "bid_size": ("bid_size",),
    "ask_size": ("ask_size",),
    "last": ("last", "last_price", "price"),
    "last_size": ("last_size",),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v"),
    "vwap": ("vwap", "vw"),
    "trade_count": ("trade_count", "trades", "n"),
    "resolution": ("resolution",),
    "source": ("source",),
}  # fmt: skip
_BAR_FIELDS = ("open", "high", "low", "close", "volume")
_QUOTE_FIELDS = ("bid", "ask", "last")
_IGNORED_COLUMN = re.compile(r"^(|unnamed: \d+|index|level_\d+)$")
_NAME_RESOLUTION = re.compile(
    r"(?:^|[_\-. ])(\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)(?=$|[_\-. ])",
    re.IGNORECASE,
)
_NAME_SYMBOL = re.compile(r"^[A-Z][A-Z0-9]{0,9}$")


class _RowError(ValueError):
    """A malformed value in one row (the caller adds the file and line)."""


@dataclass(slots=True)
class ReplayStats:
    """Counters of a ReplaySource; once the stream has ended,
    ``rows == records + skipped + filtered``."""

    rows: int = 0  # data rows read (all passes)
    records: int = 0  # records yielded
    skipped: int = 0  # malformed rows skipped (see ``errors``)
    filtered: int = 0  # rows of symbols not asked for
    passes: int = 0  # complete passes over the file


def _check_options(path: Path, format: str, speed: float, bar_timestamp: str | None) -> None:
    """Raise a ``ValueError`` (``FileNotFoundError``) naming a bad option of ``ReplaySource``."""
    if not path.is_file():
        raise FileNotFoundError(f"replay file {str(path)!r} does not exist")
    if format not in _FORMATS:
        raise ValueError(f"format {format!r} is invalid: expected one of {', '.join(_FORMATS)}")
    if not (0 <= speed < math.inf):
        raise ValueError(f"speed {speed!r} is invalid: expected >= 0 (0 = as fast as possible)")
    if bar_timestamp not in (None, "start", "end"):
        raise ValueError(f"bar_timestamp {bar_timestamp!r} is invalid: expected 'start' or 'end'")


class ReplaySource(ProviderSource[Record]):
    """Quotes or bars replayed from a file; see the module docstring for formats and options."""

    name = "replay"

    def __init__(
        self,
        symbols: str | Iterable[str] | None = None,
        mode: str | None = None,
        bar_resolution: str | None = None,
        *,
        path: str | Path,
        format: Format = "auto",
        speed: float = 0.0,
        loop: bool = False,
        bar_timestamp: Literal["start", "end"] | None = None,
        symbol: str | None = None,
        file_resolution: str | None = None,
        strict: bool = False,
        source: str = "replay",
    ) -> None:
        # ProviderSource.__init__ is not called: symbols, mode and resolution come from the file.
        self.path = Path(path).expanduser()
        _check_options(self.path, format, speed, bar_timestamp)
        self.speed = float(speed)
        self.loop = loop
        self.strict = strict
        self.source = source
        self.stats = ReplayStats()
        self.errors: list[str] = []
        self._stop_requested = False
        self._stopped = asyncio.Event()
        wanted = normalize_symbols(symbols) if symbols else None
        self._wanted = set(wanted) if wanted else None

        self.format: str = _detect_format(self.path) if format == "auto" else format
        self._reader = _FileReader(self.path, self.format)
        header = self._reader.header
        columns = _map_columns(header)
        self.mode: Mode = _detect_kind(self.path, columns)
        if mode is not None and mode != self.mode:
            raise ValueError(f"{self.path.name} holds {self.mode}, not {mode!r}")

        notes: list[str] = []
        self.file_symbol: str | None = self._find_symbol(symbol, columns, header, notes)
        if wanted:
            self.symbols = wanted
        else:
            self.symbols = [self.file_symbol] if self.file_symbol else []

        self._bar_delta: timedelta | None = None
        self.resolution: str | None = None
        if self.mode == "bars":
            default_stamp = "end" if self.format == "ninjatrader" else "start"
            self.bar_timestamp: str | None = bar_timestamp or default_stamp
            self.resolution, how = self._find_resolution(file_resolution, columns, header)
            self._bar_delta = resolution_timedelta(self.resolution)
            notes.append(f"resolution {self.resolution} ({how})")
            if self.bar_timestamp == "end":
                notes.append(f"bars stamped with their END time (ts = stamp - {self.resolution})")
            else:
                notes.append("bars stamped with their START time (ts = stamp)")
        else:
            self.bar_timestamp = None  # quotes have no window
        notes.append(_TS_NOTE[self.format])
        self._parser = _RowParser(self, columns)
        self.description = f"{self.path.name}: {self.format} {self.mode}; " + "; ".join(notes)
        logger.info("replay {}", self.description)

    def _find_symbol(
        self, symbol: str | None, columns: dict[str, int], header: list[str], notes: list[str]
    ) -> str | None:
        """The file's one symbol (None: a symbol column), noting where it comes from."""
        if "symbol" in columns:
            notes.append(f"symbol from column {header[columns['symbol']]!r}")
            if symbol:
                notes.append(f"symbol argument {symbol!r} ignored: the file has a symbol column")
            return None
        if symbol:
            given = normalize_symbols([symbol])[0]
            notes.append(f"symbol {given} (from the symbol argument)")
            return given
        found = _symbol_from_name(self.path)
        if found is None:
            raise ValueError(
                f"{self.path.name} has no symbol column and its name has no all-capital "
                "word to take as the symbol: pass symbol='...'"
            )
        notes.append(f"symbol {found} (from the file name)")
        return found

    # -- the file's layout and rows, for readers that take it in columns (mdp import) ----------

    @property
    def header(self) -> list[str]:
        """The file's column names (NinjaTrader: the fixed field names)."""
        return self._reader.header

    @property
    def delimiter(self) -> str:
        """The CSV delimiter (``;`` for NinjaTrader; unused for Parquet and JSON)."""
        return self._reader.delimiter

    @property
    def columns(self) -> dict[str, int]:
        """Model field -> index of its column in ``header``."""
        return self._parser.columns

    def rows(self) -> Iterator[tuple[str, Sequence[Any]]]:
        """``(where, values)`` of each data row in file order, as ``stream()`` reads them;
        where is ``"line N"``, ``"row N"`` or ``"results[N]"``."""
        return self._reader.rows()

    def parse_row(self, values: Sequence[Any]) -> Record:
        """The record ``stream()`` makes of one row (bars shifted to their start); raises
        ``ValueError`` (or ``TypeError``) naming the value and what was expected."""
        return self._parser.parse(values)

    def read_time(self, value: Any) -> datetime:
        """A time value of the file, read as ``stream()`` reads it (UTC)."""
        return _ts_reader(self.format)(value)

    # -- ProviderSource ------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.path.is_file():
            raise ProviderError(f"replay file {str(self.path)!r} no longer exists")
        self._stop_requested = False
        self._stopped.clear()

    async def stop(self) -> None:
        self._stop_requested = True
        self._stopped.set()

    async def stream(self) -> AsyncIterator[Record]:
        """The file's records (filtered to ``symbols``), paced by ``speed``, repeated if ``loop``.

        Ends at the end of the file (unless ``loop``) or after ``stop()``; with ``strict``
        a malformed row raises ``ValueError`` naming the file and line."""
        loop = asyncio.get_running_loop()
        shift = timedelta()
        first_ts: datetime | None = None
        wall0 = 0.0
        since_yield = 0
        while not self._stop_requested:
            low: datetime | None = None
            high: datetime | None = None
            for record in self._one_pass():
                ts = record.ts
                if low is None or ts < low:
                    low = ts
                if high is None or ts > high:
                    high = ts
                if shift:
                    record = _shifted(record, shift)
                if self.speed > 0:
                    if first_ts is None:
                        first_ts, wall0 = record.ts, loop.time()
                    due = wall0 + (record.ts - first_ts).total_seconds() / self.speed
                    await self._sleep_until(loop, due)
                else:
                    since_yield += 1
                    if since_yield >= _YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                if self._stop_requested:
                    return
                self.stats.records += 1
                yield record
            if self._stop_requested:
                return
            self.stats.passes += 1
            if not self.loop:
                break
            if low is None or high is None:
                logger.warning("replay {}: a pass yielded no records; not looping", self.path.name)
                break
            shift += (high - low) + (self._bar_delta or timedelta(milliseconds=1))
        self._log_summary()

    # -- reading -------------------------------------------------------------------------------

    def _one_pass(self) -> Iterator[Record]:
        """One pass over the file: valid records of the wanted symbols, in file order (JSON:
        time order). Malformed rows are reported (or raised, if strict)."""
        if self._wanted is not None and self.file_symbol and self.file_symbol not in self._wanted:
            logger.warning(
                "replay {}: the file holds {}, none of the requested symbols {}",
                self.path.name, self.file_symbol, sorted(self._wanted),
            )  # fmt: skip
            return
        parse = self._parser.parse
        wanted = self._wanted
        stats = self.stats
        rows = self._reader.rows()
        records: Iterator[Record] = self._parsed(rows, parse, wanted, stats)
        if self.format == "json":
            records = iter(sorted(records, key=lambda r: r.ts))
        yield from records

    def _parsed(
        self,
        rows: Iterator[tuple[str, Sequence[Any]]],
        parse: Callable[[Sequence[Any]], Record],
        wanted: set[str] | None,
        stats: ReplayStats,
    ) -> Iterator[Record]:
        for where, values in rows:
            stats.rows += 1
            try:
                record = parse(values)
            except (ValueError, TypeError) as exc:
                self._bad_row(where, str(exc))
                continue
            if wanted is not None and record.symbol not in wanted:
                stats.filtered += 1
                continue
            yield record

    def _bad_row(self, where: str, message: str) -> None:
        text = f"{self.path.name} {where}: {message}"
        if self.strict:
            raise ValueError(text)
        self.stats.skipped += 1
        self.refuse("invalid")  # counted at the stream's edge: received, then dropped
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(text)
            logger.error("replay: {} (row skipped)", text)
            if len(self.errors) == _MAX_KEPT_ERRORS:
                logger.error(
                    "replay {}: further malformed rows are counted in stats.skipped, "
                    "not logged", self.path.name,
                )  # fmt: skip

    def _log_summary(self) -> None:
        s = self.stats
        log = logger.warning if s.skipped else logger.info
        log(
            "replay {}: {} rows read, {} records, {} malformed rows skipped, {} filtered out",
            self.path.name, s.rows, s.records, s.skipped, s.filtered,
        )  # fmt: skip

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        delay = due - loop.time()
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self._stopped.wait()
            except TimeoutError:
                pass

    def _find_resolution(
        self, given: str | None, columns: dict[str, int], header: list[str]
    ) -> tuple[str, str]:
        """The file's bar resolution and where it came from."""
        if given:
            return parse_resolution(given), "from the file_resolution argument"
        if "resolution" in columns:
            for _, values in self._reader.first_rows(1):
                return parse_resolution(str(values[columns["resolution"]])), (
                    f"from column {header[columns['resolution']]!r}"
                )
        by_name = _resolution_from_name(self.path)
        if by_name:
            return by_name, "from the file name"
        return self._resolution_from_data(columns), "inferred from the data"

    def _resolution_from_data(self, columns: dict[str, int]) -> str:
        read_ts = _ts_reader(self.format)
        ts_at, sym_at = columns["ts"], columns.get("symbol")
        last: dict[object, datetime] = {}
        gap: timedelta | None = None
        for _, values in self._reader.first_rows(_INFER_ROWS):
            try:
                ts = read_ts(values[ts_at])
            except (ValueError, TypeError, IndexError):
                continue
            key = values[sym_at] if sym_at is not None else None
            prev = last.get(key)
            if prev is not None and ts > prev and (gap is None or ts - prev < gap):
                gap = ts - prev
            last[key] = ts
        if gap is None:
            raise ValueError(
                f"{self.path.name}: cannot infer the bar resolution (fewer than two timestamps "
                "of a symbol): pass file_resolution='1m' (or another)"
            )
        try:
            return parse_resolution(gap)
        except ValueError:
            raise ValueError(
                f"{self.path.name}: the smallest gap between bars is {gap}, not a supported "
                "resolution: pass file_resolution='...'"
            ) from None


_TS_NOTE = {
    "ninjatrader": "times are UTC",
    "csv": "ISO times with an offset honoured, naive times taken as UTC",
    "parquet": "naive times taken as UTC",
    "json": "epoch times in s/ms/us/ns by magnitude (polygon sip_timestamp: ns), UTC",
}


# -- row parsing -----------------------------------------------------------------------------


class _RowParser:
    """Turns one row (a sequence of values, strings or typed) into a Quote or Bar."""

    def __init__(self, src: ReplaySource, columns: dict[str, int]) -> None:
        self.columns = columns
        self.read_ts = _ts_reader(src.format)
        self.symbol = src.file_symbol or ""
        self.source = src.source
        self.needed = max(columns.values()) + 1
        self.exact = len(_NT_FIELDS) if src.format == "ninjatrader" else None
        self.resolution = src.resolution or ""
        end_stamped = src.mode == "bars" and src.bar_timestamp == "end"
        self.shift = src._bar_delta if end_stamped else None
        self.parse: Callable[[Sequence[Any]], Record] = (
            self._bar if src.mode == "bars" else self._quote
        )

    def _common(self, values: Sequence[Any]) -> tuple[str, datetime, str]:
        if self.exact is not None and len(values) != self.exact:
            raise _RowError(
                f"expected {self.exact} fields 'yyyymmdd HHMMSS;open;high;low;close;volume', "
                f"got {len(values)}"
            )
        if len(values) < self.needed:
            raise _RowError(f"expected at least {self.needed} fields, got {len(values)}")
        c = self.columns
        symbol = self.symbol
        if "symbol" in c:
            symbol = values[c["symbol"]]
            if not isinstance(symbol, str) or not symbol.strip():
                raise _RowError(f"symbol {symbol!r} is missing: expected a ticker")
        raw = values[c["ts"]]
        try:
            ts = self.read_ts(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _RowError(f"ts {raw!r} is not a timestamp: {exc}") from None
        source = self.source
        if "source" in c and values[c["source"]]:
            source = str(values[c["source"]])
        return symbol, ts, source

    def _quote(self, values: Sequence[Any]) -> Quote:
        symbol, ts, source = self._common(values)
        c = self.columns
        return Quote(
            symbol=symbol,
            ts=ts,
            bid=_number(values, c, "bid"),
            ask=_number(values, c, "ask"),
            bid_size=_number(values, c, "bid_size"),
            ask_size=_number(values, c, "ask_size"),
            last=_number(values, c, "last"),
            last_size=_number(values, c, "last_size"),
            source=source,
        )

    def _bar(self, values: Sequence[Any]) -> Bar:
        symbol, ts, source = self._common(values)
        c = self.columns
        if self.shift is not None:
            ts -= self.shift
        resolution = self.resolution
        if "resolution" in c:
            given = str(values[c["resolution"]])
            try:
                row_resolution = parse_resolution(given)
            except ValueError as exc:
                raise _RowError(str(exc)) from None
            if row_resolution != resolution:
                raise _RowError(
                    f"resolution {given!r} differs from the file's resolution {resolution}"
                )
        count = _number(values, c, "trade_count")
        return Bar(
            symbol=symbol,
            ts=ts,
            open=_number(values, c, "open", required=True),  # type: ignore[arg-type]
            high=_number(values, c, "high", required=True),  # type: ignore[arg-type]
            low=_number(values, c, "low", required=True),  # type: ignore[arg-type]
            close=_number(values, c, "close", required=True),  # type: ignore[arg-type]
            volume=_number(values, c, "volume", required=True),  # type: ignore[arg-type]
            resolution=resolution,
            vwap=_number(values, c, "vwap"),
            trade_count=_count(count),
            source=source,
        )


def _number(
    values: Sequence[Any], columns: dict[str, int], field: str, *, required: bool = False
) -> float | None:
    at = columns.get(field)
    value = values[at] if at is not None else None
    if value is None or value == "":
        if required:
            raise _RowError(f"{field} is missing: expected a number")
        return None
    if value.__class__ is float:
        return value
    try:
        return float(value)
    except (ValueError, TypeError):
        raise _RowError(f"{field} {value!r} is not a number") from None


def _count(value: float | None) -> int | None:
    if value is None:
        return None
    if value != int(value):
        raise _RowError(f"trade_count {value!r} is not a whole number")
    return int(value)


def _ts_reader(fmt: str) -> Callable[[Any], datetime]:
    return _nt_time if fmt == "ninjatrader" else _any_time


def _nt_time(value: Any) -> datetime:
    """``yyyymmdd HHMMSS`` (UTC)."""
    s = value.strip() if isinstance(value, str) else ""
    if len(s) != 15 or s[8] != " " or not (s[:8].isdigit() and s[9:].isdigit()):
        raise ValueError("expected 'yyyymmdd HHMMSS'")
    return datetime(
        int(s[:4]), int(s[4:6]), int(s[6:8]), int(s[9:11]), int(s[11:13]), int(s[13:15]),
        tzinfo=UTC,
    )  # fmt: skip


def _any_time(value: Any) -> datetime:
    """A datetime, an ISO 8601 string or an epoch number (unit by magnitude); naive = UTC."""
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ts = _epoch(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            ts = _epoch(float(text) if "." in text else int(text))
        elif _NT_LINE.match(text + ";"):
            return _nt_time(text)
        else:
            try:
                ts = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    "expected ISO 8601 (2023-05-24 21:16:00+00:00) or epoch seconds/ms/us/ns"
                ) from None
    else:
        raise TypeError(f"expected a time, got {type(value).__name__}")
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def _epoch(value: float) -> datetime:
    """Epoch seconds, ms, us or ns, told apart by magnitude; exact for integers."""
    size = abs(value)
    if size >= 1e17:
        micros = int(value) // 1000 if isinstance(value, int) else int(value / 1000)
    elif size >= 1e14:
        micros = int(value)
    elif size >= 1e11:
        micros = int(value) * 1000 if isinstance(value, int) else round(value * 1000)
    else:
        micros = int(value) * 1_000_000 if isinstance(value, int) else round(value * 1e6)
    return _EPOCH + timedelta(microseconds=micros)


def _shifted(record: Record, shift: timedelta) -> Record:
    return dataclasses.replace(record, ts=record.ts + shift)


# -- files -----------------------------------------------------------------------------------


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json":
        return "json"
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for line in f:
            if line.strip():
                return "ninjatrader" if _NT_LINE.match(line) else "csv"
    raise ValueError(f"{path.name} is empty: expected a header or data rows")


class _FileReader:
    """The rows of one replay file. The format details are worked out once, when it is
    built: the header, the CSV delimiter and, for JSON, the parsed content (a JSON file is
    read whole anyway, so every pass replays the one parse)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.delimiter = ";"
        self._json: tuple[str, list[Any]] = ("", [])
        if fmt == "ninjatrader":
            self.header = list(_NT_FIELDS)
        elif fmt == "csv":
            self.delimiter, self.header = _csv_layout(path)
        elif fmt == "parquet":
            self.header = list(_parquet(path).schema_arrow.names)
        else:
            self._json = _json_items(path)
            self.header = _json_header(self._json[1])

    def rows(self) -> Generator[tuple[str, Sequence[Any]], None, None]:
        """``(where, values)`` of each data row: where is "line N", "row N" or
        "results[N]"."""
        path, fmt = self.path, self.format
        if fmt in ("ninjatrader", "csv"):
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.reader(f, delimiter=self.delimiter)
                if fmt == "csv":
                    next((row for row in reader if row), None)  # the header
                for row in reader:
                    if row:
                        yield f"line {reader.line_num}", row
        elif fmt == "parquet":
            number = 0
            for batch in _parquet(path).iter_batches(batch_size=65_536):
                for values in zip(*(column.to_pylist() for column in batch.columns), strict=True):
                    number += 1
                    yield f"row {number}", values
        else:
            label, items = self._json
            header = self.header
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    yield f"{label}[{i}]", ()
                    continue
                yield f"{label}[{i}]", [item.get(name) for name in header]

    def first_rows(self, n: int) -> Iterator[tuple[str, Sequence[Any]]]:
        """The first ``n`` rows; the file is closed at once after them."""
        rows = self.rows()
        try:
            for _ in range(n):
                row = next(rows, None)
                if row is None:
                    return
                yield row
        finally:
            rows.close()


def _json_header(items: list[Any]) -> list[str]:
    """The keys of the objects, in first-seen order."""
    header: dict[str, None] = {}
    for item in items:
        if isinstance(item, dict):
            header.update(dict.fromkeys(item))
    return list(header)


def _csv_layout(path: Path) -> tuple[str, list[str]]:
    """The delimiter (the most frequent of ``,;\\t`` in the first line) and the header."""
    with path.open(encoding="utf-8", newline="") as f:
        line = next((line for line in f if line.strip()), "")
        counts = {d: line.count(d) for d in (",", ";", "\t")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
        header = next(csv.reader(itertools.chain([line], f), delimiter=delimiter), None)
    if not header:
        raise ValueError(f"{path.name} is empty: expected a header line")
    return delimiter, header


def _map_columns(header: list[str]) -> dict[str, int]:
    """Model field -> column index, from the header names (case-insensitive, aliases)."""
    names: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = str(raw).strip().lower()
        if not _IGNORED_COLUMN.match(name):
            names.setdefault(name, i)
    columns: dict[str, int] = {}
    for field, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in names:
                columns[field] = names[alias]
                break
    return columns


def _detect_kind(path: Path, columns: dict[str, int]) -> Mode:
    if "ts" not in columns:
        raise ValueError(
            f"{path.name} has no time column: expected one named ts, timestamp, date or time"
        )
    if all(f in columns for f in _BAR_FIELDS):
        return "bars"
    if any(f in columns for f in _QUOTE_FIELDS):
        return "quotes"
    missing = [f for f in _BAR_FIELDS if f not in columns]
    raise ValueError(
        f"{path.name} holds neither bars nor quotes: bars need open, high, low, close, volume "
        f"(missing {', '.join(missing)}); quotes need bid, ask or last"
    )


def _symbol_from_name(path: Path) -> str | None:
    for word in re.split(r"[_\-. ]+", path.stem):
        if _NAME_SYMBOL.match(word):
            return word
    return None


def _resolution_from_name(path: Path) -> str | None:
    for match in _NAME_RESOLUTION.finditer(path.stem):
        try:
            return parse_resolution(f"{match.group(1)} {match.group(2)}")
        except ValueError:
            continue
    return None


def _json_items(path: Path) -> tuple[str, list[Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return "results", data["results"]
    if isinstance(data, list):
        return "item", data
    raise ValueError(f'{path.name}: expected a list of objects or {{"results": [...]}}')


def _parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ProviderError(
            f"reading {path.name} needs pyarrow, a dependency of mdp: reinstall mdp ({exc})"
        ) from exc
    return pq.ParquetFile(path)
