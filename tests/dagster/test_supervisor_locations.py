"""Several code locations on one Dagster instance (a stream shard per code server): each
location's supervisor looks only at the runs launched from its own location. Before, the
supervisor of one shard terminated the other shard's run as "stream not enabled" on every
tick. (tests/topology runs this with real code servers; here one supervisor pass.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)

from mdp_dagster.resources import StoreResource
from mdp_dagster.streaming import (
    KIND_TAG,
    STREAM_TAG,
    load_stream_specs,
    stream_job,
    supervise,
)

ALPHA_ONLY = """
streams:
  - {name: alpha, provider: synthetic, mode: quotes, symbols: [AAPL]}
"""


class _NullLog:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _run_from(instance: dg.DagsterInstance, location: str, stream: str) -> str:
    """A STARTED run of ``stream`` launched from code location ``location``."""
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(
            GrpcServerCodeLocationOrigin(host="127.0.0.1", port=4000, location_name=location),
            "__repository__",
        ),
        stream_job.name,
    )
    run = instance.create_run_for_job(
        stream_job,
        run_config={"ops": {"run_stream": {"config": {"stream": stream}}}},
        tags={STREAM_TAG: stream, KIND_TAG: "stream"},
        status=dg.DagsterRunStatus.STARTED,
        remote_job_origin=origin,
    )
    return run.run_id


def test_a_shard_leaves_the_runs_of_another_location_alone(
    instance: dg.DagsterInstance, write_streams: Callable[[str], Path], store_dsn: str
) -> None:
    write_streams(ALPHA_ONLY)  # this location's streams file: alpha only
    beta = _run_from(instance, "mdp_2", "beta")  # the other shard's stream
    alpha = _run_from(instance, "mdp_2", "alpha")  # alpha's name, but not launched from here
    specs = load_stream_specs()
    requests, decisions = supervise(instance, specs, StoreResource(), _NullLog(), location="mdp")
    assert instance.get_run_by_id(beta).status == dg.DagsterRunStatus.STARTED
    assert [r.tags[STREAM_TAG] for r in requests] == ["alpha"]  # none of its own yet
    assert [d.reason for d in decisions] == ["no run yet"]
    # The run launched from here counts for alpha; beta is still not ours to terminate.
    _run_from(instance, "mdp", "alpha")
    requests, _ = supervise(instance, specs, StoreResource(), _NullLog(), location="mdp")
    assert requests == []
    assert instance.get_run_by_id(beta).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(alpha).status == dg.DagsterRunStatus.STARTED


def test_without_a_location_every_run_counts(
    instance: dg.DagsterInstance, write_streams: Callable[[str], Path], store_dsn: str
) -> None:
    """In-process evaluation (no code location): the one location sees all runs, and a
    stream that is not in its file has its run terminated."""
    write_streams(ALPHA_ONLY)
    beta = _run_from(instance, "mdp", "beta")
    supervise(instance, load_stream_specs(), StoreResource(), _NullLog())
    assert instance.get_run_by_id(beta).status == dg.DagsterRunStatus.CANCELING
