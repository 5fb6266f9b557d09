"""Quotes and bars in columns: raw file columns -> an Arrow table in the sinks' stage layout,
validated with the models' rules (``mdp_core.models``), a whole column at a time.

``to_table(kind, raw, ...)`` returns the valid rows as a table whose columns are those of
``QuotesSink.columns`` / ``BarsSink.columns`` (what the bulk writer COPYs), and a mask of
the rows it refused. The rules are the models':

- symbol: ``normalize_symbol`` itself, applied to each distinct value;
- ts: timezone-aware UTC; values are read as the replay provider reads them (ISO 8601
  with an offset honoured, naive = UTC, epoch s/ms/us/ns by magnitude, NinjaTrader
  ``yyyymmdd HHMMSS``); what Arrow cannot read in bulk goes through
  ``ReplaySource.read_time`` value by value;
- prices finite and > 0, sizes finite and >= 0; NaN means absent where the field is
  optional and is refused where it is required; a bar has ``low <= open, close <= high``,
  a known resolution (``parse_resolution``) and a whole ``trade_count >= 0``.

Numbers are read as the replay provider reads them (``float(value)``; an empty cell is
absent); a column Arrow cannot convert in bulk is converted value by value the same way.
The refused rows carry no reason here: the caller asks the model (``ReplaySource.parse_row``)
for it, so the message is the live path's. ``tests/core/test_columns.py`` checks that this
module and the models accept and refuse the same rows and store the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from mdp_core.models import RESOLUTIONS, TS_MAX, TS_MIN, normalize_symbol, parse_resolution

__all__ = ["BAR_SCHEMA", "QUOTE_SCHEMA", "Column", "Kind", "records_table", "to_table"]

#: A raw column: an Arrow array (CSV: strings; Parquet: typed) or Python values (JSON).
Column: TypeAlias = "pa.Array | pa.ChunkedArray | Sequence[Any]"
Kind = Literal["bars", "quotes"]

_TS = pa.timestamp("us", tz="UTC")
_F = pa.float64()
# The stage layouts (``STAGE_DDL``), in ``QuotesSink.columns`` / ``BarsSink.columns`` order.
QUOTE_SCHEMA = pa.schema(
    [("symbol", pa.string()), ("ts", _TS), ("bid", _F), ("ask", _F), ("bid_size", _F),
     ("ask_size", _F), ("last", _F), ("last_size", _F), ("source", pa.string())]
)  # fmt: skip
BAR_SCHEMA = pa.schema(
    [("symbol", pa.string()), ("resolution", pa.string()), ("ts", _TS), ("open", _F),
     ("high", _F), ("low", _F), ("close", _F), ("volume", _F), ("vwap", _F),
     ("trade_count", pa.int64()), ("source", pa.string()), ("partial", pa.bool_())]
)  # fmt: skip
_SCHEMAS: dict[str, pa.Schema] = {"quotes": QUOTE_SCHEMA, "bars": BAR_SCHEMA}
_NULL_F = pa.scalar(None, _F)
_NT_TIME = r"^\s*\d{8} \d{6}\s*$"
_INF = math.inf


def to_table(
    kind: Kind,
    raw: Mapping[str, Column],
    n: int,
    *,
    symbol: str | None,
    resolution: str | None,
    source: str,
    read_time: Callable[[Any], datetime],
    nt_times: bool = False,
    shift: timedelta | None = None,
) -> tuple[pa.Table, pa.BooleanArray]:
    """The valid rows of ``n`` raw rows in the stage layout of ``kind``, and the mask of the
    refused rows (True = refused).

    ``raw`` maps model fields to columns of the file (absent fields are absent values);
    ``symbol`` is the file's symbol when it has no symbol column (already normalised);
    ``resolution`` the file's bar resolution (a resolution column must agree with it);
    ``source`` the source of rows without a source column value; ``read_time`` reads one
    time value the replay provider's way; ``nt_times`` says the times are NinjaTrader's
    ``yyyymmdd HHMMSS``; ``shift`` is subtracted from bar times (end-stamped bars)."""
    refused = _Refused(n)
    out: dict[str, pa.Array] = {}
    if "symbol" in raw:
        symbols, unreadable = _symbols(raw["symbol"])
        refused.add(unreadable)
        out["symbol"] = symbols
    else:
        out["symbol"] = pa.array([symbol or ""] * n, pa.string())  # replay refused no symbol
    ts, unreadable = _times(raw.get("ts"), n, read_time, nt_times)
    refused.add(unreadable)
    refused.add(_out_of_range(ts))
    out["ts"] = ts
    numbers: dict[str, pa.Array] = {}
    for field in _NUMBER_FIELDS[kind]:
        if field in raw:
            numbers[field], unreadable = _floats(raw[field], n)
            refused.add(unreadable)
        else:
            numbers[field] = pa.nulls(n, _F)
    if kind == "bars":
        if shift:
            out["ts"] = pc.subtract(ts, pa.scalar(shift, pa.duration("us")))
        label = resolution or ""
        if "resolution" in raw:
            refused.add(pc.invert(_same_resolution(raw["resolution"], label)))
        out["resolution"] = pa.array([label] * n, pa.string())
        out.update(_bar_numbers(numbers, refused))
    else:
        out.update(_quote_numbers(numbers, refused))
    out["source"] = _sources(raw.get("source"), n, source)

    schema = _SCHEMAS[kind]
    table = pa.table([out[name] for name in schema.names], schema=schema)
    return table.filter(pc.invert(refused.mask)), refused.mask


class _Refused:
    """The mask of refused rows, grown rule by rule (a null verdict refuses the row)."""

    def __init__(self, n: int) -> None:
        self.mask: pa.BooleanArray = pa.array([False] * n, pa.bool_())

    def add(self, mask: pa.Array) -> None:
        self.mask = pc.or_(self.mask, pc.fill_null(mask, True))


def _bar_numbers(numbers: dict[str, pa.Array], refused: _Refused) -> dict[str, pa.Array]:
    """A bar's number columns, refusing rows that break the ``Bar`` model's rules."""
    o, h, lo, c = (numbers[f] for f in ("open", "high", "low", "close"))
    for price in (o, h, lo, c):
        refused.add(pc.invert(_finite_over(price, 0.0, strict=True)))  # null or NaN: refused
    refused.add(pc.invert(_finite_over(numbers["volume"], 0.0, strict=False)))
    consistent = pc.and_(
        pc.and_(pc.less_equal(lo, o), pc.less_equal(o, h)),
        pc.and_(pc.less_equal(lo, c), pc.less_equal(c, h)),
    )
    refused.add(pc.invert(consistent))
    vwap = _absent_nan(numbers["vwap"])
    refused.add(pc.invert(_optional(vwap, strict=True)))
    count = numbers["trade_count"]
    whole = pc.and_(
        pc.and_(_finite_over(count, 0.0, strict=False), pc.less(count, 2.0**63)),
        pc.equal(pc.floor(count), count),
    )  # a whole number >= 0 that fits the table's bigint
    refused.add(pc.and_(pc.is_valid(count), pc.invert(pc.fill_null(whole, False))))
    return {
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": numbers["volume"],
        "vwap": vwap,
        "trade_count": pc.cast(pc.if_else(whole, count, _NULL_F), pa.int64(), safe=False),
        "partial": pa.array([False] * len(o), pa.bool_()),  # a file's bars are as they are
    }


def _quote_numbers(numbers: dict[str, pa.Array], refused: _Refused) -> dict[str, pa.Array]:
    """A quote's number columns (NaN = absent), refusing rows that break the ``Quote`` rules."""
    out: dict[str, pa.Array] = {}
    for field in ("bid", "ask", "last"):
        out[field] = _absent_nan(numbers[field])
        refused.add(pc.invert(_optional(out[field], strict=True)))
    for field in ("bid_size", "ask_size", "last_size"):
        out[field] = _absent_nan(numbers[field])
        refused.add(pc.invert(_optional(out[field], strict=False)))
    return out


def _out_of_range(ts: pa.Array) -> pa.Array:
    """Times the models refuse: outside ``[TS_MIN, TS_MAX)``."""
    low, high = pa.scalar(TS_MIN, _TS), pa.scalar(TS_MAX, _TS)
    return pc.or_(pc.less(ts, low), pc.greater_equal(ts, high))


def records_table(kind: Kind, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """A table in the stage layout of ``kind`` from tuples in its column order
    (``BarsSink.rows(records)`` / ``QuotesSink.rows(records)``)."""
    schema = _SCHEMAS[kind]
    return pa.table(
        [pa.array([row[i] for row in rows], f.type) for i, f in enumerate(schema)], schema=schema
    )


# -- rules, in columns ----------------------------------------------------------------------

_NUMBER_FIELDS: dict[str, tuple[str, ...]] = {
    "bars": ("open", "high", "low", "close", "volume", "vwap", "trade_count"),
    "quotes": ("bid", "ask", "bid_size", "ask_size", "last", "last_size"),
}


def _finite_over(values: pa.Array, floor: float, *, strict: bool) -> pa.Array:
    """``floor < x < inf`` (``floor <= x`` unless strict); null and NaN give False."""
    above = pc.greater(values, floor) if strict else pc.greater_equal(values, floor)
    return pc.fill_null(pc.and_(above, pc.less(values, _INF)), False)


def _optional(values: pa.Array, *, strict: bool) -> pa.Array:
    """Absent, or a finite number over 0 (a price; ``>= 0`` for a size)."""
    return pc.or_(pc.is_null(values), _finite_over(values, 0.0, strict=strict))


def _absent_nan(values: pa.Array) -> pa.Array:
    """NaN -> null: a provider's NaN means "absent" (the models' rule for optional fields)."""
    return pc.if_else(pc.is_nan(values), _NULL_F, values)


def _symbols(column: Column) -> tuple[pa.Array, pa.Array]:
    """Each value normalised with ``normalize_symbol`` (once per distinct value); a
    non-string, blank or invalid symbol is unreadable."""
    values = _array(column)
    if values is None or not pa.types.is_string(values.type):
        py = list(column) if values is None else values.to_pylist()
        normal = [_symbol(v) for v in py]
        return pa.array(normal, pa.string()), pa.array([v is None for v in normal])
    distinct = pc.unique(values)
    normal = pa.array([_symbol(v) for v in distinct.to_pylist()], pa.string())
    mapped = pc.take(normal, pc.index_in(values, value_set=distinct))
    return mapped, pc.is_null(mapped)


def _symbol(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_symbol(value)
    except ValueError:
        return None


def _same_resolution(column: Column, label: str) -> pa.Array:
    """True where the row's resolution is the file's (the replay provider's rule)."""
    values = _array(column)
    py = list(column) if values is None else values.to_pylist()
    verdicts: dict[Any, bool] = {}
    for v in set(py):
        try:
            verdicts[v] = parse_resolution(str(v)) == label and label in RESOLUTIONS
        except ValueError:
            verdicts[v] = False
    return pa.array([verdicts[v] for v in py], pa.bool_())


def _sources(column: Column | None, n: int, default: str) -> pa.Array:
    """A row's source column value when it has one (non-empty), else ``default``."""
    if column is None:
        return pa.array([default] * n, pa.string())
    values = _array(column)
    if values is not None and pa.types.is_string(values.type):
        empty = pc.fill_null(pc.equal(values, ""), True)
        return pc.if_else(empty, default, values)
    py = list(column) if values is None else values.to_pylist()
    return pa.array([str(v) if v else default for v in py], pa.string())


def _floats(column: Column, n: int) -> tuple[pa.Array, pa.Array]:
    """``(values, unreadable)``: float64 values (null = absent) and where a value is not
    a number. Like the replay provider: None and "" are absent, anything else goes through
    ``float()``."""
    values = _array(column)
    if values is not None:
        t = values.type
        if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t):
            return pc.cast(values, _F, safe=False), pa.array([False] * n)
        if pa.types.is_string(t):
            try:  # Arrow reads a subset of what float() reads, to the same values
                return pc.cast(values, _F), pa.array([False] * n)
            except pa.ArrowInvalid:
                pass  # a value Arrow cannot read: float() decides, value by value
    py = list(column) if values is None else values.to_pylist()
    out: list[float | None] = []
    unreadable: list[bool] = []
    for v in py:
        if v is None or v == "":
            out.append(None)
            unreadable.append(False)
            continue
        try:
            out.append(float(v))
            unreadable.append(False)
        except (ValueError, TypeError):
            out.append(None)
            unreadable.append(True)
    return pa.array(out, _F), pa.array(unreadable, pa.bool_())


def _times(
    column: Column | None, n: int, read_time: Callable[[Any], datetime], nt_times: bool
) -> tuple[pa.Array, pa.Array]:
    """``(ts, unreadable)``: UTC microsecond times, and where a value is not a time."""
    if column is None:
        return pa.nulls(n, _TS), pa.array([True] * n)
    values = _array(column)
    ts: pa.Array | None = None
    if values is not None:
        t = values.type
        if pa.types.is_timestamp(t):
            ts = _utc(pc.cast(values, pa.timestamp("us", tz=t.tz), safe=False))
        elif pa.types.is_integer(t):
            ts = _epoch(values)
        elif pa.types.is_string(t) and nt_times:
            ts = _nt(values)
        elif pa.types.is_string(t) and _all_match(values, r"^\d{4}-\d\d-\d\d"):
            ts = _iso(values)
        elif pa.types.is_string(t) and _all_match(values, r"^\d+$"):
            ts = _epoch(pc.cast(values, pa.int64()))
    if ts is None:
        py = list(column) if values is None else values.to_pylist()
        ts = pa.array([_read_or_none(read_time, v) for v in py], _TS)
    return ts, pc.is_null(ts)


def _utc(values: pa.Array) -> pa.Array:
    """A microsecond timestamp column as UTC; naive times are taken as UTC."""
    if values.type.tz is None:
        return pc.assume_timezone(values, "UTC")
    return pc.cast(values, _TS)


def _epoch(values: pa.Array) -> pa.Array | None:
    """Epoch seconds, ms, us or ns told apart by magnitude (as the replay provider does);
    None (read value by value) when a value is negative."""
    if not pc.all(pc.fill_null(pc.greater_equal(values, 0), True)).as_py():
        return None
    v = pc.cast(values, pa.int64())
    micros = pc.case_when(
        pc.make_struct(
            pc.greater_equal(v, 10**17), pc.greater_equal(v, 10**14), pc.greater_equal(v, 10**11)
        ),
        pc.divide(v, 1000),
        v,
        pc.multiply(v, 1000),
        pc.multiply(v, 1_000_000),
    )
    return pc.cast(micros, _TS)


def _nt(values: pa.Array) -> pa.Array:
    """NinjaTrader ``yyyymmdd HHMMSS`` (UTC); null where a value is not one."""
    shaped = pc.fill_null(pc.match_substring_regex(values, _NT_TIME), False)
    parsed = pc.strptime(pc.utf8_trim_whitespace(values), "%Y%m%d %H%M%S", "us", error_is_null=True)
    return _utc(pc.if_else(shaped, parsed, pa.scalar(None, parsed.type)))


def _iso(values: pa.Array) -> pa.Array | None:
    """ISO 8601 times with offsets, or all naive (taken as UTC); None when neither reads the
    whole column (then it is read value by value)."""
    for target in (_TS, pa.timestamp("us")):
        try:
            return _utc(pc.cast(values, target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _all_match(values: pa.Array, pattern: str) -> bool:
    """Whether every non-null value matches ``pattern``."""
    return bool(pc.all(pc.fill_null(pc.match_substring_regex(values, pattern), True)).as_py())


def _read_or_none(read_time: Callable[[Any], datetime], value: Any) -> datetime | None:
    try:
        return read_time(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _array(column: Column) -> pa.Array | None:
    """The column as one Arrow array (text as ``string``), or None when it holds Python
    values."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        return None
    t = column.type
    if pa.types.is_dictionary(t):
        return _array(column.dictionary_decode())
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pc.cast(column, pa.string())
    return column
