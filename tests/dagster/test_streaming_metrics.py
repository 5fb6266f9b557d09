"""A stream run launched through Dagster (a real instance) serves Prometheus metrics when its
stream in streams.yaml has ``metrics_port``: scraped while it runs, once the gateway has gone
quiet its counters equal the run's final summary (the last progress observation)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mdp_core.gateway import SimulatedGateway
from tests.dagster.helpers import (
    metadata_values,
    observations,
    run_log_messages,
    run_stream,
    sql_value,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float] | None:
    """``name`` (``name{policy}`` for drops) -> value; ``None`` while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["stream"] == "ibkr_quotes"
            policy = sample.labels.get("policy")
            values[sample.name + (f"{{{policy}}}" if policy else "")] = sample.value
    return values


def _settle_then_interrupt(
    port: int, gateway: SimulatedGateway, done: threading.Event, out: dict[str, object]
) -> threading.Thread:
    """Scrape until 100 quotes are committed, pause the gateway, scrape until the counters
    stop moving with nothing pending, keep that scrape, then SIGINT this process (the run
    drains and ends). Bounded by 60 s; stops early when ``done`` is set."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        seen = None
        while not done.is_set() and time.monotonic() < deadline:
            seen = _scrape(port)
            if seen is not None and seen["mdp_stream_committed_total"] >= 100:
                break
            done.wait(0.1)  # polling the endpoint: quotes are landing
        out["first"] = seen
        gateway.pause_data()
        last = None
        while not done.is_set() and time.monotonic() < deadline:
            now = _scrape(port)
            if now is not None and now["mdp_stream_pending"] == 0 and now == last:
                out["settled"] = now
                os.kill(os.getpid(), signal.SIGINT)
                return
            last = now
            done.wait(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_stream_run_serves_metrics_matching_its_summary(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    store_dsn: str,
    write_streams: Callable[[str], Path],
    gateway: SimulatedGateway,
) -> None:
    port = _free_port()
    write_streams(
        f"""
        streams:
          - name: ibkr_quotes
            provider: ibkr
            mode: quotes
            symbols: [AAPL, MSFT, SPY]
            client_id: 41
            metrics_port: {port}
        """
    )
    done, out = threading.Event(), {}
    watcher = _settle_then_interrupt(port, gateway, done, out)
    try:
        # max_seconds bounds the test if the interrupt never comes (the asserts then fail)
        result = run_stream(instance, resources, stream="ibkr_quotes", max_seconds=90.0)
    finally:
        done.set()
        watcher.join(timeout=10)
        gateway.pause_data(False)
    first, settled = out.get("first"), out.get("settled")
    assert isinstance(first, dict) and first["mdp_stream_up"] == 1.0
    assert isinstance(settled, dict), "the counters never settled"
    final = metadata_values(observations(instance, result.run_id)[-1])
    assert final["state"] == "finished"
    assert final["received"] == settled["mdp_stream_received_total"] > 0
    assert final["committed"] == settled["mdp_stream_committed_total"]
    assert final["dead_lettered"] == settled["mdp_stream_dead_lettered_total"] == 0
    dropped = sum(v for k, v in settled.items() if k.startswith("mdp_stream_dropped_total{"))
    assert final["dropped"] == dropped
    assert final["new_rows"] == sql_value(store_dsn, "SELECT count(*) FROM mdp.quotes")
    # the run says where its metrics are, in its log and its progress metadata
    url = f"http://127.0.0.1:{port}/metrics"
    assert final["metrics_url"] == url
    assert any(
        f"Prometheus metrics on {url}" in m for m in run_log_messages(instance, result.run_id)
    )
    assert _scrape(port) is None  # the server closed with the run
