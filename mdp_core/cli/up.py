"""``mdp up`` (``make run``): PostgreSQL, the simulated IB Gateway and Dagster, until Ctrl-C.

Starts (or reuses) the embedded PostgreSQL under MDP_HOME (unless ``MDP_PG_DSN`` points
elsewhere) with its ``mdp`` and ``dagster`` databases, the simulated IB Gateway for the
streams' symbols (unless ``MDP_IBKR_HOST`` names a real gateway), and ``dagster dev`` on the
repository's ``workspace.yaml`` with ``DAGSTER_HOME=MDP_HOME/dagster``. Dagster's supervisor
sensor then starts one run per stream of ``streams.yaml``.

On Ctrl-C / SIGTERM it stops what it started, in an order that loses nothing and leaves no
process behind: the supervisor sensor is stopped (and reset to its default, running, on the
next ``mdp up``), the stream runs are terminated through Dagster so they drain, then
``dagster dev`` gets SIGINT and its process group SIGKILL (the code server and run workers
can outlive it), then the gateway, then the embedded PostgreSQL if this command started it.
A second Ctrl-C skips the wait for the runs to drain.

Talks to Dagster only over its GraphQL HTTP API and runs it as a subprocess: mdp_core
imports no Dagster module.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from mdp_core.dagster_names import (
    ACTIVE_RUN_STATUSES,
    INSTANCE_CONFIG,
    KIND_TAG,
    LOCATION,
    REPOSITORY,
    SUPERVISOR_SENSOR,
    WORKSPACE,
)
from mdp_core.dsn import describe_dsn, mask_dsn, scrub
from mdp_core.errors import error_info
from mdp_core.settings import CheckSettings, IBKRSettings, get_settings, ibkr_configured
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams

__all__ = ["dagster_url_for", "metrics_addresses", "up"]

_STOPPED_MARKER = ".mdp-supervisor-stopped"


def _say(message: str) -> None:
    click.echo(f"mdp up: {message}", err=True)


# -- locations and URLs --------------------------------------------------------------------


def project_dir() -> Path:
    """The directory with workspace.yaml and deploy/dagster/dagster.yaml: the current one
    if it has them, else the repository this package was installed from (editable install)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / WORKSPACE).is_file() and (candidate / INSTANCE_CONFIG).is_file():
            return candidate
    raise click.ClickException(
        f"{WORKSPACE} and {INSTANCE_CONFIG} not found in the current directory or the mdp "
        "repository: run `mdp up` from the repository root"
    )


def dagster_url_for(dsn: str, database: str = "dagster") -> str:
    """The SQLAlchemy URL of ``database`` on the server of ``dsn`` (psycopg2 driver, which
    dagster-postgres needs spelled out)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg2"):
        raise ValueError(
            f"cannot derive the Dagster storage URL from a {parts.scheme or 'schemeless'} DSN: "
            "expected postgresql://...; or set MDP_DAGSTER_PG_URL"
        )
    return urlunsplit(("postgresql+psycopg2", parts.netloc, f"/{database}", parts.query, ""))


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# -- PostgreSQL ----------------------------------------------------------------------------


async def _ensure_databases(admin_dsn: str, names: list[str]) -> None:
    """Create the databases of ``names`` that do not exist (one created by another process
    meanwhile is fine)."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        for name in names:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                try:
                    # name is our constant "dagster", not user input
                    await conn.execute(f'CREATE DATABASE "{name}"')
                except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                    pass  # another process created it first
    finally:
        await conn.close()


async def _migrate(dsn: str | None = None, home: Path | None = None) -> str:
    """Migrate the database of ``dsn``, or with ``home`` the embedded server's ``mdp``
    database under ``home/pg`` (created if needed); return its DSN."""
    from mdp_core.store.database import Database

    async with Database.connect(dsn, max_size=1, home=home) as db:
        return db.dsn


# -- GraphQL over HTTP ---------------------------------------------------------------------


class Dagster:
    """The few calls ``mdp up`` makes to the Dagster webserver's GraphQL API."""

    def __init__(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/server_info", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL error: {payload['errors'][0].get('message')}")
        data: dict[str, Any] = payload["data"]
        return data

    _SELECTOR = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": SUPERVISOR_SENSOR,
    }

    def sensor_state(self) -> tuple[str | None, str | None]:
        """(status, instigation state id) of the supervisor sensor, or (None, None) if the
        code location is not loaded (yet)."""
        data = self.query(
            """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
                 __typename ... on Sensor { sensorState { id status } } } }""",
            {"s": self._SELECTOR},
        )["sensorOrError"]
        if data["__typename"] != "Sensor":
            return None, None
        return data["sensorState"]["status"], data["sensorState"]["id"]

    def stop_sensor(self, state_id: str) -> None:
        self.query("mutation($id: String) { stopSensor(id: $id) { __typename } }", {"id": state_id})

    def reset_sensor(self) -> None:
        self.query(
            "mutation($s: SensorSelector!) { resetSensor(sensorSelector: $s) { __typename } }",
            {"s": self._SELECTOR},
        )

    def active_stream_runs(self) -> dict[str, str]:
        """run id -> status of every stream run not finished."""
        data = self.query(
            """query($f: RunsFilter) { runsOrError(filter: $f) {
                 __typename ... on Runs { results { runId status } } } }""",
            {
                "f": {
                    "statuses": list(ACTIVE_RUN_STATUSES),
                    "tags": [{"key": KIND_TAG, "value": "stream"}],
                }
            },
        )["runsOrError"]
        return {r["runId"]: r["status"] for r in data.get("results", [])}

    def terminate_runs(self, run_ids: list[str]) -> None:
        self.query(
            """mutation($ids: [String!]!) { terminateRuns(runIds: $ids) { __typename } }""",
            {"ids": run_ids},
        )


# -- processes -----------------------------------------------------------------------------


def _spawn(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path | None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own (so a terminal's Ctrl-C reaches only us, and
    the whole group can be killed), output to ``log`` or inherited."""
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop_group(proc: subprocess.Popen[bytes], first: int, wait: float, name: str) -> None:
    """Send ``first`` to ``proc``, wait up to ``wait`` s for it and its process group to
    exit, then SIGKILL whatever is left of the group."""
    if proc.poll() is None:
        try:
            proc.send_signal(first)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
        time.sleep(0.2)
    if proc.poll() is None or _group_alive(proc.pid):
        _say(f"{name}: still running after {wait:.0f}s, killing its process group")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@dataclass
class Stack:
    """What ``mdp up`` started, so that it can stop exactly that."""

    home: Path
    project: Path
    host: str
    port: int
    stop_timeout: float
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    embedded: Any = None  # EmbeddedServer we started (stopped at the end), else None
    gateway: subprocess.Popen[bytes] | None = None
    dagster: subprocess.Popen[bytes] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)  # first Ctrl-C
    hurry: threading.Event = field(default_factory=threading.Event)  # second Ctrl-C

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    # -- start -----------------------------------------------------------------------------

    def start_database(self) -> None:
        from mdp_core.store.embedded import EmbeddedServer

        settings = get_settings()
        dsn = settings.pg_dsn.get_secret_value() if settings.pg_dsn else None
        if dsn:
            url = settings.dagster_pg_url.get_secret_value() if settings.dagster_pg_url else None
            if not url:
                try:
                    url = dagster_url_for(dsn)
                except ValueError as exc:
                    raise click.ClickException(str(exc)) from None
                try:
                    asyncio.run(_ensure_databases(dsn, ["dagster"]))
                except Exception as exc:
                    raise click.ClickException(
                        f"cannot create database 'dagster' on {mask_dsn(dsn)} "
                        f"({scrub(str(error_info(exc)), dsn)}): "
                        "create it, or set MDP_DAGSTER_PG_URL to a database Dagster may use"
                    ) from None
            _say(f"PostgreSQL at {describe_dsn(dsn)} (MDP_PG_DSN)")
            asyncio.run(_migrate(dsn))
        else:
            server = EmbeddedServer(self.home / "pg")
            was_running = server.status().running
            admin = server.start()
            if not was_running:
                self.embedded = server
            asyncio.run(_ensure_databases(admin, ["dagster"]))
            dsn = asyncio.run(_migrate(home=self.home))  # creates the mdp database if needed
            url = dagster_url_for(dsn)
            state = "started" if not was_running else "already running"
            _say(f"embedded PostgreSQL {state} in {server.data_dir} ({describe_dsn(dsn)})")
        self.env["MDP_PG_DSN"] = dsn
        self.env["MDP_DAGSTER_PG_URL"] = url

    def start_gateway(self, specs: list[StreamSpec], port: int) -> None:
        if ibkr_configured():
            ib = IBKRSettings()
            _say(f"IB Gateway at {ib.host}:{ib.port} (MDP_IBKR_HOST/PORT): no simulated gateway")
            return
        symbols = sorted({s for spec in specs if spec.provider == "ibkr" for s in spec.symbols})
        if not symbols:
            return
        if _port_in_use("127.0.0.1", port):
            raise click.ClickException(
                f"port {port} is already in use (a gateway left running?): stop it, or pass "
                "--gateway-port, or set MDP_IBKR_HOST to use a running IB Gateway"
            )
        log = self.home / "logs" / "gateway.log"
        args = [sys.executable, "-m", "mdp_core.cli", "gateway", "--host", "127.0.0.1",
                "--port", str(port), "--symbols", ",".join(symbols)]  # fmt: skip
        self.gateway = _spawn(args, env=self.env, cwd=self.project, log=log)
        deadline = time.monotonic() + 30
        while not _port_in_use("127.0.0.1", port):
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"the simulated gateway did not start: see {log}")
            time.sleep(0.1)
        self.env["MDP_IBKR_HOST"] = "127.0.0.1"
        self.env["MDP_IBKR_PORT"] = str(port)
        # The simulated market never closes: freshness and gap checks must say so too.
        if "calendar" not in CheckSettings().model_fields_set:
            self.env["MDP_CHECK_CALENDAR"] = "24/7"
        _say(f"simulated IB Gateway on 127.0.0.1:{port} for {', '.join(symbols)} (log {log})")

    def start_dagster(self) -> None:
        home = self.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.project / INSTANCE_CONFIG, home / "dagster.yaml")
        self.env["DAGSTER_HOME"] = str(home)
        if _port_in_use(self.host, self.port):
            raise click.ClickException(f"port {self.port} is already in use: pass --port")
        args = [sys.executable, "-m", "dagster", "dev", "-w", str(self.project / WORKSPACE),
                "-h", self.host, "-p", str(self.port)]  # fmt: skip
        # Run from DAGSTER_HOME: a dagster.yaml in the working directory that is not
        # DAGSTER_HOME's makes Dagster warn at every start.
        self.dagster = _spawn(args, env=self.env, cwd=home, log=None)
        client = Dagster(self.host, self.port)
        deadline = time.monotonic() + 300
        while not client.alive():
            if self.dagster.poll() is not None:
                raise click.ClickException("dagster dev exited during start-up (see above)")
            if self.stopping.is_set():
                return
            if time.monotonic() > deadline:
                raise click.ClickException("the Dagster webserver did not come up in 300s")
            time.sleep(0.5)
        self._restore_sensor(client)

    def _restore_sensor(self, client: Dagster) -> None:
        """If the last ``mdp up`` stopped the supervisor on its way out, reset it to its
        default (running) once the code location has loaded."""
        marker = self.dagster_home / _STOPPED_MARKER
        if not marker.exists():
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                status, _ = client.sensor_state()
            except (OSError, RuntimeError):
                status = None
            if status is not None:
                client.reset_sensor()
                marker.unlink()
                _say("stream supervisor resumed")
                return
            time.sleep(1)
        _say("could not resume the stream supervisor: start it in the UI (Automation)")

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this command started (each step runs even if one fails)."""
        steps = [self._stop_streams, self._stop_dagster, self._stop_gateway, self._stop_database]
        for step in steps:
            try:
                step()
            except Exception as exc:
                _say(f"while stopping ({step.__name__}): {type(exc).__name__}: {exc}")

    def _stop_streams(self) -> None:
        if self.dagster is None or self.dagster.poll() is not None:
            return
        client = Dagster(self.host, self.port)
        if not client.alive():
            return
        status, state_id = client.sensor_state()
        if status == "RUNNING" and state_id:
            client.stop_sensor(state_id)
            (self.dagster_home / _STOPPED_MARKER).touch()
        runs = client.active_stream_runs()
        if not runs:
            return
        _say(f"terminating {len(runs)} stream run(s) so they drain (Ctrl-C again to skip)")
        deadline = time.monotonic() + self.stop_timeout
        asked: set[str] = set()
        while runs and time.monotonic() < deadline and not self.hurry.is_set():
            todo = [
                run_id for run_id, s in runs.items() if s != "CANCELING" and run_id not in asked
            ]
            if todo:
                client.terminate_runs(todo)
                asked.update(todo)
            time.sleep(0.5)
            runs = client.active_stream_runs()
        if runs:
            _say(f"{len(runs)} stream run(s) still draining; stopping Dagster anyway")
        else:
            _say("stream runs drained and stopped")

    def _stop_dagster(self) -> None:
        if self.dagster is not None:
            _stop_group(self.dagster, signal.SIGINT, 5 if self.hurry.is_set() else 30, "dagster")
            _say("dagster stopped")

    def _stop_gateway(self) -> None:
        if self.gateway is not None:
            _stop_group(self.gateway, signal.SIGTERM, 10, "gateway")
            _say("simulated gateway stopped")

    def _stop_database(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            _say("embedded PostgreSQL stopped")


def metrics_addresses(specs: list[StreamSpec]) -> list[str]:
    """One line per stream with a ``metrics_port``: where its Dagster run serves Prometheus
    metrics (port 0: a free port, named in the run's log)."""
    lines = []
    for spec in specs:
        if spec.metrics_port is None:
            continue
        where = (
            f"http://{spec.metrics_host}:{spec.metrics_port}/metrics"
            if spec.metrics_port
            else f"a free port on {spec.metrics_host} (see the run's log)"
        )
        lines.append(f"stream {spec.name}: Prometheus metrics on {where}")
    return lines


def _resolve_streams(streams: Path | None, project: Path) -> Path:
    """``--streams``, else ``MDP_STREAMS_FILE``, else the project's ``streams.yaml``."""
    settings = get_settings()
    configured = settings.streams_file if "streams_file" in settings.model_fields_set else None
    path = streams or configured or project / "streams.yaml"
    return path.expanduser().resolve()


@click.command("up")
@click.option("--host", default="127.0.0.1", show_default=True, help="Dagster UI address.")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--gateway-port", default=4002, show_default=True, type=click.IntRange(1, 65535),
    help="Port of the simulated IB Gateway (ignored when MDP_IBKR_HOST is set).",
)  # fmt: skip
@click.option(
    "--streams", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Streams file (default: MDP_STREAMS_FILE or streams.yaml of the repository).",
)  # fmt: skip
@click.option(
    "--stop-timeout", default=90.0, show_default=True, type=click.FloatRange(min=0),
    help="Seconds to wait at shutdown for the stream runs to drain.",
)  # fmt: skip
def up(host: str, port: int, gateway_port: int, streams: Path | None, stop_timeout: float) -> None:
    """Run mdp under Dagster until Ctrl-C: PostgreSQL, the simulated IB Gateway and
    `dagster dev`, whose supervisor keeps one run per stream of streams.yaml alive.

    \b
    Environment:
      MDP_HOME            local state (default .mdp): pg/, dagster/, dlq/, logs/
      MDP_PG_DSN          use this PostgreSQL instead of the embedded one
      MDP_DAGSTER_PG_URL  Dagster's storage (default: database 'dagster' on that server)
      MDP_IBKR_HOST/PORT  a real IB Gateway or TWS instead of the simulated gateway
      MDP_STREAMS_FILE    the streams to run (default streams.yaml)
    """
    project = project_dir()
    streams_path = _resolve_streams(streams, project)
    try:
        specs = [s for s in load_streams(streams_path) if s.enabled]
    except StreamsConfigError as exc:
        raise click.ClickException(str(exc)) from None
    home = get_settings().home_dir
    (home / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(home=home, project=project, host=host, port=port, stop_timeout=stop_timeout)
    stack.env.update({"MDP_HOME": str(home), "MDP_STREAMS_FILE": str(streams_path)})

    stopping = stack.stopping

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            stack.hurry.set()
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failed = False
    try:
        stack.start_database()
        stack.start_gateway(specs, gateway_port)
        if stopping.is_set():
            return
        stack.start_dagster()
        names = ", ".join(s.name for s in specs) or "none enabled"
        _say(f"Dagster UI on http://{host}:{port}  (streams: {names}; Ctrl-C stops everything)")
        for line in metrics_addresses(specs):
            _say(line)
        while not stopping.wait(1.0):
            if stack.dagster is not None and stack.dagster.poll() is not None:
                _say(f"dagster dev exited (code {stack.dagster.returncode}); stopping")
                failed = True
                break
            if stack.gateway is not None and stack.gateway.poll() is not None:
                _say(f"the simulated gateway exited (code {stack.gateway.returncode}); stopping")
                failed = True
                break
    except click.ClickException as exc:
        failed = True
        _say(f"error: {exc.format_message()}")
    except Exception as exc:  # e.g. the database cannot start: say it, still clean up
        failed = True
        _say(f"error: {error_info(exc)}")
    finally:
        _say("stopping")
        stack.stop()
        _say("stopped")
    if failed:
        sys.exit(1)
