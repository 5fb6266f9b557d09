"""Oversized or malformed gateway messages, replay rows and configuration values each get a
clear error, and the stream keeps going.

The gateway side runs the real simulated gateway with the real ib_async client over TCP;
replay and configuration go through `mdp` subprocesses as a user runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import dagster as dg
import pytest
from ib_async import IB, Stock, Ticker
from pydantic import ValidationError

from mdp_core.coordinator import CoordinatorRuntimeSettings
from mdp_core.errors import error_info
from mdp_core.gateway import SimulatedGateway
from mdp_core.gateway.codec import encode
from mdp_core.gateway.session import Session
from mdp_core.models import Bar, Quote
from mdp_core.providers.ibkr import IBKRStreamSource
from mdp_core.settings import IBKRSettings, MdpSettings, describe_settings_error
from mdp_core.store.database import Database, DatabaseError
from mdp_core.streams import StreamsConfigError
from mdp_dagster.resources import DlqResource, StoreResource
from mdp_dagster.streaming import StreamRunConfig, load_stream_specs, stream_job
from tests.ibkr.helpers import Collector, make_source
from tests.security.helpers import mdp_env, run_all, sql, write_text

TIMEOUT = 30  # seconds; every async test is bounded with asyncio.timeout


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    """AAPL and MSFT random walks; a simulated minute per real second."""
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT"], port=0, seed=5, time_compression=60.0, tick_interval=0.02
    ) as gateway:
        yield gateway


def session_of(gw: SimulatedGateway, client_id: int) -> Session:
    """The gateway's session with ``client_id`` (its write path injects frames)."""
    return next(s for s in gw._sessions if s.client_id == client_id and not s.closed)


async def pumps_until(gw: SimulatedGateway, predicate: Callable[[], bool]) -> None:
    while not predicate():
        await gw.wait_pumps(1)


# -- gateway: garbage from a client --------------------------------------------------------------


async def _bad_client(
    port: int, greeting: bytes, after_start: bytes | None, client_id: int
) -> bytes:
    """Connect, send ``greeting`` (and, once the API is started as ``client_id``,
    ``after_start``); return everything the gateway sent until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(greeting)
        if after_start is not None:
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(size)  # server version and time
            writer.write(encode(71, 2, client_id, "") + after_start)  # startApi, then garbage
        return await reader.read()  # until EOF: the gateway closed this session
    finally:
        writer.close()


HANDSHAKE = b"API\0" + struct.pack(">I", 9) + b"v157..178"
GARBAGE = {
    "not the TWS protocol": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, "handshake refused"),
    "oversized version frame": (
        b"API\0" + struct.pack(">I", 10_000_000), None, "exceeds the limit of 4096 bytes",
    ),
    "oversized frame": (HANDSHAKE, struct.pack(">I", 2**31), "exceeds the limit"),
    "not UTF-8": (HANDSHAKE, struct.pack(">I", 4) + b"\xff\xfe1\x00", "not UTF-8"),
    "no NUL terminator": (HANDSHAKE, struct.pack(">I", 3) + b"abc", "does not end with NUL"),
}  # fmt: skip


async def test_garbage_clients_are_dropped_while_a_real_session_keeps_streaming(
    gw: SimulatedGateway, logs: list[str]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=41)
        try:
            aapl = Stock("AAPL", "SMART", "USD")
            await ib.qualifyContractsAsync(aapl)
            ticker = ib.reqMktData(aapl)
            updates: list[Ticker] = []
            ticker.updateEvent += updates.append
            await pumps_until(gw, lambda: len(updates) >= 3)
            await asyncio.gather(
                *(
                    _bad_client(gw.port, greeting, after, 80 + i)
                    for i, (greeting, after, _) in enumerate(GARBAGE.values())
                )
            )  # each returns once the gateway has closed that connection
            seen = len(updates)
            await pumps_until(gw, lambda: len(updates) >= seen + 10)  # still streaming
            assert ib.isConnected()
            assert [s.client_id for s in gw.sessions()] == [41]
        finally:
            ib.disconnect()
    # each bad client was closed, with a log line naming its problem
    errors = [line for line in logs if "ERROR" in line and "gateway:" in line]
    for name, (_, _, expected) in GARBAGE.items():
        assert any(expected in line for line in errors), f"{name}: no log line with {expected!r}"
    events = gw.stats()["events"]
    assert events["malformed_sessions"] + events["handshake_failures"] == len(GARBAGE)


# -- gateway -> IBKRStreamSource: malformed messages -----------------------------------------------


async def test_malformed_messages_from_the_gateway_are_logged_and_quotes_keep_coming(
    gw: SimulatedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ib_async")
    async with asyncio.timeout(TIMEOUT):
        source = make_source(gw, ["AAPL", "MSFT"], "quotes")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: got.count("AAPL") >= 5 and got.count("MSFT") >= 5)
        session = session_of(gw, source.client_id)
        req_id = next(iter(session.ticks))
        assert session.write(
            [
                encode(1, 6, req_id, 1, "not-a-price", 100, 0),  # tickPrice: a bad number
                encode(2, 6, req_id),  # tickSize without its fields
                encode(99999, 1, "x"),  # an unknown message id
                encode("garbage", 1),  # a message id that is not a number
                struct.pack(">I", 5) + b"\xff\xfe1\x00\x00",  # not UTF-8
            ]
        )
        before = {s: got.count(s) for s in ("AAPL", "MSFT")}
        await got.wait_for(gw, lambda: all(got.count(s) >= before[s] + 10 for s in before))
        stats = source.stats()
        records = await got.finish()
    decoder_errors = [r for r in caplog.records if r.name == "ib_async.Decoder"]
    assert len(decoder_errors) == 5  # each malformed message logged by ib_async, once
    assert all(r.levelno == logging.ERROR and r.exc_info for r in decoder_errors)
    assert stats["state"] == "streaming" and stats["disconnects"] == 0
    assert all(isinstance(q, Quote) and q.bid is not None and q.ask is not None for q in records)


async def test_an_invalid_bar_from_the_gateway_is_left_out_and_bars_keep_coming(
    gw: SimulatedGateway, logs: list[str]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        source: IBKRStreamSource = make_source(gw, ["AAPL"], "bars")
        await source.start()
        got = Collector(source)
        await got.wait_for(gw, lambda: len(got.records) >= 3)
        session = session_of(gw, source.client_id)
        req_id = next(iter(session.bars))
        future = int(got.records[-1].ts.timestamp()) + 3600
        # high 9 below low 11: no such bar can exist
        assert session.write([encode(50, 3, req_id, future, 10.0, 9.0, 11.0, 10.0, 100, 10.0, 5)])
        await pumps_until(gw, lambda: source.stats()["invalid"] == 1)
        seen = len(got.records)
        await got.wait_for(gw, lambda: len(got.records) >= seen + 5)
        records = await got.finish()
    assert all(isinstance(b, Bar) and b.low <= b.high for b in records)
    assert int(records[-1].ts.timestamp()) < future  # the invalid bar did not get through
    assert any("invalid data for AAPL left out" in line and "high" in line for line in logs)


# -- replay rows -----------------------------------------------------------------------------------

CSV = """\
symbol,ts,open,high,low,close,volume
SPY,2024-01-03T15:00:00Z,10,11,9,10.5,100
SPY,2024-01-03T15:01:00Z,abc,11,9,10.5,100
SPY,2024-01-03T15:02:00Z,10,11,9
SPY,yesterday at noon,10,11,9,10.5,100
SPY,2024-01-03T15:03:00Z,10,11,-9,10.5,100
SPY,2024-01-03T15:04:00Z,10,9,11,10,100
"X'); DROP TABLE mdp.bars; --",2024-01-03T15:00:00Z,10,11,9,10.5,100
株式,2024-01-03T15:00:00Z,10,11,9,10.5,100
SPY,2024-01-03 15:05:00,10,11,9,10.5,100
SPY,2024-01-03T16:06:00+01:00,10,11,9,10.5,100
"""
BAD_LINES = {
    3: "open 'abc' is not a number",
    4: "expected at least 7 fields, got 5",
    5: "ts 'yesterday at noon' is not a timestamp",
    6: "Bar.low -9.0 is invalid: expected a finite price > 0",
    7: "has inconsistent prices open=10.0 high=9.0 low=11.0 close=10.0: expected low <= open",
}


def test_malformed_replay_rows_are_reported_and_the_rest_stored(
    fresh_dsn: str, tmp_path: Path
) -> None:
    path = write_text(tmp_path / "bars_1min.csv", CSV)  # the resolution from the name
    summary = tmp_path / "summary.json"
    [result] = run_all(
        [
            (
                ["stream", "--provider", "replay", "--mode", "bars", "--resolution", "1m",
                 "--symbols", "SPY,X'); DROP TABLE mdp.bars; --,株式",
                 "--option", f"path={path}",
                 "--summary-json", str(summary), "--quiet"],
                mdp_env(MDP_PG_DSN=fresh_dsn),
            )
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    logged = result.stderr.splitlines()
    for line, message in BAD_LINES.items():  # each with its file and line, once
        found = [text for text in logged if f"bars_1min.csv line {line}: " in text]
        assert len(found) == 1 and message in found[0], (line, result.stderr)
    assert "5 malformed rows skipped" in result.stderr
    counters = json.loads(summary.read_text())
    assert counters["balanced"] and counters["state"] == "finished"
    assert counters["received"] == 10 and counters["dropped"] == {"invalid": 5}
    assert counters["committed"] == counters["new_rows"] == 5
    rows = sql(fresh_dsn, "SELECT symbol, ts FROM mdp.bars")
    assert sorted((r["symbol"], r["ts"].isoformat()) for r in rows) == [
        ("SPY", "2024-01-03T15:00:00+00:00"),
        ("SPY", "2024-01-03T15:05:00+00:00"),  # a naive time is UTC (documented)
        ("SPY", "2024-01-03T15:06:00+00:00"),  # an offset is honoured
        ("X'); DROP TABLE MDP.BARS; --", "2024-01-03T15:00:00+00:00"),
        ("株式", "2024-01-03T15:00:00+00:00"),
    ]


# -- configuration values --------------------------------------------------------------------------

STREAM = ["stream", "--provider", "synthetic", "--mode", "quotes", "--symbols", "AAPL",
          "--option", "rate=0", "--option", "max_items=10", "--quiet"]  # fmt: skip
# (environment, command, what the error must say)
BAD_CONFIG = [
    ({"MDP_COORDINATOR_WORKERS": "0"}, STREAM,
     ["MDP_COORDINATOR_WORKERS='0'", "greater than or equal to 1"]),
    ({"MDP_COORDINATOR_OVERFLOW": "sideways"}, STREAM,
     ["MDP_COORDINATOR_OVERFLOW='sideways'", "'block', 'drop_oldest' or 'error'"]),
    ({"MDP_IBKR_PORT": "70000"}, [*STREAM[:2], "ibkr", *STREAM[3:7], "--quiet"],
     ["MDP_IBKR_PORT='70000'", "less than or equal to 65535"]),
    ({"MDP_LOG_LEVEL": "LOUD"}, STREAM, ["MDP_LOG_LEVEL='LOUD'", "'TRACE', 'DEBUG', 'INFO'"]),
    ({"MDP_LOG_LEVEL": "LOUD"}, ["db", "status"], ["MDP_LOG_LEVEL='LOUD'", "'TRACE'"]),
    ({"MDP_PG_DSN": "not-a-dsn"}, STREAM,
     ["'not-a-dsn'", "expected a DSN like postgresql://", "MDP_PG_DSN"]),
    ({"MDP_PG_DSN": "not-a-dsn"}, ["db", "status"],
     ["'not-a-dsn'", "expected a DSN like postgresql://", "MDP_PG_DSN"]),
    ({"MDP_PG_DSN": "postgresql://u@127.0.0.1:70000/mdp"}, ["db", "migrate"],
     ["Port out of range 0-65535", "MDP_PG_DSN"]),
]  # fmt: skip


def test_bad_environment_values_give_a_clear_error_not_a_traceback(fresh_dsn: str) -> None:
    results = run_all(
        (command, mdp_env(**{"MDP_PG_DSN": fresh_dsn, **env})) for env, command, _ in BAD_CONFIG
    )
    for (env, command, expected), result in zip(BAD_CONFIG, results, strict=True):
        shown = result.stdout + result.stderr
        assert result.returncode == 1, (env, command, shown)
        assert "Traceback" not in shown, (env, shown)
        for text in expected:
            assert text in shown, (env, command, text, shown)
    assert sql(fresh_dsn, "SELECT count(*) AS n FROM mdp.quotes")[0]["n"] == 0  # nothing ran


@pytest.mark.parametrize(
    ("variable", "value", "settings", "expected"),
    [
        ("MDP_LOG_LEVEL", "LOUD", MdpSettings, "'TRACE', 'DEBUG'"),
        ("MDP_LOG_FORMAT", "xml", MdpSettings, "'text' or 'json'"),
        ("MDP_IBKR_PORT", "70000", IBKRSettings, "less than or equal to 65535"),
        ("MDP_IBKR_CLIENT_ID", "minus one", IBKRSettings, "valid integer"),
        ("MDP_COORDINATOR_WORKERS", "0", CoordinatorRuntimeSettings, "greater than or equal to 1"),
        ("MDP_COORDINATOR_OVERFLOW", "sideways", CoordinatorRuntimeSettings, "'block'"),
    ],
)
def test_bad_settings_in_the_python_api_name_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, settings: type, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        settings()
    field = variable.lower().removeprefix("mdp_").removeprefix("ibkr_")
    assert field in str(caught.value) and repr(value) in str(caught.value)
    described = describe_settings_error(caught.value)
    assert described == f"invalid setting {variable}={value!r}: " + caught.value.errors()[0]["msg"]
    assert expected in described
    assert error_info(caught.value).message == described  # what DLQ records and stats show


async def test_a_malformed_dsn_in_the_environment_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_PG_DSN", "not-a-dsn")
    with pytest.raises(DatabaseError, match=r"'not-a-dsn'.*expected a DSN like .*MDP_PG_DSN"):
        await Database.connect()


# -- streams.yaml for Dagster ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("coordinator: {workers: 0}",
         "field 'coordinator.workers': Input should be greater than or equal to 1 (got 0)"),
        ("resolution: 7s", "field 'resolution': Value error, unsupported resolution '7s'"),
        ("symbols: ['']", "field 'symbols': Value error, invalid symbol ''"),
        ("channel_overflow: sideways", "field 'channel_overflow'"),
        ("provider: ibkr, client_id: -3",
         "field 'client_id': Input should be greater than or equal to 0"),
        ("throttle: fast", "field 'throttle'"),
        ("colour: blue", "field 'colour': Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_streams_yaml_value_names_the_entry_and_field(
    tmp_path: Path, entry: str, expected: str
) -> None:
    path = write_text(
        tmp_path / "streams.yaml",
        "streams:\n  - {name: ok, provider: synthetic, symbols: [SPY]}\n"
        f"  - {{name: a, {entry if 'symbols' in entry else 'symbols: [AAPL], ' + entry}}}\n",
    )
    with pytest.raises(StreamsConfigError) as caught:
        load_stream_specs(path)
    assert str(caught.value).startswith(f"{path}: streams[1] ('a'): ")
    assert expected in str(caught.value)


def test_a_bad_provider_option_fails_the_dagster_run_clearly(
    fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    path = write_text(
        tmp_path / "streams.yaml",
        "streams:\n  - {name: s, provider: synthetic, mode: quotes, symbols: [AAPL],\n"
        "     provider_options: {start: 'yesterday at noon'}}\n",
    )
    monkeypatch.setenv("MDP_STREAMS_FILE", str(path))
    with dg.instance_for_test() as instance:
        result = stream_job.execute_in_process(
            run_config=dg.RunConfig(
                ops={"run_stream": StreamRunConfig(stream="s", max_seconds=30)}
            ),
            instance=instance,
            resources={"store": StoreResource(), "dlq": DlqResource()},
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.user_failure_data) + repr(failure.step_failure_data)
    assert "start 'yesterday at noon' is invalid: expected an ISO 8601 time" in message
