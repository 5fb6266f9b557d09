"""The supervisor: its decisions as plain functions, and the sensor on a test instance with
heartbeats in the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from mdp_core.store.database import Database
from mdp_core.store.heartbeats import (
    HeartbeatPolicy,
    write_heartbeat,
)
from mdp_core.streams import StreamsConfigError
from mdp_dagster.resources import StoreResource
from mdp_dagster.streaming import (
    KIND_TAG,
    STREAM_TAG,
    StreamRunConfig,
    load_stream_specs,
    stream_job,
    stream_supervisor,
    supervise,
)
from mdp_dagster.supervisor import (
    RunView,
    SupervisorPolicy,
    backoff_delay,
    consecutive_failures,
    decide,
)

NOW = 1_800_000_000.0
POLICY = SupervisorPolicy(heartbeat=HeartbeatPolicy(interval=15, stale_factor=3, start_grace=60))

TWO_STREAMS = """
streams:
  - {name: alpha, provider: synthetic, mode: quotes, symbols: [AAPL]}
  - {name: beta, provider: synthetic, mode: bars, symbols: [MSFT]}
"""

# -- plain functions ---------------------------------------------------------------------


def test_backoff_doubles_from_15s_up_to_10_minutes() -> None:
    assert [backoff_delay(n) for n in range(9)] == [0, 15, 30, 60, 120, 240, 480, 600, 600]
    assert backoff_delay(1000) == 600


def run(
    status: str, run_id: str = "r", *, ago: float = 100.0, ended_ago: float | None = None
) -> RunView:
    ended = None if ended_ago is None else NOW - ended_ago
    return RunView(run_id, status, created=NOW - ago, started=NOW - ago, ended=ended)


def test_consecutive_failures_counts_the_newest_streak() -> None:
    streak = [run("FAILURE"), run("FAILURE"), run("SUCCESS"), run("FAILURE")]
    assert consecutive_failures(streak) == 2
    assert consecutive_failures([run("CANCELED"), run("FAILURE")]) == 0
    assert consecutive_failures([run("QUEUED"), run("FAILURE")]) == 1
    assert consecutive_failures([]) == 0


@pytest.mark.parametrize(
    ("runs", "heartbeats", "launch", "terminate", "reason"),
    [
        ([], {}, True, (), "no run yet"),
        ([run("CANCELED")], {}, True, (), "last run canceled"),
        ([run("SUCCESS")], {}, True, (), "last run success"),
        ([run("QUEUED")], {}, False, (), "has an active run"),
        ([run("CANCELING")], {}, False, (), "has an active run"),
        ([run("STARTED", "a")], {"a": NOW - 10}, False, (), "has an active run"),
        ([run("STARTED", "a")], {"a": NOW - 46}, True, ("a",), "older than 45s"),
        # no heartbeat yet: judged from the start, with the start grace (45 + 60 s)
        ([run("STARTED", "a", ago=100)], {}, False, (), "has an active run"),
        ([run("STARTED", "a", ago=106)], {}, True, ("a",), "older than 45s"),
        # heartbeats unreadable: nothing is judged stale
        ([run("STARTED", "a", ago=10_000)], None, False, (), "has an active run"),
        # backoff after failures: 15 s after one, 30 s after two
        ([run("FAILURE", ended_ago=10)], {}, False, (), "next attempt in 5s"),
        ([run("FAILURE", ended_ago=16)], {}, True, (), "after 1 failed run"),
        ([run("FAILURE", ended_ago=16), run("FAILURE")], {}, False, (), "next attempt in 14s"),
        ([run("FAILURE", ended_ago=31), run("FAILURE")], {}, True, (), "after 2 failed run"),
    ],
)
def test_decide(
    runs: list[RunView],
    heartbeats: dict[str, float] | None,
    launch: bool,
    terminate: tuple[str, ...],
    reason: str,
) -> None:
    decision = decide("s", runs, heartbeats, NOW, POLICY)
    assert (decision.launch, decision.terminate) == (launch, terminate)
    assert reason in decision.reason


# -- the sensor ----------------------------------------------------------------------------


def _evaluate(instance: dg.DagsterInstance) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources={"store": StoreResource()})
    result = stream_supervisor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _requested(result: dg.SensorResult) -> list[str]:
    return sorted(r.tags[STREAM_TAG] for r in result.run_requests or [])


def _seed_run(instance: dg.DagsterInstance, stream: str, status: dg.DagsterRunStatus) -> str:
    run = instance.create_run_for_job(
        stream_job,
        run_config={"ops": {"run_stream": {"config": {"stream": stream}}}},
        tags={STREAM_TAG: stream, KIND_TAG: "stream"},
        status=status,
    )
    return run.run_id


def _heartbeat(dsn: str, stream: str, run_id: str, age: timedelta) -> None:
    async def write() -> None:
        async with Database.connect(dsn, max_size=1) as db:
            await write_heartbeat(db, stream, run_id, {"committed": 1}, ts=datetime.now(UTC) - age)

    asyncio.run(write())


@pytest.fixture
def two_streams(write_streams: Callable[[str], Path], store_dsn: str) -> str:
    write_streams(TWO_STREAMS)
    return store_dsn


def test_one_run_per_missing_stream(instance: dg.DagsterInstance, two_streams: str) -> None:
    result = _evaluate(instance)
    assert _requested(result) == ["alpha", "beta"]
    for request in result.run_requests or []:
        assert request.run_key is None  # a stable key would block every relaunch
        assert request.tags[KIND_TAG] == "stream"
        config = request.run_config["ops"]["run_stream"]
        stream = (
            config.stream if isinstance(config, StreamRunConfig) else config["config"]["stream"]
        )
        assert stream == request.tags[STREAM_TAG]


def test_none_for_a_healthy_run(instance: dg.DagsterInstance, two_streams: str) -> None:
    alpha = _seed_run(instance, "alpha", dg.DagsterRunStatus.STARTED)
    _heartbeat(two_streams, "alpha", alpha, timedelta(seconds=1))
    _seed_run(instance, "beta", dg.DagsterRunStatus.NOT_STARTED)  # submitted, not running yet
    result = _evaluate(instance)
    assert _requested(result) == []
    assert "alpha: has an active run" in (result.skip_reason.skip_message or "")
    assert instance.get_run_by_id(alpha).status == dg.DagsterRunStatus.STARTED


def test_a_stale_run_is_failed_and_replaced(instance: dg.DagsterInstance, two_streams: str) -> None:
    alpha = _seed_run(instance, "alpha", dg.DagsterRunStatus.STARTED)
    _heartbeat(two_streams, "alpha", alpha, timedelta(minutes=10))
    beta = _seed_run(instance, "beta", dg.DagsterRunStatus.STARTED)
    _heartbeat(two_streams, "beta", beta, timedelta(seconds=1))
    result = _evaluate(instance)
    assert _requested(result) == ["alpha"]
    assert instance.get_run_by_id(alpha).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(beta).status == dg.DagsterRunStatus.STARTED
    # next tick: the stale run is now a recent failure, but the replacement (queued by the
    # daemon in real life) is what counts
    _seed_run(instance, "alpha", dg.DagsterRunStatus.NOT_STARTED)
    assert _requested(_evaluate(instance)) == []


def test_a_failed_run_is_relaunched_after_backoff(
    instance: dg.DagsterInstance, two_streams: str
) -> None:
    alpha = _seed_run(instance, "alpha", dg.DagsterRunStatus.NOT_STARTED)
    instance.report_run_failed(instance.get_run_by_id(alpha), "provider exploded")
    _seed_run(instance, "beta", dg.DagsterRunStatus.STARTED)
    result = _evaluate(instance)
    assert _requested(result) == []  # alpha backs off, beta is starting (no heartbeat yet)
    assert "alpha: 1 failed run(s): backing off" in (result.skip_reason.skip_message or "")
    # 16 s later (past the 15 s of one failure) the same pass relaunches it
    specs = load_stream_specs()
    requests, _ = supervise(instance, specs, StoreResource(), _NullLog(), now=time.time() + 16)
    assert sorted(r.tags[STREAM_TAG] for r in requests) == ["alpha"]


class _NullLog:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def test_a_disabled_stream_has_its_run_terminated_and_none_launched(
    instance: dg.DagsterInstance, write_streams: Callable[[str], Path], store_dsn: str
) -> None:
    write_streams(TWO_STREAMS.replace("symbols: [AAPL]}", "symbols: [AAPL], enabled: false}"))
    alpha = _seed_run(instance, "alpha", dg.DagsterRunStatus.STARTED)
    result = _evaluate(instance)
    assert _requested(result) == ["beta"]
    # terminate asked (CANCELING); this test instance has no worker to finish the cancel
    assert instance.get_run_by_id(alpha).status == dg.DagsterRunStatus.CANCELING


def test_a_malformed_streams_file_fails_the_tick_naming_entry_and_field(
    instance: dg.DagsterInstance, write_streams: Callable[[str], Path], store_dsn: str
) -> None:
    write_streams(TWO_STREAMS.replace("symbols: [MSFT]", "symbols: [MSFT], resolution: 7s"))
    with pytest.raises(StreamsConfigError, match=r"streams\[1\] \('beta'\): field 'resolution'"):
        _evaluate(instance)
