"""The metrics' parts on their own: the commit-latency histogram with an injected clock,
the HTTP server (loopback by default, 404, limits, a failing render, a taken port), and
the ``metrics_port`` of ``streams.yaml``."""

from __future__ import annotations

import asyncio
import inspect
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mdp_core.metrics import LATENCY_BUCKETS, CommitLatency, MetricsServer
from mdp_core.models import Bar, Quote
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams

NOW = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)


def bar(ts: datetime, resolution: str = "5s") -> Bar:
    return Bar("AAPL", ts, 10.0, 11.0, 9.0, 10.5, 100.0, resolution=resolution)


def test_latency_counts_each_record_from_its_event_end() -> None:
    latency = CommitLatency(clock=NOW.timestamp)
    latency.observe([Quote("AAPL", NOW - timedelta(milliseconds=30), bid=1.0, ask=1.1)])
    latency.observe([bar(NOW - timedelta(seconds=5.2))])  # ended 0.2 s ago
    latency.observe([bar(NOW - timedelta(hours=2), "1m")])  # history: +Inf
    latency.observe([Quote("AAPL", NOW + timedelta(seconds=1), bid=1.0, ask=1.1)])  # skew: 0
    assert latency.count == 4
    assert latency.sum == pytest.approx(0.03 + 0.2 + 7140.0)
    cumulative = dict(latency.cumulative())
    assert cumulative["0.005"] == 1  # the clock-skewed one, counted as 0
    assert (cumulative["0.025"], cumulative["0.05"]) == (1, 2)
    assert (cumulative["0.1"], cumulative["0.25"]) == (2, 3)
    assert (cumulative["3600.0"], cumulative["+Inf"]) == (3, 4)
    assert len(cumulative) == len(LATENCY_BUCKETS) + 1


async def fetch(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_server_serves_metrics_on_loopback_and_nothing_else() -> None:
    assert inspect.signature(MetricsServer).parameters["host"].default == "127.0.0.1"
    body = b"# TYPE x counter\nx_total 3.0\n"

    async def render() -> bytes:
        return body

    async with asyncio.timeout(10), MetricsServer(render, port=0) as server:
        mine = [
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
        ]
        assert mine == [("127.0.0.1", server.port)]
        ok = await fetch(server.port, b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
        head, _, got = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and got == body
        samples = [s for f in text_string_to_metric_families(got.decode()) for s in f.samples]
        assert [(s.name, s.value) for s in samples] == [("x_total", 3.0)]
        missing = await fetch(server.port, b"GET /admin HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404")
        posted = await fetch(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert posted.startswith(b"HTTP/1.1 404")
        huge = await fetch(server.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
        assert huge == b""  # an oversized request head: hung up on, no answer
        assert (await fetch(server.port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_a_failing_render_drops_that_scrape_only() -> None:
    calls = 0

    async def render() -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return b"ok\n"

    async with asyncio.timeout(10), MetricsServer(render) as server:
        assert await fetch(server.port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
        assert (await fetch(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")).endswith(b"ok\n")


async def test_a_taken_port_is_refused_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def render() -> bytes:
            return b""

        with pytest.raises(OSError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: "):
            await MetricsServer(render, port=port).start()


def test_streams_yaml_metrics_ports(tmp_path: Path) -> None:
    spec = StreamSpec(name="a", symbols=["AAPL"], metrics_port=9108)
    assert (spec.metrics_port, spec.metrics_host) == (9108, "127.0.0.1")
    with pytest.raises(ValueError, match="metrics_port"):
        StreamSpec(name="a", symbols=["AAPL"], metrics_port=70_000)
    path = tmp_path / "streams.yaml"
    path.write_text(
        "streams:\n"
        "  - {name: a, provider: synthetic, symbols: [AAPL], metrics_port: 9108}\n"
        "  - {name: b, provider: synthetic, symbols: [MSFT], metrics_port: 9108}\n"
    )
    with pytest.raises(StreamsConfigError, match=r"'a' and 'b' share metrics_port"):
        load_streams(path)
    path.write_text(
        "streams:\n"
        "  - {name: a, provider: synthetic, symbols: [AAPL], metrics_port: 0}\n"
        "  - {name: b, provider: synthetic, symbols: [MSFT], metrics_port: 0}\n"
    )
    assert [s.metrics_port for s in load_streams(path)] == [0, 0]  # any free port, each
