"""The columnar validation of ``mdp import`` and the models agree, row for row: on files of
good and bad values (CSV bars, CSV quotes, polygon-style JSON quotes), the rows the columns
refuse are exactly those the replay provider's row parser (the models) refuses, and the
rows they keep hold exactly the values of the models' records."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdp_core.columns import _floats
from mdp_core.importing import _batches
from mdp_core.providers.replay import ReplaySource
from mdp_core.store.sinks import BarsSink, QuotesSink

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)

GOOD_NUMBERS = ["10", "10.5", "9", "11", "1e1", "0.5", "100", "2031.0"]
ODD_NUMBERS = ["", "abc", "-1", "0", "nan", "NaN", "inf", "-inf", " 7", "1_0", "+3", ".5",
               "5.", "1e400", "0x10", "Infinity", "true", "-0"]  # fmt: skip
GOOD_SYMBOLS = ["AAPL", "msft", " spy ", "BRK.B"]
ODD_SYMBOLS = ["", "  ", "A" * 65, "x\ty", "ok"]
ODD_TIMES = ["garbage", "", "2024-13-01 00:00:00", "-5", "2024-01-02 14:30:00.1234567",
             "20240102 250000", "1.5e9", "2024-01-02", "1850-06-01 12:00:00",
             "2250-01-01 00:00:00"]  # fmt: skip


def _time(style: str, i: int) -> str:
    ts = T0 + timedelta(minutes=i)
    epoch = int(ts.timestamp())
    return {
        "offset": ts.isoformat(sep=" "),
        "zulu": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "east": ts.astimezone(datetime.now().astimezone().tzinfo).isoformat(),
        "naive": ts.replace(tzinfo=None).isoformat(sep=" "),
        "seconds": str(epoch),
        "millis": str(epoch * 1000),
        "nanos": str(epoch * 10**9 + 123456789),
        "ninjatrader": ts.strftime("%Y%m%d %H%M%S"),
    }[style]


TIME_STYLES = ["offset", "zulu", "east", "naive", "seconds", "millis", "nanos", "ninjatrader"]


@st.composite
def columns(draw: st.DrawFn, good: list[str], odd: list[str], n: int) -> list[str]:
    """``n`` values of one column: all good (the bulk path), or good and odd mixed."""
    pool = good + odd if draw(st.booleans()) else good
    return draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))


@st.composite
def time_column(draw: st.DrawFn, n: int) -> list[str]:
    style = draw(st.sampled_from(TIME_STYLES))
    values = [_time(style, i) for i in range(n)]
    if draw(st.booleans()):
        for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
            values[i] = draw(st.sampled_from([*ODD_TIMES, _time("naive", i)]))
    return values


@st.composite
def bar_files(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    n = draw(st.integers(1, 25))
    header = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    cols = [draw(columns(GOOD_SYMBOLS, ODD_SYMBOLS, n)), draw(time_column(n))]
    if draw(st.booleans()):  # consistent prices: low <= open, close <= high
        scale = draw(st.sampled_from([1.0, 10.0, 0.5]))
        cols += [[f"{price * scale}"] * n for price in (10, 11, 9, 10.5)]
        for i in draw(st.lists(st.integers(0, n - 1), max_size=2)):
            cols[2 + draw(st.integers(0, 3))][i] = draw(st.sampled_from(ODD_NUMBERS))
    else:
        cols += [draw(columns(GOOD_NUMBERS, ODD_NUMBERS, n)) for _ in range(4)]
    cols.append(draw(columns(["0", "100", "2031.0"], ODD_NUMBERS, n)))
    for name, good, odd in (
        ("vwap", ["", "10.2"], ["nan", "-1", "abc", "0"]),
        ("trade_count", ["", "3", "0"], ["3.5", "-1", "nan", "abc", "inf", "1e3"]),
        ("resolution", ["1m", "1 min", "60s"], ["5m", "bad", ""]),
        ("source", ["", "vendor"], ["x"]),
    ):
        if draw(st.booleans()):
            header.append(name)
            cols.append(draw(columns(good, odd, n)))
    return header, [list(row) for row in zip(*cols, strict=True)]


@st.composite
def quote_files(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    n = draw(st.integers(1, 25))
    header = ["symbol", "ts", "bid", "ask", "bid_size", "ask_size", "last", "last_size"]
    cols = [draw(columns(GOOD_SYMBOLS, ODD_SYMBOLS, n)), draw(time_column(n))]
    cols += [draw(columns([*GOOD_NUMBERS, ""], ODD_NUMBERS, n)) for _ in range(6)]
    return header, [list(row) for row in zip(*cols, strict=True)]


def _normal(row: Any) -> tuple[Any, ...]:
    """A stage row, times as UTC datetimes, NaN-free (comparable)."""
    values = row.values() if isinstance(row, dict) else row
    return tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in values)


def agree(src: ReplaySource) -> None:
    """The columns and the models judge every row of ``src`` alike."""
    invalid: set[str] = set()
    kept: list[tuple[Any, ...]] = []
    refused: set[int] = set()
    for batch in _batches(src, invalid):
        kept += [_normal(row) for row in batch.table.to_pylist()]
        refused.update(batch.refused)
    sink = BarsSink if src.mode == "bars" else QuotesSink
    model_kept: list[tuple[Any, ...]] = []
    model_refused: set[int] = set()
    ordinal = 0
    for where, values in src.rows():
        if where in invalid:  # Arrow could not split it: the import asks the models too
            continue
        try:
            record: Any = src.parse_row(values)
            model_kept += [_normal(row) for row in sink.rows([record])]
        except (ValueError, TypeError, OverflowError):
            model_refused.add(ordinal)
        ordinal += 1
    assert refused == model_refused
    assert sorted(kept, key=repr) == sorted(model_kept, key=repr)
    for row in kept:
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in row)


def _csv(header: list[str], rows: list[list[str]]) -> Path:
    path = Path(tempfile.mkdtemp(prefix="mdp-columns-")) / "TEST_1min.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(bar_files())
def test_bars_columns_and_models_agree(data: tuple[list[str], list[list[str]]]) -> None:
    path = _csv(*data)
    agree(ReplaySource(path=path, mode="bars", file_resolution="1m"))


@SETTINGS
@given(bar_files(), st.sampled_from(["start", "end"]))
def test_bars_stamped_with_their_end_agree(
    data: tuple[list[str], list[list[str]]], stamp: Literal["start", "end"]
) -> None:
    path = _csv(*data)
    agree(ReplaySource(path=path, mode="bars", file_resolution="1m", bar_timestamp=stamp))


@SETTINGS
@given(quote_files())
def test_quotes_columns_and_models_agree(data: tuple[list[str], list[list[str]]]) -> None:
    path = _csv(*data)
    agree(ReplaySource(path=path, mode="quotes"))


JSON_PRICES = [155.85, 155, "155.8", None, True, "abc", -1, 0, math.nan, math.inf, "", 1e400]
JSON_TIMES = [1652191872800638700, 1652191872800638, 1652191872800, 1652191872, None, -5,
              "2022-05-10T14:11:12Z", "garbage", 1652191872.5, True]  # fmt: skip


@SETTINGS
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "bid_price": st.sampled_from(JSON_PRICES),
                "ask_price": st.sampled_from(JSON_PRICES[:2]),
                "bid_size": st.sampled_from([3, 4.0, None, -1, "x"]),
                "sip_timestamp": st.sampled_from(JSON_TIMES),
            }
        )
        | st.sampled_from([[], "not an object"]),
        min_size=1,
        max_size=20,
    )
)
def test_polygon_json_columns_and_models_agree(items: list[Any]) -> None:
    path = Path(tempfile.mkdtemp(prefix="mdp-columns-")) / "polygon_quotes.json"
    path.write_text(json.dumps({"results": items}))
    if not any(isinstance(item, dict) for item in items):
        return  # no columns at all: the replay provider refuses the file
    agree(ReplaySource(path=path, mode="quotes", symbol="AAPL"))


def test_each_odd_number_reads_as_float_reads_it() -> None:
    """Value by value, the bulk number reading takes what ``float()`` takes, to the same
    value, and refuses the rest (whether Arrow or ``float()`` does the reading)."""
    for text in [*GOOD_NUMBERS, *ODD_NUMBERS, "1e-400", "-1.5E+3", "00012", "INF", "nAn"]:
        values, unreadable = _floats(pa.array([text, "1"]), 2)
        try:
            expected: float | None = float(text) if text else None
        except ValueError:
            assert unreadable.to_pylist() == [True, False], text
            continue
        got = values.to_pylist()[0]
        assert unreadable.to_pylist() == [False, False], text
        if expected is not None and math.isnan(expected):
            assert got is not None and math.isnan(got), text
        else:
            assert got == expected, text


def test_json_values_of_mixed_types_are_judged_one_by_one(tmp_path: Path) -> None:
    """A found case: ``True`` among epoch numbers is not a time for the models, so it must
    not become 1.0 in a column of floats."""
    items = [
        {"bid_price": 155.85, "ask_price": 155.85, "bid_size": 3, "sip_timestamp": t}
        for t in (1_652_191_872_800_638, 1652191872.5, True)
    ]
    path = tmp_path / "polygon_quotes.json"
    path.write_text(json.dumps({"results": items}))
    agree(ReplaySource(path=path, mode="quotes", symbol="AAPL"))
