"""ReplaySource: the real data files parsed to the right values, generic CSV/Parquet/JSON,
symbol and resolution inference, malformed rows, filtering, looping and stop."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mdp_core.models import Bar, Quote, Record
from mdp_core.providers.replay import ReplaySource

DATA = Path(__file__).resolve().parents[2] / "data"  # real market data, see data/README.md
SPY = DATA / "SPY_1min_2011-01.csv"
AAPL = DATA / "AAPL_1min_2023-05.csv"
GOOGL = DATA / "GOOGL_1min_2023-05.csv"
POLYGON = DATA / "polygon_AAPL_quotes_page1.json"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


async def replay(src: ReplaySource, limit: int | None = None) -> list[Record]:
    out: list[Record] = []
    async with asyncio.timeout(30), src:
        async for record in src.stream():
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


# -- the real files --------------------------------------------------------------------------


async def test_spy_ninjatrader_bars_are_end_stamped() -> None:
    src = ReplaySource(path=SPY)
    assert (src.format, src.mode, src.resolution, src.symbols) == (
        "ninjatrader",
        "bars",
        "1m",
        ["SPY"],
    )
    assert src.bar_timestamp == "end"
    bars = await replay(src)
    assert len(bars) == 14_180 and src.stats.records == 14_180 and src.stats.skipped == 0
    # line 1: 20110103 090100;126.35;126.39;126.35;126.39;1579 -> the minute that ENDS at 09:01
    assert bars[0] == Bar("SPY", utc(2011, 1, 3, 9, 0), 126.35, 126.39, 126.35, 126.39, 1579.0,
                          "1m", source="replay")  # fmt: skip
    # line 5: 20110103 092500;126.3;126.3;126.3;126.3;1000
    assert (bars[4].ts, bars[4].open, bars[4].volume) == (utc(2011, 1, 3, 9, 24), 126.3, 1000.0)
    # line 16: 20110103 111000;126.51;126.51;126.49;126.49;475
    assert (bars[15].ts, bars[15].high, bars[15].low, bars[15].close, bars[15].volume) == (
        utc(2011, 1, 3, 11, 9),
        126.51,
        126.49,
        126.49,
        475.0,
    )
    # last line: 20110201 010000;128.82;128.83;128.82;128.83;2415
    assert bars[-1] == Bar("SPY", utc(2011, 2, 1, 0, 59), 128.82, 128.83, 128.82, 128.83, 2415.0,
                           "1m", source="replay")  # fmt: skip


async def test_spy_start_stamp_can_be_chosen() -> None:
    bars = await replay(ReplaySource(path=SPY, bar_timestamp="start"), limit=1)
    assert bars[0].ts == utc(2011, 1, 3, 9, 1)


async def test_aapl_csv_with_stray_index_columns() -> None:
    src = ReplaySource(path=AAPL)
    assert (src.format, src.mode, src.resolution, src.symbols) == ("csv", "bars", "1m", ["AAPL"])
    assert src.bar_timestamp == "start"
    bars = await replay(src)
    assert len(bars) == 2_083
    # line 2: 0,0,0,2023-05-24 21:16:00+00:00,171.68,171.68,171.65,171.65,2031.0
    assert bars[0] == Bar("AAPL", utc(2023, 5, 24, 21, 16), 171.68, 171.68, 171.65, 171.65,
                          2031.0, "1m", source="replay")  # fmt: skip
    # line 1001: 999,1476,1476,2023-05-25 21:55:00+00:00,172.9,172.9,172.9,172.9,0.0
    assert (bars[999].ts, bars[999].close, bars[999].volume) == (
        utc(2023, 5, 25, 21, 55),
        172.9,
        0.0,
    )
    assert bars[-1].ts == utc(2023, 5, 26, 23, 59)


async def test_googl_csv_with_one_stray_index_column() -> None:
    bars = await replay(ReplaySource(path=GOOGL))
    assert len(bars) == 2_084 and {b.symbol for b in bars} == {"GOOGL"}
    # line 2: 0,0,2023-05-24 21:16:00+00:00,123.75,123.75,120.9,123.7,11010.0
    assert bars[0] == Bar("GOOGL", utc(2023, 5, 24, 21, 16), 123.75, 123.75, 120.9, 123.7,
                          11010.0, "1m", source="replay")  # fmt: skip
    # last line: 2083,3201,2023-05-26 23:59:00+00:00,124.82,124.82,124.82,124.82,200.0
    assert (bars[-1].ts, bars[-1].open, bars[-1].volume) == (
        utc(2023, 5, 26, 23, 59),
        124.82,
        200.0,
    )


async def test_polygon_quotes_replayed_in_time_order() -> None:
    src = ReplaySource(path=POLYGON)
    assert (src.format, src.mode, src.resolution, src.symbols) == ("json", "quotes", None, ["AAPL"])
    quotes = await replay(src)
    assert len(quotes) == 10
    assert [q.ts for q in quotes] == sorted(q.ts for q in quotes)
    # the file lists newest first; its last entry is the oldest:
    # bid 155.86 x 2, ask 155.87 x 2, sip_timestamp 1652191872690661000
    oldest = datetime(2022, 5, 10, 14, 11, 12, 690661, tzinfo=UTC)
    assert quotes[0] == Quote("AAPL", oldest, 155.86, 155.87, 2.0, 2.0, source="replay")
    # its first entry, the newest: bid 155.85 x 4, ask 155.87 x 3, sip 1652191872800638700
    newest = datetime(2022, 5, 10, 14, 11, 12, 800638, tzinfo=UTC)
    assert quotes[-1] == Quote("AAPL", newest, 155.85, 155.87, 4.0, 3.0, source="replay")


# -- generic files ---------------------------------------------------------------------------


async def test_generic_quotes_csv_with_symbol_column_filtered(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(
        "symbol,ts,bid,ask,bid_size,ask_size,last,last_size\n"
        "aapl,2024-01-02T14:30:00Z,190.1,190.2,100,200,190.15,5\n"
        "msft,2024-01-02 14:30:00.500000,370.0,370.1,300,100,,\n"  # naive: taken as UTC
        "AAPL,1704205801000,190.2,190.3,100,100,,\n"  # epoch ms
    )
    everything = await replay(ReplaySource(path=path))
    assert [(q.symbol, q.ts) for q in everything] == [
        ("AAPL", utc(2024, 1, 2, 14, 30)),
        ("MSFT", datetime(2024, 1, 2, 14, 30, 0, 500000, tzinfo=UTC)),
        ("AAPL", utc(2024, 1, 2, 14, 30, 1)),
    ]
    assert everything[0] == Quote("AAPL", utc(2024, 1, 2, 14, 30), 190.1, 190.2, 100.0, 200.0,
                                  190.15, 5.0, source="replay")  # fmt: skip
    src = ReplaySource(["aapl"], path=path)
    aapl = await replay(src)
    assert [q.symbol for q in aapl] == ["AAPL", "AAPL"] and src.stats.filtered == 1
    assert src.symbols == ["AAPL"]


async def test_generic_bars_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    bars = [
        Bar("IBM", utc(2024, 1, 2, 14, 30) + timedelta(minutes=5 * i), 100.0 + i, 101.0 + i,
            99.0 + i, 100.5 + i, 1000.0 * i, "5m", vwap=100.2 + i, trade_count=10 * i,
            source="feed-x")
        for i in range(5)
    ]  # fmt: skip
    columns = {k: [b.to_dict()[k] for b in bars] for k in bars[0].to_dict() if k != "ts"}
    columns["ts"] = [b.ts for b in bars]
    path = tmp_path / "bars.parquet"
    pq.write_table(pa.table(columns), path)
    src = ReplaySource(path=path)
    assert (src.format, src.mode, src.resolution, src.symbols) == ("parquet", "bars", "5m", [])
    assert await replay(src) == bars


async def test_bars_csv_with_resolution_column_rejects_other_resolutions(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume,resolution\n"
        "X,2024-01-02T14:30:00+00:00,1,2,1,2,10,1m\n"
        "X,2024-01-02T14:31:00+00:00,1,2,1,2,10,5m\n"
        "X,2024-01-02T14:32:00+00:00,1,2,1,2,10,1 min\n"
    )
    src = ReplaySource(path=path)
    bars = await replay(src)
    assert src.resolution == "1m" and [b.ts.minute for b in bars] == [30, 32]
    assert src.errors == ["mixed.csv line 3: resolution '5m' differs from the file's resolution 1m"]


def test_symbol_comes_from_column_then_argument_then_file_name(tmp_path: Path) -> None:
    assert ReplaySource(path=AAPL).file_symbol == "AAPL"  # file name
    assert ReplaySource(path=AAPL, symbol="aapl.old").file_symbol == "AAPL.OLD"  # argument
    path = tmp_path / "lower_case_name.csv"
    path.write_text("ts,open,high,low,close,volume\n2024-01-02T14:30:00Z,1,1,1,1,1\n")
    with pytest.raises(ValueError, match=r"no symbol column .* pass symbol="):
        ReplaySource(path=path, file_resolution="1m")
    assert ReplaySource(path=path, symbol="X", file_resolution="1m").symbols == ["X"]


def test_resolution_is_inferred_from_the_data(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    rows = [f"2024-01-02T14:{m:02d}:00Z,1,1,1,1,1" for m in (0, 15, 20, 30)]
    path.write_text("ts,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    assert ReplaySource(path=path, symbol="X").resolution == "5m"
    assert ReplaySource(path=path, symbol="X", file_resolution="1 min").resolution == "1m"


def test_file_and_mode_mistakes_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        ReplaySource(path=tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="holds bars, not 'quotes'"):
        ReplaySource(path=SPY, mode="quotes")
    path = tmp_path / "X_other.csv"
    path.write_text("ts,colour\n2024-01-02T14:30:00Z,red\n")
    with pytest.raises(ValueError, match="neither bars nor quotes"):
        ReplaySource(path=path)


# -- malformed rows --------------------------------------------------------------------------


def spy_copy(tmp_path: Path, lines: int, edits: dict[int, str]) -> Path:
    """The first ``lines`` lines of the SPY file, with some lines (1-based) replaced."""
    text = SPY.read_text().splitlines()[:lines]
    for number, line in edits.items():
        text[number - 1] = line
    path = tmp_path / "SPY_1min_2011-01.csv"
    path.write_text("\n".join(text) + "\n")
    return path


async def test_malformed_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    path = spy_copy(tmp_path, 20, {
        3: "20110103 090600;126.36;126.36;126.36",  # a field short
        9: "2011-01-03 10:33;126.46;126.46;126.46;126.46;2000",  # not yyyymmdd HHMMSS
        12: "20110103 111000;126.51;126.40;126.49;126.49;475",  # high below open
        17: "20110103 114600;126.46;abc;126.46;126.46;500",
    })  # fmt: skip
    src = ReplaySource(path=path)
    bars = await replay(src)
    assert len(bars) == 16 and src.stats.skipped == 4 and src.stats.rows == 20
    assert src.errors[0].startswith("SPY_1min_2011-01.csv line 3: expected 6 fields")
    assert src.errors[1].startswith("SPY_1min_2011-01.csv line 9: ts '2011-01-03 10:33'")
    assert "line 12: Bar SPY" in src.errors[2] and "high=126.4" in src.errors[2]
    assert src.errors[3] == "SPY_1min_2011-01.csv line 17: high 'abc' is not a number"
    expected_good = [ln for ln in range(1, 21) if ln not in (3, 9, 12, 17)]
    minutes = [int(line[11:13]) for line in SPY.read_text().splitlines()]
    assert [b.ts.minute for b in bars] == [(minutes[ln - 1] - 1) % 60 for ln in expected_good]


async def test_strict_raises_at_the_malformed_row_after_the_good_ones(tmp_path: Path) -> None:
    path = spy_copy(tmp_path, 20, {17: "20110103 114600;126.46;abc;126.46;126.46;500"})
    src = ReplaySource(path=path, strict=True)
    got: list[Record] = []
    with pytest.raises(
        ValueError, match=r"^SPY_1min_2011-01.csv line 17: high 'abc' is not a number$"
    ):
        async with asyncio.timeout(10), src:
            async for bar in src.stream():
                got.append(bar)
    assert len(got) == 16


async def test_malformed_json_items_name_their_index(tmp_path: Path) -> None:
    items = json.loads(POLYGON.read_text())["results"][:3]
    items[1]["bid_price"] = "n/a"
    path = tmp_path / "polygon_MSFT_quotes.json"
    path.write_text(json.dumps({"results": items}))
    src = ReplaySource(path=path)
    quotes = await replay(src)
    assert len(quotes) == 2 and {q.symbol for q in quotes} == {"MSFT"}
    assert src.errors == ["polygon_MSFT_quotes.json results[1]: bid 'n/a' is not a number"]


# -- filtering, looping, pacing, stop --------------------------------------------------------


async def test_a_file_of_another_symbol_yields_nothing() -> None:
    src = ReplaySource(["MSFT"], path=SPY)
    assert await replay(src) == [] and src.symbols == ["MSFT"]


async def test_loop_repeats_with_timestamps_shifted_so_keys_never_repeat(tmp_path: Path) -> None:
    path = spy_copy(tmp_path, 5, {})
    first_pass = await replay(ReplaySource(path=path))
    src = ReplaySource(path=path, loop=True)
    looped = await replay(src, limit=15)
    assert src.stats.passes == 2
    span = first_pass[-1].ts - first_pass[0].ts + timedelta(minutes=1)
    for n in range(3):
        shifted = [(b.ts + n * span, b.close) for b in first_pass]
        assert [(b.ts, b.close) for b in looped[5 * n : 5 * n + 5]] == shifted
    assert len({b.key for b in looped}) == 15
    assert [b.ts for b in looped] == sorted(b.ts for b in looped)


async def test_file_details_are_worked_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON is parsed once, however many passes and checks; a CSV is opened once per pass
    # (plus once to read its header and delimiter), never re-sniffed.
    parses: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, **kw: parses.append(1) or real_loads(text))
    src = ReplaySource(path=POLYGON, loop=True)
    assert len(await replay(src, limit=25)) == 25 and src.stats.passes == 2
    assert len(parses) == 1
    monkeypatch.undo()

    path = tmp_path / "X_bars.csv"  # no resolution in the name: inferred from the data
    path.write_text("ts;open;high;low;close;volume\n" + "".join(
        f"2024-01-02T14:3{i}:00Z;1;1;1;1;1\n" for i in range(3)
    ))  # fmt: skip
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", counting_open)
    src = ReplaySource(path=path, format="csv", loop=True)
    assert (src.resolution, len(opened)) == ("1m", 2)  # the header, the inference rows
    assert len(await replay(src, limit=7)) == 7 and src.stats.passes == 2
    assert len(opened) == 2 + 3  # and one per pass


async def test_stop_interrupts_a_real_time_replay(tmp_path: Path) -> None:
    path = tmp_path / "X_1d_slow.csv"
    path.write_text("ts,open,high,low,close,volume\n2024-01-02,1,1,1,1,1\n2024-01-03,1,1,1,1,1\n")
    src = ReplaySource(path=path, speed=1.0)  # the second bar is a day away
    async with asyncio.timeout(10):
        await src.start()
        stream = src.stream()
        assert (await anext(stream)).ts == utc(2024, 1, 2)
        waiting = asyncio.create_task(anext(stream, None))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # paced: the next bar is due in a day
        await src.stop()
        assert await waiting is None


def test_auto_format_detection(tmp_path: Path) -> None:
    nt = tmp_path / "SPY_1min_copy.txt"
    shutil.copy(SPY, nt)
    assert ReplaySource(path=nt).format == "ninjatrader"
    assert ReplaySource(path=AAPL).format == "csv"
    assert ReplaySource(path=POLYGON).format == "json"
