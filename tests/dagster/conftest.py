"""Shared Dagster fixtures: a test instance, mdp's store on the session's embedded
PostgreSQL (a fresh database per test) and a streams file of the test's own."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from mdp_core.gateway import SimulatedGateway
from mdp_dagster.export import ExportResource
from mdp_dagster.io_manager import IO_MANAGER_KEY, MdpIOManager
from mdp_dagster.resources import DlqResource, StoreResource


@pytest.fixture(autouse=True)
def _fresh_defs_state_storage() -> Iterator[None]:
    """Start every test without a current defs-state storage.

    A Dagster instance publishes its defs-state storage in a ContextVar while it is open
    and restores the previous value when it closes; instances closed out of order leave a
    closed instance's storage behind, and a later Definitions load then fails with
    "Attempted to resolve undefined DagsterInstance weakref"."""
    from dagster._core.storage.defs_state.base import _current_storage

    token = _current_storage.set(None)
    yield
    try:
        _current_storage.reset(token)
    except ValueError:  # set in another context: nothing of ours to restore
        _current_storage.set(None)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance (SQLite in a temp dir)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def store_dsn(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """mdp's store for this test: a fresh database, exported as MDP_PG_DSN."""
    monkeypatch.setenv("MDP_PG_DSN", fresh_dsn)
    return fresh_dsn


@pytest.fixture
def resources(store_dsn: str) -> dict[str, object]:
    """The code location's resources, bound to this test's store."""
    return {
        "store": StoreResource(),
        "dlq": DlqResource(),
        "export": ExportResource(),
        IO_MANAGER_KEY: MdpIOManager(),
    }


@pytest.fixture
def write_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write a streams file (YAML text) and point MDP_STREAMS_FILE at it."""

    def write(text: str) -> Path:
        path = tmp_path / "streams.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        monkeypatch.setenv("MDP_STREAMS_FILE", str(path))
        return path

    return write


@pytest.fixture
def gateway_port(gateway: SimulatedGateway) -> int:
    """The port of ``gateway``."""
    return gateway.port


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedGateway]:
    """The simulated IB Gateway (AAPL, MSFT, SPY; a simulated minute per real second) on a
    free port, served from a thread of its own (the stream op blocks the test's thread);
    MDP_IBKR_HOST/PORT point at it."""
    loop = asyncio.new_event_loop()
    gateway = SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY"], port=0, seed=5, time_compression=60.0, tick_interval=0.02
    )
    thread = threading.Thread(target=loop.run_forever, name="simulated-gateway", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(timeout=30)
    monkeypatch.setenv("MDP_IBKR_HOST", "127.0.0.1")
    monkeypatch.setenv("MDP_IBKR_PORT", str(gateway.port))
    try:
        yield gateway
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
