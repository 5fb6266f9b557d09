"""Servers listen on 127.0.0.1 unless told otherwise; the embedded PostgreSQL on a unix
socket only. Checked on the real listening sockets (psutil), not on configuration alone."""

from __future__ import annotations

import inspect
import os
import re
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from mdp_core.cli import up as up_cli
from mdp_core.cli.gateway import gateway as gateway_command
from mdp_core.gateway import SimulatedGateway
from mdp_core.settings import IBKRSettings
from mdp_core.store.embedded import EmbeddedServer
from tests.security.helpers import mdp_env, start_mdp

LOOPBACK = "127.0.0.1"


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def test_simulated_gateway_listens_on_loopback_by_default() -> None:
    assert inspect.signature(SimulatedGateway).parameters["host"].default == LOOPBACK
    async with SimulatedGateway(symbols=["AAPL"], port=0) as gw:
        assert gw.host == LOOPBACK
        mine = [a for a in listening(psutil.Process().pid) if a[1] == gw.port]
        assert mine == [(LOOPBACK, gw.port)]
    assert IBKRSettings().host == LOOPBACK  # and the client connects there by default


def test_mdp_gateway_cli_listens_on_loopback_by_default() -> None:
    host_option = next(p for p in gateway_command.params if p.name == "host")
    assert host_option.default == LOOPBACK
    proc = start_mdp(["gateway", "--port", "0", "--symbols", "AAPL"], mdp_env())
    try:
        banner = _read_until(proc, re.compile(r"simulated IB Gateway on (\S+):(\d+) "), 60.0)
        host, port = banner.group(1), int(banner.group(2))
        assert host == LOOPBACK and port > 0
        assert listening(proc.pid) == [(LOOPBACK, port)]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def _read_until(proc: Any, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Read the process's stderr until a line matches ``pattern`` (bounded by ``timeout``).

    Reads raw bytes from the descriptor: a buffered ``readline`` could leave the wanted line
    in Python's buffer while ``select`` waits on an empty pipe."""
    text = ""
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            if match := pattern.search(text):
                return match
    raise AssertionError(f"no line matching {pattern.pattern!r}:\n{text}")


class _Spawned(Exception):
    """Raised by the recording spawn to stop ``mdp up`` right after building a command."""


def test_mdp_up_binds_dagster_and_the_gateway_to_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mdp up exposes no function that builds the dagster dev command: record the argument
    # list it hands to its _spawn() (starting dagster dev itself is the e2e test's job).
    host_option = next(p for p in up_cli.up.params if p.name == "host")
    assert host_option.default == LOOPBACK
    commands: list[list[str]] = []

    def record(args: list[str], **kw: Any) -> Any:
        commands.append(args)
        raise _Spawned

    monkeypatch.setattr(up_cli, "_spawn", record)
    stack = up_cli.Stack(
        home=tmp_path, project=up_cli.project_dir(), host=host_option.default,
        port=free_port(), stop_timeout=1.0, env={},
    )  # fmt: skip
    with pytest.raises(_Spawned):
        stack.start_dagster()
    spec = up_cli.StreamSpec(name="s", provider="ibkr", symbols=["AAPL"])
    with pytest.raises(_Spawned):
        stack.start_gateway([spec], free_port())
    dagster, gateway = commands
    assert dagster[dagster.index("-h") + 1] == LOOPBACK
    assert "dev" in dagster and "--host" not in dagster and "0.0.0.0" not in dagster
    assert gateway[gateway.index("--host") + 1] == LOOPBACK


async def test_embedded_postgres_listens_on_a_unix_socket_only(pg_server: EmbeddedServer) -> None:
    conn = await asyncpg.connect(pg_server.dsn())
    try:
        assert await conn.fetchval("SHOW listen_addresses") == ""
        socket_dir = await conn.fetchval("SHOW unix_socket_directories")
    finally:
        await conn.close()
    status = pg_server.status()
    assert status.pid is not None and socket_dir == status.socket_dir
    assert listening(status.pid) == []  # no TCP socket at all
    unix = [c.laddr for c in psutil.Process(status.pid).net_connections(kind="unix")]
    assert any(str(path).startswith(socket_dir) for path in unix)
