"""Market-data records: `Quote`, `Bar`, and bar resolutions.

Records are immutable slotted dataclasses, validated once on creation, so everything
downstream (operators, coordinator, sinks) can trust them:

- ``symbol`` is stripped and upper-cased; empty symbols and control characters are refused.
- ``ts`` is a timezone-aware ``datetime`` converted to UTC (naive datetimes are refused), in
  ``[1900-01-01, 2200-01-01)`` (``TS_MIN``, ``TS_MAX``): a year-1 or year-9999 time is a bug
  upstream, and would make a daily partition that overflows or that retention never drops.
- prices are finite and > 0, or ``None``; a provider's NaN means "absent" and becomes ``None``.
- sizes and volume are finite and >= 0 (NaN size means absent).
- a Bar satisfies ``low <= open, close <= high``; its ``ts`` is the window start and its window
  is ``[ts, ts + resolution)``. ``partial=True`` marks a bar whose window the stream did not
  see whole (resampled, then flushed at a stop); the store replaces it by the complete bar.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

__all__ = [
    "RESOLUTIONS",
    "TS_MAX",
    "TS_MIN",
    "Bar",
    "Quote",
    "Record",
    "normalize_symbol",
    "parse_resolution",
    "record_from_dict",
    "resolution_seconds",
    "resolution_timedelta",
]

#: Allowed resolution labels and their length in seconds.
RESOLUTIONS: dict[str, int] = {
    "1s": 1,
    "5s": 5,
    "10s": 10,
    "15s": 15,
    "30s": 30,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "1d": 86400,
}
#: Records refuse event times outside ``[TS_MIN, TS_MAX)``.
TS_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2200, 1, 1, tzinfo=UTC)
_INF = math.inf
_LABEL_BY_SECONDS = {seconds: label for label, seconds in RESOLUTIONS.items()}
_UNIT_SECONDS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60, "t": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_RESOLUTION_RE = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")


def parse_resolution(value: str | timedelta) -> str:
    """Normalise a resolution to its label (``"5s"``, ``"1m"``, ``"1h"``, ``"1d"``, ...).

    Accepts labels in any case and common spellings (``"5 secs"``, ``"1min"``, ``"60s"``,
    ``"1 hour"``) or a ``timedelta``. Anything else raises ``ValueError`` naming the value and
    the allowed labels.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        label = _LABEL_BY_SECONDS.get(int(seconds)) if seconds == int(seconds) else None
    elif isinstance(value, str):
        if value in RESOLUTIONS:
            return value
        match = _RESOLUTION_RE.match(value.lower())
        unit = _UNIT_SECONDS.get(match.group(2)) if match else None
        label = _LABEL_BY_SECONDS.get(int(match.group(1)) * unit) if match and unit else None
    else:
        label = None
    if label is None:
        allowed = ", ".join(RESOLUTIONS)
        raise ValueError(f"unsupported resolution {value!r}: expected one of {allowed}")
    return label


def resolution_seconds(value: str | timedelta) -> int:
    """Length of a resolution in seconds (the value is normalised first)."""
    return RESOLUTIONS[parse_resolution(value)]


def resolution_timedelta(value: str | timedelta) -> timedelta:
    """Length of a resolution as a ``timedelta`` (the value is normalised first)."""
    return timedelta(seconds=resolution_seconds(value))


# Normalised symbols seen so far: lets records built from clean values skip re-validation.
_CLEAN_SYMBOLS: set[str] = set()


def normalize_symbol(value: object, field: str = "symbol") -> str:
    """``value`` stripped and upper-cased: the one symbol rule, for records, providers and
    windows alike (a str of 1-64 printable characters once normalised).

    Raises ``TypeError`` if ``value`` is not a str, else ``ValueError`` naming ``field``
    and the value if it breaks the rule."""
    if value.__class__ is str and value in _CLEAN_SYMBOLS:
        return value
    if not isinstance(value, str):
        raise TypeError(f"invalid {field} {value!r}: expected a str, got {type(value).__name__}")
    symbol = value.strip().upper()
    if not symbol or len(symbol) > 64 or not symbol.isprintable():
        raise ValueError(f"invalid {field} {value!r}: expected 1-64 printable characters")
    if len(_CLEAN_SYMBOLS) < 100_000:
        _CLEAN_SYMBOLS.add(symbol)
    return symbol


def _utc(cls: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{cls}.ts must be a datetime, got {type(value).__name__} {value!r}")
    tz = value.tzinfo
    if tz is not UTC or type(value) is not datetime:
        if tz is None or tz.utcoffset(value) is None:
            raise ValueError(
                f"{cls}.ts {value.isoformat()} is naive: expected a timezone-aware datetime "
                "(for example datetime(..., tzinfo=timezone.utc))"
            )
        to_py = getattr(value, "to_pydatetime", None)  # pandas.Timestamp -> datetime
        plain: datetime = to_py() if to_py is not None else value
        try:
            value = plain.astimezone(UTC)
        except OverflowError:
            value = TS_MAX  # refused just below
    if not TS_MIN <= value < TS_MAX:
        raise ValueError(
            f"{cls}.ts {value.isoformat()} is out of range: expected a time from "
            f"{TS_MIN:%Y-%m-%d} to before {TS_MAX:%Y-%m-%d} (UTC)"
        )
    return value


def _price(cls: str, name: str, value: object, *, required: bool = False) -> float | None:
    if value is None:
        if required:
            raise ValueError(f"{cls}.{name} is required: expected a finite price > 0")
        return None
    price = float(value)  # type: ignore[arg-type]
    if price != price:  # NaN: the provider has no value
        if required:
            raise ValueError(f"{cls}.{name} is NaN: expected a finite price > 0")
        return None
    if not (0.0 < price < math.inf):
        raise ValueError(f"{cls}.{name} {value!r} is invalid: expected a finite price > 0")
    return price


def _required_price(cls: str, name: str, value: object) -> float:
    price = _price(cls, name, value, required=True)
    assert price is not None
    return price


def _size(cls: str, name: str, value: object, *, required: bool = False) -> float | None:
    if value is None:
        if required:
            raise ValueError(f"{cls}.{name} is required: expected a finite number >= 0")
        return None
    size = float(value)  # type: ignore[arg-type]
    if size != size:
        if required:
            raise ValueError(f"{cls}.{name} is NaN: expected a finite number >= 0")
        return None
    if not (0.0 <= size < math.inf):
        raise ValueError(f"{cls}.{name} {value!r} is invalid: expected a finite number >= 0")
    return size


@dataclass(frozen=True, slots=True)
class Quote:
    """Top-of-book quote (and last trade) for one symbol at event time ``ts`` (UTC)."""

    kind: ClassVar[str] = "quote"

    symbol: str
    ts: datetime
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    last: float | None = None
    last_size: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        # Fast path: records built from clean values (the common case) skip normalisation.
        b, a, lp = self.bid, self.ask, self.last
        bs, az, ls = self.bid_size, self.ask_size, self.last_size
        if (
            self.symbol in _CLEAN_SYMBOLS
            and self.ts.__class__ is datetime
            and self.ts.tzinfo is UTC
            and TS_MIN <= self.ts < TS_MAX
            and (b is None or (b.__class__ is float and 0.0 < b < _INF))
            and (a is None or (a.__class__ is float and 0.0 < a < _INF))
            and (lp is None or (lp.__class__ is float and 0.0 < lp < _INF))
            and (bs is None or (bs.__class__ is float and 0.0 <= bs < _INF))
            and (az is None or (az.__class__ is float and 0.0 <= az < _INF))
            and (ls is None or (ls.__class__ is float and 0.0 <= ls < _INF))
            and self.source.__class__ is str
        ):
            return
        s = object.__setattr__
        s(self, "symbol", normalize_symbol(self.symbol, "Quote.symbol"))
        s(self, "ts", _utc("Quote", self.ts))
        s(self, "bid", _price("Quote", "bid", b))
        s(self, "ask", _price("Quote", "ask", a))
        s(self, "last", _price("Quote", "last", lp))
        s(self, "bid_size", _size("Quote", "bid_size", bs))
        s(self, "ask_size", _size("Quote", "ask_size", az))
        s(self, "last_size", _size("Quote", "last_size", ls))
        if not isinstance(self.source, str):
            raise TypeError(f"Quote.source must be a str, got {self.source!r}")

    @property
    def key(self) -> tuple[str, datetime]:
        """The natural key in the ``quotes`` table: ``(symbol, ts)``."""
        return (self.symbol, self.ts)

    @property
    def mid(self) -> float | None:
        """Mid price when both sides are present, else ``None``."""
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``Quote.from_dict(q.to_dict()) == q``."""
        return {
            "symbol": self.symbol,
            "ts": self.ts.isoformat(),
            "bid": self.bid,
            "ask": self.ask,
            "bid_size": self.bid_size,
            "ask_size": self.ask_size,
            "last": self.last,
            "last_size": self.last_size,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quote:
        fields = dict(data)
        fields["ts"] = datetime.fromisoformat(fields["ts"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Bar:
    """OHLCV bar for ``[ts, ts + resolution)``; ``ts`` is the window start (UTC).

    ``partial``: the bar was built from part of its window only (see the module docstring)."""

    kind: ClassVar[str] = "bar"

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    resolution: str
    vwap: float | None = None
    trade_count: int | None = None
    source: str = ""
    partial: bool = False

    def __post_init__(self) -> None:
        o, h, lo, c, v, vw = self.open, self.high, self.low, self.close, self.volume, self.vwap
        if (  # fast path: clean values, the common case
            self.symbol in _CLEAN_SYMBOLS
            and self.ts.__class__ is datetime
            and self.ts.tzinfo is UTC
            and TS_MIN <= self.ts < TS_MAX
            and o.__class__ is float
            and h.__class__ is float
            and lo.__class__ is float
            and c.__class__ is float
            and 0.0 < lo <= o <= h < _INF
            and lo <= c <= h
            and v.__class__ is float
            and 0.0 <= v < _INF
            and self.resolution in RESOLUTIONS
            and (vw is None or (vw.__class__ is float and 0.0 < vw < _INF))
            and (self.trade_count is None or self.trade_count.__class__ is int)
            and (self.trade_count is None or self.trade_count >= 0)
            and self.source.__class__ is str
            and self.partial.__class__ is bool
        ):
            return
        s = object.__setattr__
        s(self, "symbol", normalize_symbol(self.symbol, "Bar.symbol"))
        s(self, "ts", _utc("Bar", self.ts))
        o = _required_price("Bar", "open", o)
        h = _required_price("Bar", "high", h)
        lo = _required_price("Bar", "low", lo)
        c = _required_price("Bar", "close", c)
        if not (lo <= o <= h and lo <= c <= h):
            raise ValueError(
                f"Bar {self.symbol} {self.ts.isoformat()} has inconsistent prices "
                f"open={o} high={h} low={lo} close={c}: expected low <= open, close <= high"
            )
        s(self, "open", o)
        s(self, "high", h)
        s(self, "low", lo)
        s(self, "close", c)
        s(self, "volume", _size("Bar", "volume", v, required=True))
        s(self, "resolution", parse_resolution(self.resolution))
        s(self, "vwap", _price("Bar", "vwap", vw))
        if self.trade_count is not None:
            count = int(self.trade_count)
            if count < 0 or count != self.trade_count:
                raise ValueError(
                    f"Bar.trade_count {self.trade_count!r} is invalid: expected an integer >= 0"
                )
            s(self, "trade_count", count)
        if not isinstance(self.source, str):
            raise TypeError(f"Bar.source must be a str, got {self.source!r}")
        if not isinstance(self.partial, bool):
            raise TypeError(f"Bar.partial must be a bool, got {self.partial!r}")

    @property
    def key(self) -> tuple[str, str, datetime]:
        """The natural key in the ``bars`` table: ``(symbol, resolution, ts)``."""
        return (self.symbol, self.resolution, self.ts)

    @property
    def end(self) -> datetime:
        """Exclusive end of the bar's window."""
        return self.ts + timedelta(seconds=RESOLUTIONS[self.resolution])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``Bar.from_dict(b.to_dict()) == b``."""
        return {
            "symbol": self.symbol,
            "ts": self.ts.isoformat(),
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "resolution": self.resolution,
            "vwap": self.vwap,
            "trade_count": self.trade_count,
            "source": self.source,
            "partial": self.partial,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bar:
        fields = dict(data)
        fields["ts"] = datetime.fromisoformat(fields["ts"])
        return cls(**fields)


Record = Quote | Bar
_KINDS: dict[str, type[Quote] | type[Bar]] = {"quote": Quote, "bar": Bar}


def record_from_dict(kind: str, data: dict[str, Any]) -> Record:
    """Rebuild a Quote or Bar from ``kind`` (``"quote"``/``"bar"``) and ``to_dict()`` output."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}: expected 'quote' or 'bar'") from None
    return cls.from_dict(data)
