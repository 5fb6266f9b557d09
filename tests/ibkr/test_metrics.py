"""``mdp stream --provider ibkr --metrics-port P`` against the simulated gateway: the
Prometheus text parses, and once the gateway goes quiet the scraped counters equal the
summary the stream writes when it stops, and the table and the gateway agree with them.
Every metric the shipped Grafana dashboard and KEDA example query is one a stream serves."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mdp_core.gateway import SimulatedGateway

MDP = [sys.executable, "-m", "mdp_core.cli"]
ROOT = Path(__file__).resolve().parents[2]
FAMILIES: set[str] = set()  # metric family names seen in scrapes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(port: int) -> dict[str, float] | None:
    """``name{policy}`` -> value of one scrape (None while nothing listens yet)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/plain; version=0.0.4" in head
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        FAMILIES.add(family.name)
        for sample in family.samples:
            assert sample.labels["stream"] == "ibkr-quotes"
            assert (sample.labels["provider"], sample.labels["mode"]) == ("ibkr", "quotes")
            label = sample.labels.get("policy", sample.labels.get("path"))
            key = sample.name + (f"{{{label}}}" if label is not None else "")
            values[key] = sample.value
    return values


@pytest.mark.timeout(120)
async def test_scraped_counters_match_the_summary_and_the_table(
    gw: SimulatedGateway, fresh_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    summary = tmp_path / "summary.json"
    env = {
        **os.environ, "MDP_PG_DSN": fresh_dsn, "MDP_HOME": str(tmp_path / "home"),
        "MDP_IBKR_PORT": str(gw.port), "MDP_IBKR_CLIENT_ID": "51", "MDP_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    async with asyncio.timeout(100):
        proc = await asyncio.create_subprocess_exec(
            *MDP, "stream", "--provider", "ibkr", "--mode", "quotes",
            "--symbols", ",".join(gw.symbols), "--metrics-port", str(port),
            "--summary-json", str(summary), "--quiet",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            seen = await scrape(port)
            while seen is None or seen["mdp_stream_committed_total"] < 100:
                assert proc.returncode is None, await proc.stderr.read()  # type: ignore[union-attr]
                await asyncio.sleep(0.1)  # polling the endpoint: quotes are landing
                seen = await scrape(port)
            assert seen["mdp_stream_up"] == 1.0
            assert seen["mdp_circuit_state"] in (0.0, 1.0)
            assert seen["mdp_commit_latency_seconds_count"] == seen["mdp_stream_committed_total"]

            gw.pause_data()  # the gateway goes quiet: the counters settle
            last: dict[str, float] | None = None
            while True:
                now = await scrape(port)
                assert now is not None
                if now["mdp_stream_pending"] == 0 and last is not None and now == last:
                    break
                last = now
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert proc.returncode == 0, err.decode()
    final = json.loads(summary.read_text())
    assert final["balanced"] is True
    assert final["received"] == now["mdp_stream_received_total"] > 0
    assert final["committed"] == now["mdp_stream_committed_total"]
    assert final["dead_lettered"] == now["mdp_stream_dead_lettered_total"] == 0
    dropped = {k[len("mdp_stream_dropped_total{") : -1]: v for k, v in now.items()
               if k.startswith("mdp_stream_dropped_total{")}  # fmt: skip
    assert final["dropped"] == dropped
    # every committed quote went in by one write path (live quotes: the fast one)
    paths = ("fast", "fallback", "idempotent")
    assert sum(now[f"mdp_write_rows_total{{{p}}}"] for p in paths) == final["committed"]
    assert now["mdp_write_rows_total{fast}"] > 0
    for p in paths:
        assert now[f"mdp_write_batches_total{{{p}}}"] == final["write_paths"][f"{p}_batches"]
    assert now["mdp_provider_connects_total"] == 1
    assert now["mdp_provider_reconnects_total"] == 0
    # ground truth: every quote the stream received came from a tick burst the gateway sent
    assert final["received"] <= gw.stats()["totals"]["ticks"]
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM mdp.quotes") == final["committed"]
    finally:
        await conn.close()
    assert queried_metrics() <= FAMILIES


def queried_metrics() -> set[str]:
    """The metric families the Grafana dashboard and the KEDA example query."""
    dashboard = json.loads((ROOT / "deploy/grafana/mdp-streams.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    keda = yaml.safe_load((ROOT / "deploy/keda/scaledobject.yaml").read_text())
    exprs += [t["metadata"]["query"] for t in keda["spec"]["triggers"]]
    names = {n for e in exprs for n in re.findall(r"\bmdp_[a-z_]+", e)}
    assert len(names) >= 15, names
    return {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names}
