"""The production topology, as separate processes: `dagster-webserver`, `dagster-daemon` and
two gRPC code servers (`dagster code-server start`), one per stream shard, each with its own
MDP_HOME and streams file, all on one PostgreSQL reached over TCP with passwords (Dagster's
storage through dagster-postgres, mdp's tables through asyncpg), IBKR quotes from a
simulated IB Gateway (`mdp gateway`). The first code server is the main location
(`mdp_dagster.definitions`), the second an extra shard (`mdp_dagster.shard`).

Checked through what a user sees (GraphQL, the tables, the exit status of `mdp stream`):
each shard's supervisor launches its own stream run and leaves the other shard's alone, rows
land, each shard has one writer (its advisory lock), a third writer of a shard is refused by
the lock, a GraphQL `terminateRun` drains each run to CANCELED with balanced counters in
`mdp.stream_heartbeats`, no password reaches a log, nothing is left running. About 70-90 s:
the supervisor ticks every 30 s and the test waits for a tick that sees both runs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from dagster_graphql import DagsterGraphQLClient

from mdp_core.cli.up import Dagster
from mdp_core.dagster_names import INSTANCE_CONFIG
from tests.topology.services import Service, free_port, port_open, stop_all, wait_for
from tests.topology.tcp_postgres import TcpPostgres

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the console scripts of this environment
SUPERUSER_PASSWORD = "super-Pw-41"
MDP_ROLE, MDP_PASSWORD = "mdp_app", "mdp-Pw-73"
DAGSTER_ROLE, DAGSTER_PASSWORD = "dagster_app", "dagster-Pw-19"
PASSWORDS = (SUPERUSER_PASSWORD, MDP_PASSWORD, DAGSTER_PASSWORD)


@dataclass(frozen=True)
class Shard:
    location: str  # the code location (one code server) that serves it
    module: str  # what that code server loads
    stream: str
    symbols: tuple[str, ...]
    client_id: int

    def streams_yaml(self) -> str:
        return (
            f"streams:\n  - name: {self.stream}\n    provider: ibkr\n    mode: quotes\n"
            f"    symbols: [{', '.join(self.symbols)}]\n    client_id: {self.client_id}\n"
        )


SHARDS = (
    Shard("mdp", "mdp_dagster.definitions", "quotes_a_to_m", ("AAPL", "MSFT"), 21),
    Shard("mdp_2", "mdp_dagster.shard", "quotes_n_to_z", ("NVDA", "SPY"), 22),
)


# -- asking the pieces ----------------------------------------------------------------------


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def shard_rows(dsn: str, shard: Shard) -> int:
    """Rows of the shard's symbols in mdp.quotes (0 before the table exists)."""
    if not sql(dsn, "SELECT to_regclass('mdp.quotes') IS NOT NULL AS ok")[0]["ok"]:
        return 0
    found = sql(dsn, "SELECT count(*) AS n FROM mdp.quotes WHERE symbol = ANY($1)",
                list(shard.symbols))  # fmt: skip
    return int(found[0]["n"])


def lock_holders(dsn: str, stream: str) -> int:
    """Sessions holding the stream's single-writer lock ``mdp:stream:<name>``."""
    rows = sql(
        dsn,
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
        f"mdp:stream:{stream}",
    )
    return int(rows[0]["n"])


def heartbeats(dsn: str, stream: str) -> dict[str, dict[str, Any]]:
    """run id -> the counters of its last heartbeat, for every run that wrote one."""
    rows = sql(
        dsn,
        "SELECT DISTINCT ON (run_id) run_id, counters FROM mdp.stream_heartbeats "
        "WHERE stream = $1 ORDER BY run_id, ts DESC",
        stream,
    )
    return {r["run_id"]: json.loads(r["counters"]) for r in rows}


def dropped_total(counters: dict[str, Any]) -> int:
    if "dropped_total" in counters:
        return int(counters["dropped_total"])
    dropped = counters["dropped"]
    return int(sum(dropped.values())) if isinstance(dropped, dict) else int(dropped)


def stream_runs(ui: Dagster, stream: str) -> list[dict[str, Any]]:
    """Every run of ``stream``, newest first: runId, status, location."""
    data = ui.query(
        """query($f: RunsFilter) { runsOrError(filter: $f) { __typename
             ... on Runs { results { runId status repositoryOrigin { repositoryLocationName } } }
           } }""",
        {"f": {"tags": [{"key": "mdp/stream", "value": stream}]}},
    )["runsOrError"]
    assert data["__typename"] == "Runs", data
    return [
        {"runId": r["runId"], "status": r["status"],
         "location": (r["repositoryOrigin"] or {}).get("repositoryLocationName")}
        for r in data["results"]
    ]  # fmt: skip


def run_messages(ui: Dagster, run_id: str) -> list[str]:
    """The messages of the run's event log, as the UI shows them."""
    data = ui.query(
        """query($id: ID!) { logsForRun(runId: $id) { __typename
             ... on EventConnection { events { ... on MessageEvent { message } } } } }""",
        {"id": run_id},
    )["logsForRun"]
    assert data["__typename"] == "EventConnection", data
    return [e["message"] for e in data["events"] if e.get("message")]


def supervisor(ui: Dagster, location: str) -> dict[str, Any] | None:
    """The location's stream_supervisor: {id, status, ticks: [{status, timestamp, ...}]}, or
    None while the location is not loaded."""
    data = ui.query(
        """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
             ... on Sensor { sensorState { id status
               ticks(limit: 10) { status timestamp skipReason runIds } } } } }""",
        {"s": {"repositoryLocationName": location, "repositoryName": "__repository__",
               "sensorName": "stream_supervisor"}},
    )["sensorOrError"]  # fmt: skip
    if data["__typename"] != "Sensor":
        return None
    state: dict[str, Any] = data["sensorState"]
    return state


def materializable_in(ui: Dagster) -> dict[str, list[str]]:
    """Asset key -> the code locations that can materialize it."""
    nodes = ui.query(
        "{ assetNodes { assetKey { path } isMaterializable repository { location { name } } } }"
    )["assetNodes"]
    where: dict[str, list[str]] = {}
    for node in nodes:
        if node["isMaterializable"]:
            key = "/".join(node["assetKey"]["path"])
            where.setdefault(key, []).append(node["repository"]["location"]["name"])
    return where


def left_in(directory: Path) -> list[str]:
    """Processes still running in ``directory`` or below (the services and run workers)."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = proc.info["cwd"]
        if cwd and Path(cwd).is_relative_to(directory):
            found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
    return found


# -- the topology ---------------------------------------------------------------------------


@dataclass
class Topology:
    mdp_dsn: str
    ui: Dagster
    ui_port: int
    services: list[Service]
    streams_files: dict[str, Path]  # location -> its streams file
    stream_env: dict[str, str]  # what `mdp stream` on a third machine would have
    logs: Path


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        pg = TcpPostgres(SUPERUSER_PASSWORD)
        stack.callback(pg.destroy)
        pg.start()
        pg.create_role_and_database(MDP_ROLE, MDP_PASSWORD, "mdp")
        pg.create_role_and_database(DAGSTER_ROLE, DAGSTER_PASSWORD, "dagster")
        mdp_dsn = pg.url(MDP_ROLE, MDP_PASSWORD, "mdp")
        dagster_url = pg.url(DAGSTER_ROLE, DAGSTER_PASSWORD, "dagster", "postgresql+psycopg2")

        # Nothing inherited: each process gets what its role needs.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MDP_", "DAGSTER_"))}
        services: list[Service] = []

        def start(name: str, args: list[str], env: dict[str, str], cwd: Path) -> Service:
            service = Service.start(name, args, env=env, cwd=cwd, log_dir=logs)
            services.append(service)
            stack.callback(service.stop)
            return service

        gateway_port = free_port()
        symbols = ",".join(s for shard in SHARDS for s in shard.symbols)
        start(
            "gateway",
            [sys.executable, "-m", "mdp_core.cli", "gateway", "--port", str(gateway_port),
             "--symbols", symbols, "--tick-interval", "0.02", "--seed", "12"],
            {**base, "MDP_HOME": str(tmp_path / "gateway-home")}, tmp_path,
        )  # fmt: skip
        ibkr = {"MDP_IBKR_HOST": "127.0.0.1", "MDP_IBKR_PORT": str(gateway_port)}

        streams_files: dict[str, Path] = {}
        ports: dict[str, int] = {}
        for shard in SHARDS:
            home = tmp_path / f"home-{shard.location}"
            home.mkdir()
            streams_files[shard.location] = home / "streams.yaml"
            streams_files[shard.location].write_text(shard.streams_yaml(), encoding="utf-8")
            ports[shard.location] = free_port()
            # The daemon hands a code server Dagster's instance config with the variable's
            # name, not its value: sensors and run workers resolve MDP_DAGSTER_PG_URL here.
            env = {
                **base,
                **ibkr,
                "MDP_DAGSTER_PG_URL": dagster_url,
                "MDP_PG_DSN": mdp_dsn,
                "MDP_HOME": str(home),
                "MDP_STREAMS_FILE": str(streams_files[shard.location]),
            }
            args = [str(BIN / "dagster"), "code-server", "start", "-m", shard.module,
                    "-h", "127.0.0.1", "-p", str(ports[shard.location]),
                    "--location-name", shard.location]  # fmt: skip
            start(f"code-server-{shard.location}", args, env, home)

        dagster_home = tmp_path / "dagster-home"  # the webserver's and the daemon's
        dagster_home.mkdir()
        shutil.copyfile(REPO / INSTANCE_CONFIG, dagster_home / "dagster.yaml")
        workspace = dagster_home / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            + "".join(
                f"  - grpc_server: {{host: 127.0.0.1, port: {port}, location_name: {name}}}\n"
                for name, port in ports.items()
            )
        )
        wait_for("the gateway", lambda: port_open(gateway_port), 60, services)
        for name, port in ports.items():
            wait_for(f"code server {name}", lambda p=port: port_open(p), 90, services)

        env = {**base, "DAGSTER_HOME": str(dagster_home), "MDP_DAGSTER_PG_URL": dagster_url}
        ui_port = free_port()
        start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env,
              dagster_home)  # fmt: skip
        start("webserver", [str(BIN / "dagster-webserver"), "-w", str(workspace),
                            "-h", "127.0.0.1", "-p", str(ui_port)], env, dagster_home)  # fmt: skip
        ui = Dagster("127.0.0.1", ui_port)
        wait_for("the webserver", ui.alive, 120, services)
        yield Topology(
            mdp_dsn=mdp_dsn, ui=ui, ui_port=ui_port, services=services,
            streams_files=streams_files, stream_env={**base, **ibkr, "MDP_PG_DSN": mdp_dsn},
            logs=logs,
        )  # fmt: skip

        took = stop_all(services)  # the code servers take their run workers with them
        print("topology: exited on SIGTERM after", {k: round(v, 1) for k, v in took.items()})
        for service in services:
            assert service.group_gone(), f"{service.name} left processes running"
        assert not left_in(tmp_path), "processes left running"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_stream_shards_on_grpc_code_servers_and_postgres_over_tcp(
    topology: Topology,
) -> None:
    t = topology
    services = t.services
    began = time.monotonic()
    for shard in SHARDS:
        wait_for(f"location {shard.location} loaded",
                 lambda s=shard: supervisor(t.ui, s.location), 120, services)  # fmt: skip
    # The extra shard's location (mdp_dagster.shard) repeats no asset of the main one.
    assets = materializable_in(t.ui)
    assert assets and all(locations == ["mdp"] for locations in assets.values()), assets

    # Each location's supervisor launches the run of its own shard; rows land.
    def started_run(shard: Shard) -> dict[str, Any] | None:
        runs = stream_runs(t.ui, shard.stream)
        return runs[0] if runs and runs[0]["status"] == "STARTED" else None

    runs = {s.stream: wait_for(f"{s.stream}'s run", lambda s=s: started_run(s), 150, services)
            for s in SHARDS}  # fmt: skip
    both_started = time.time()
    for shard in SHARDS:
        assert runs[shard.stream]["location"] == shard.location
        wait_for(f"rows of {shard.stream}", lambda s=shard: shard_rows(t.mdp_dsn, s), 90,
                 services)  # fmt: skip

    # A tick of each supervisor after both runs started (each sees both runs): it launches
    # nothing and terminates nothing, the other location's run included.
    def ticks_since_both_started(location: str) -> list[dict[str, Any]]:
        state = supervisor(t.ui, location) or {"ticks": []}
        return [k for k in state["ticks"]
                if k["timestamp"] > both_started and k["status"] != "STARTED"]  # fmt: skip

    for shard in SHARDS:
        ticks = wait_for(f"a tick of {shard.location}'s supervisor",
                         lambda s=shard: ticks_since_both_started(s.location), 90,
                         services)  # fmt: skip
        assert all(k["status"] == "SKIPPED" and not k["runIds"] for k in ticks), ticks
    for shard in SHARDS:
        assert stream_runs(t.ui, shard.stream) == [runs[shard.stream]], "one run per shard"
        assert lock_holders(t.mdp_dsn, shard.stream) == 1, "one writer per shard"

    # A third writer of the first shard, from a third MDP_HOME: refused by the lock.
    first = SHARDS[0]
    summary = t.logs / "third-writer.json"
    third = subprocess.run(
        [sys.executable, "-m", "mdp_core.cli", "stream", "--config",
         str(t.streams_files[first.location]), "--name", first.stream,
         "--seconds", "20", "--quiet", "--summary-json", str(summary)],
        env={**t.stream_env, "MDP_HOME": str(t.logs.parent / "home-third")},
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert third.returncode == 1, third.stdout + third.stderr
    assert f"advisory lock 'mdp:stream:{first.stream}' is already held" in third.stderr
    assert json.loads(summary.read_text())["received"] == 0

    # Stop the supervisors (as `mdp up` does), then terminate both runs: they drain.
    for shard in SHARDS:
        state = supervisor(t.ui, shard.location)
        assert state is not None and state["status"] == "RUNNING"
        t.ui.query("mutation($id: String) { stopSensor(id: $id) { __typename } }",
                   {"id": state["id"]})  # fmt: skip
    client = DagsterGraphQLClient("127.0.0.1", port_number=t.ui_port)
    for run in runs.values():
        client.terminate_run(run["runId"])
    for stream, run in runs.items():
        wait_for(f"{stream}'s run CANCELED",
                 lambda r=run: client.get_run_status(r["runId"]).value == "CANCELED", 120,
                 services)  # fmt: skip

    for shard in SHARDS:
        run_id = runs[shard.stream]["runId"]
        beats = heartbeats(t.mdp_dsn, shard.stream)
        c = beats.pop(run_id)
        assert c["state"] == "finished", c
        assert c["received"] > 0 and c["balanced"] is True, c
        assert c["received"] == c["committed"] + c["dead_lettered"] + dropped_total(c), c
        assert shard_rows(t.mdp_dsn, shard) == c["new_rows"], "every row from the one run"
        # (the refused third writer recorded its failed attempt, with nothing in it)
        assert all(b["received"] == b["committed"] == 0 for b in beats.values()), beats
        assert lock_holders(t.mdp_dsn, shard.stream) == 0
        messages = run_messages(t.ui, run_id)
        assert any("termination requested" in m for m in messages)
        for password in PASSWORDS:
            assert not any(password in m for m in messages), "a password in the run's log"
    for shard in SHARDS:
        assert [r["status"] for r in stream_runs(t.ui, shard.stream)] == ["CANCELED"]
    for service in services:
        text = service.log.read_text(errors="replace")
        for password in PASSWORDS:
            assert password not in text, f"a password in the log of {service.name}"
    print(f"topology: supervised, refused, terminated and drained in "
          f"{time.monotonic() - began:.0f}s")  # fmt: skip
