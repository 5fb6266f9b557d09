"""No password in any log line, error, CLI output, counter, heartbeat or Dagster metadata.

Every test gives mdp a DSN holding ``PASSWORD`` (a role with that password on the session's
server, or an unreachable / malformed DSN) and looks for the password in everything mdp
shows: every loguru record (as text with tracebacks and as JSON), exception messages and
tracebacks (chained causes too), CLI stdout/stderr, ``WriteCoordinator.stats()``, DLQ
records, ``PipelineStats.to_dict()``, heartbeat rows and Dagster's event log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mdp_core import CoordinatorSettings, Quote, RetryPolicy, WriteCoordinator
from mdp_core.cli.db import _split_password
from mdp_core.dlq import DeadLetterQueue
from mdp_core.dsn import describe_dsn, mask_dsn, mask_secrets, scrub
from mdp_core.errors import PermanentError, TransientError
from mdp_core.models import Record
from mdp_core.pipeline import Pipeline
from mdp_core.providers.base import ProviderError, ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.settings import get_settings
from mdp_core.store.database import Database, DatabaseError
from mdp_core.store.sinks import QuotesSink
from mdp_core.streams import StreamSpec
from mdp_dagster.assets import RAW_ASSETS
from mdp_dagster.health import build_health_defs
from mdp_dagster.io_manager import IO_MANAGER_KEY, MdpIOManager
from mdp_dagster.resources import DlqResource, StoreResource, store_resource
from mdp_dagster.rollups import build_rollup_defs
from mdp_dagster.streaming import StreamRunConfig, stream_job
from tests.security.helpers import (
    PASSWORD,
    assert_no_secret,
    exception_texts,
    mdp_env,
    run_all,
    sql,
    write_text,
)

T0 = datetime(2024, 1, 3, 15, 0, tzinfo=UTC)


def quotes(symbol: str, n: int, start: datetime = T0) -> list[Quote]:
    return [
        Quote(symbol, start + timedelta(seconds=i), bid=100.0 + i, ask=100.5 + i) for i in range(n)
    ]


# -- masking itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://u:{PASSWORD}@db.example:5432/mdp",
        f"postgres://u:{PASSWORD}@/mdp?host=/run/postgresql",
        f"postgresql+asyncpg://u:{PASSWORD}@db/mdp",
        f"postgresql://u:p@{PASSWORD}@db/mdp",  # an unencoded "@" in the password
        f"postgresql://db/mdp?user=u&password={PASSWORD}&sslmode=require",
        f"host=db user=u password={PASSWORD} dbname=mdp",
        f"host=db user=u password = '{PASSWORD} with spaces' dbname=mdp",
        f"error: could not reach 'postgresql://u:{PASSWORD}@db/mdp' (timeout)",
        f"postgresql://u:#{PASSWORD}#@db/mdp",  # an unencoded "#" (a fragment to urlsplit)
        f"postgresql://u:?{PASSWORD}?@db/mdp",  # an unencoded "?" (a query to urlsplit)
        f"postgresql://u:a/{PASSWORD}@db/mdp",  # an unencoded "/"
        f"host=db user=u password='it\\'s {PASSWORD}' dbname=mdp",  # libpq's escaped quote
        f"host=db user=u password=#{PASSWORD}?&x dbname=mdp",
    ],
)
def test_mask_secrets_hides_the_password_of_every_dsn_form(text: str) -> None:
    masked = mask_secrets(text)
    assert_no_secret(masked, mask_dsn(text))
    assert "***" in masked


@pytest.mark.parametrize(
    ("dsn", "echoed"),
    [
        (f"postgresql://u:{PASSWORD}%20two%23@db/mdp", f"{PASSWORD} two#"),  # decoded
        (f"host=db password='{PASSWORD} two' user=u", f"{PASSWORD} two"),  # unquoted
        (f"host=db password='a\\'{PASSWORD}' user=u", f"a'{PASSWORD}"),  # unescaped
    ],
)
def test_scrub_hides_a_password_a_server_echoes_back_decoded(dsn: str, echoed: str) -> None:
    text = scrub(f"connecting with {dsn} failed: password {echoed!r} rejected", dsn)
    assert_no_secret(text)
    assert echoed not in text


def test_masking_keeps_what_is_not_a_secret() -> None:
    dsn = "postgresql://u@db.example:5432/mdp?host=/run/pg"
    assert mask_dsn(dsn) == dsn
    assert mask_dsn(f"postgresql://u:{PASSWORD}@db.example:5432/mdp") == (
        "postgresql://u:***@db.example:5432/mdp"
    )
    info = describe_dsn(f"postgresql://u:{PASSWORD}@db.example:5432/mdp")
    assert (info.host, info.port, info.database, info.user) == ("db.example", 5432, "mdp", "u")
    assert_no_secret(info, repr(info))


# -- Database errors ---------------------------------------------------------------------------

BAD_DSNS = {
    "refused": f"postgresql://u:{PASSWORD}@127.0.0.1:1/mdp",
    "unknown host": f"postgresql://u:{PASSWORD}@no-such-host.invalid:5432/mdp",
    "bad port": f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/mdp",
    "port out of range": f"postgresql://u:{PASSWORD}@127.0.0.1:99999/mdp",
    "bad scheme": f"mysql://u:{PASSWORD}@127.0.0.1:1/mdp",
    "broken IPv6": f"postgresql://u:{PASSWORD}@[::1/mdp",
    "raw @ in password": f"postgresql://u:p@{PASSWORD}@127.0.0.1:1/mdp",
    "missing colon": f"postgresql//u:{PASSWORD}@127.0.0.1:1/mdp",
    "key/value form": f"host=127.0.0.1 port=1 user=u password={PASSWORD}",
    "password in query": f"postgresql://127.0.0.1:1/mdp?user=u&password={PASSWORD}",
    "bad sslmode": f"postgresql://u:{PASSWORD}@127.0.0.1:1/mdp?sslmode=bogus",
}


@pytest.mark.parametrize("dsn", list(BAD_DSNS.values()), ids=list(BAD_DSNS))
async def test_connect_errors_never_show_the_password(dsn: str, logs: list[str]) -> None:
    with pytest.raises(DatabaseError) as caught:
        await Database.connect(dsn, connect_timeout=5)
    assert "cannot connect" in str(caught.value)
    assert_no_secret(*exception_texts(caught.value), *logs)


async def test_a_mistyped_dsn_the_server_echoes_back_is_masked(
    socket_dir: str, logs: list[str]
) -> None:
    # "postgresql:/u:pw@x/db" (one slash) has no user or password for the client: it
    # reaches the server with the database name "u:pw@x/db", which the server echoes back.
    dsn = f"postgresql:/u:{PASSWORD}@x/mdp?host={socket_dir}&user=postgres"
    with pytest.raises(DatabaseError, match="database does not exist") as caught:
        await Database.connect(dsn, connect_timeout=5)
    assert_no_secret(*exception_texts(caught.value), *logs)


# -- a reachable server with a password --------------------------------------------------------


class LeakyProvider(ProviderSource):
    """Yields ``n`` quotes, then fails with an error quoting a DSN (as a careless upstream
    library might)."""

    name = "leaky"

    def __init__(self, symbols: Any, mode: str = "quotes", bar_resolution: str = "5s", *,
                 dsn: str, n: int = 10) -> None:  # fmt: skip
        super().__init__(symbols, mode, bar_resolution)
        self.dsn, self.n = dsn, n

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def stream(self) -> AsyncIterator[Record]:
        for q in quotes(self.symbols[0], self.n):
            yield q
        raise ProviderError(f"upstream {self.dsn} refused; retry with host=h password={PASSWORD}")


async def test_pipeline_on_a_password_dsn_shows_it_nowhere(
    secret_dsn: str, monkeypatch: pytest.MonkeyPatch, logs: list[str]
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", secret_dsn)
    registry = ProviderRegistry()
    registry.register("leaky", lambda **kw: LeakyProvider(**kw))
    async with Database.connect() as db:  # from MDP_PG_DSN
        assert db.dsn == secret_dsn  # it really is the password DSN that is in use
        status = await db.status()
        ok_spec = StreamSpec(
            name="sec_ok", provider="synthetic", mode="quotes", symbols=["AAPL", "MSFT"],
            provider_options={"rate": 0, "max_items": 300, "start": T0},
        )  # fmt: skip
        ok = await Pipeline(ok_spec, db, heartbeat_interval=3600).run()
        bad_spec = StreamSpec(
            name="sec_leaky", provider="leaky", mode="quotes", symbols=["SPY"],
            provider_options={"dsn": secret_dsn},
        )  # fmt: skip
        bad = Pipeline(bad_spec, db, registry=registry, heartbeat_interval=3600)
        with pytest.raises(ProviderError):
            await bad.run()
        failed = bad.stats()
        shown = [db.describe(), db.safe_dsn, repr(status), repr(ok), repr(failed)]
        shown += [json.dumps(ok.to_dict()), json.dumps(failed.to_dict())]
        beats = await db.pool.fetch("SELECT stream, counters::text AS c FROM mdp.stream_heartbeats")
    assert ok.balanced and ok.to_dict()["committed"] == 300
    assert failed.state == "failed" and failed.balanced
    assert "upstream postgresql://mdp_sec:***@" in (failed.error or "")
    assert {r["stream"] for r in beats} == {"sec_ok", "sec_leaky"}
    assert_no_secret(*shown, *(r["c"] for r in beats), *logs)


class FaultySink(QuotesSink):
    """The real QuotesSink, except that batches of three symbols fail with an error whose
    message quotes the DSN: TRANS transiently, PERM permanently, FATAL as a bug (which is
    isolated like a permanent error: bisected, each row dead-lettered with it)."""

    async def write(self, batch: Any) -> int:
        symbols = {r.symbol for r in batch}
        where = f"{self.db.dsn} (host=h user=u password={PASSWORD})"
        if "TRANS" in symbols:
            raise TransientError(f"connection to {where} lost")
        if "PERM" in symbols:
            raise PermanentError(f"row refused by {where}")
        if "FATAL" in symbols:
            raise RuntimeError(f"unexpected state of {where}")
        return await super().write(batch)


async def test_coordinator_errors_are_masked_in_health_dlq_logs_and_cli(
    secret_dsn: str, logs: list[str]
) -> None:
    settings = CoordinatorSettings(workers=1, batch_size=50, flush_interval=0.0)
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
    dlq = DeadLetterQueue()
    groups = {"TRANS": 3, "PERM": 4, "FATAL": 5, "GOOD": 20}
    async with (
        Database.connect(secret_dsn) as db,
        WriteCoordinator(FaultySink(db), settings, policy, dlq, name="sec") as coord,
    ):
        for symbol, n in groups.items():
            await coord.submit_many(quotes(symbol, n))
            await coord.drain()  # one group per batch
        health = coord.stats()
    assert health.submitted == sum(groups.values())
    assert health.committed == groups["GOOD"]
    assert health.dead_lettered == groups["TRANS"] + groups["PERM"] + groups["FATAL"]
    assert health.submitted == health.committed + health.dead_lettered + health.dropped
    assert health.worker_restarts == 0  # a bug in the sink is isolated, not a crash
    records = dlq.list()
    assert {r.item["symbol"] for r in records} == {"TRANS", "PERM", "FATAL"}
    assert {r.error.type for r in records} == {"TransientError", "PermanentError", "RuntimeError"}
    assert all("mdp_sec:***@" in r.error.message for r in records)
    spooled = "".join(p.read_text() for p in dlq.directory.glob("*.jsonl"))
    [listing] = run_all([(["dlq", "list", "--records", "50"], mdp_env(MDP_LOG_LEVEL="TRACE"))])
    assert listing.returncode == 0 and "12 records in the spool" in listing.stdout
    assert_no_secret(
        health.last_error, json.dumps(health.to_dict()), *(str(r.error) for r in records),
        spooled, listing.stdout, listing.stderr, *logs,
    )  # fmt: skip


def test_cli_never_prints_the_password(secret_dsn: str, tmp_path: Path) -> None:
    secret = mdp_env(MDP_PG_DSN=secret_dsn, MDP_LOG_LEVEL="TRACE")
    unreachable = mdp_env(
        MDP_PG_DSN=f"postgresql://u:{PASSWORD}@127.0.0.1:1/mdp", MDP_LOG_LEVEL="TRACE"
    )
    malformed = mdp_env(
        MDP_PG_DSN=f"postgresql://u:{PASSWORD}@127.0.0.1:bad/mdp", MDP_LOG_LEVEL="TRACE"
    )
    DeadLetterQueue().put(quotes("AAPL", 3), RuntimeError(f"lost {secret_dsn}"), 5)
    [migrate] = run_all([(["db", "migrate"], secret)])
    assert migrate.returncode == 0, migrate.stderr
    stream = ["stream", "--provider", "synthetic", "--mode", "quotes", "--symbols", "AAPL",
              "--option", "rate=0", "--option", "max_items=50",
              "--option", "start=2024-01-03T15:00:00Z"]  # fmt: skip
    results = run_all(
        [
            (["db", "status"], secret),
            (["db", "url"], secret),
            (stream, secret),
            (["dlq", "list", "--records", "10"], secret),
            (["db", "url"], malformed),
            (["dlq", "replay"], unreachable),
            (["db", "status"], unreachable),
            (["db", "migrate"], unreachable),
            (stream, unreachable),
            (["db", "status"], malformed),
            (stream, malformed),
        ]
    )
    status, url, streamed, listing, bad_url, *failing = results
    assert status.returncode == 0 and "mdp_sec:***@" in status.stdout
    assert url.stdout.strip() == secret_dsn.replace(PASSWORD, "***")
    assert streamed.returncode == 0 and "committed 50" in streamed.stdout, streamed.stderr
    assert "DEBUG" in streamed.stderr  # TRACE logging was on: everything was logged
    assert listing.returncode == 0 and "3 records in the spool" in listing.stdout
    assert bad_url.stdout.strip() == "postgresql://u:***@127.0.0.1:bad/mdp"
    for result in failing:  # unreachable or malformed: a clear error, no traceback
        assert result.returncode == 1, result
        assert "cannot connect" in result.stdout + result.stderr, result
        assert "Traceback" not in result.stderr, result
    for result in [migrate, *results]:
        assert_no_secret(result.stdout, result.stderr)
    # The one place the password may show: `mdp db url --show-password`, asked explicitly.
    [shown] = run_all([(["db", "url", "--show-password"], secret)])
    assert shown.stdout.strip() == secret_dsn


def test_psql_gets_the_password_in_its_environment_not_its_arguments(secret_dsn: str) -> None:
    dsn, password = _split_password(secret_dsn)  # argv is visible to every local user
    assert password == PASSWORD and dsn == secret_dsn.replace(f":{PASSWORD}@", "@")
    [psql] = run_all(
        [(["db", "psql", "-c", "SELECT current_user"], mdp_env(MDP_PG_DSN=secret_dsn))]
    )
    assert psql.returncode == 0 and "mdp_sec" in psql.stdout, psql.stderr
    assert_no_secret(psql.stdout, psql.stderr)


# -- Dagster ------------------------------------------------------------------------------------


def test_store_resource_config_holds_only_the_variable_name(
    secret_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", secret_dsn)
    store = store_resource()  # what the code location binds
    assert store.dsn() == secret_dsn  # resolved from the environment when needed
    assert store.model_dump() == {"pg_dsn": "MDP_PG_DSN"}  # Dagster's EnvVar: the name only
    assert_no_secret(repr(store), store.model_dump_json())
    assert StoreResource().dsn() == secret_dsn  # unconfigured: mdp's settings


STREAMS = """
streams:
  - name: sec_quotes
    provider: synthetic
    mode: quotes
    symbols: [AAPL, MSFT]
    provider_options: {{rate: 0, max_items: 200, start: "2024-01-03T15:00:00Z"}}
  - name: sec_broken
    provider: replay
    mode: bars
    symbols: [SPY]
    resolution: 1m
    provider_options: {{path: "{missing}"}}
"""


def _all_events(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(repr(record) for record in instance.all_logs(run_id))


def test_dagster_stream_op_and_health_never_show_the_password(
    secret_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[str]
) -> None:
    monkeypatch.setenv("MDP_PG_DSN", secret_dsn)
    # A provider error quoting a key/value secret, as an upstream library might word it.
    missing = tmp_path / f"password={PASSWORD}" / "missing.csv"
    streams = write_text(tmp_path / "streams.yaml", STREAMS.format(missing=missing))
    monkeypatch.setenv("MDP_STREAMS_FILE", str(streams))
    resources: dict[str, object] = {
        "store": StoreResource(),
        "dlq": DlqResource(),
        IO_MANAGER_KEY: MdpIOManager(),  # the rollup and raw assets name it
    }
    shown: list[str] = []
    with dg.instance_for_test() as instance:

        def run(stream: str) -> dg.ExecuteInProcessResult:
            config = StreamRunConfig(stream=stream, max_seconds=60.0, heartbeat_interval=3600)
            result = stream_job.execute_in_process(
                run_config=dg.RunConfig(ops={"run_stream": config}),
                instance=instance, resources=resources, raise_on_error=False,
            )  # fmt: skip
            shown.extend([_all_events(instance, result.run_id), repr(result.dagster_run)])
            return result

        ok, broken = run("sec_quotes"), run("sec_broken")
        assert ok.success
        assert not broken.success
        failure = next(e for e in broken.all_events if e.is_step_failure)
        assert "password=***" in repr(failure.step_failure_data)
        defs = dg.Definitions.merge(
            build_rollup_defs(),
            build_health_defs(),
            dg.Definitions(assets=RAW_ASSETS, resources=resources),
        )
        health = defs.resolve_job_def("mdp_health").execute_in_process(
            instance=instance, resources=resources
        )
        assert health.success
        shown.append(_all_events(instance, health.run_id))
        [mat] = health.get_asset_materialization_events()
        table: Any = mat.materialization.metadata["streams"].value
        rows = {r.data["stream"]: r.data for r in table.records}
        assert rows["sec_broken"]["error"]  # the failure's error reached the health table
        shown.append(repr(mat))
        shown += [repr(e) for e in health.get_asset_check_evaluations()]
    beats = sql(secret_dsn, "SELECT counters::text AS c FROM mdp.stream_heartbeats")
    assert len(beats) >= 2
    assert_no_secret(*shown, *(r["c"] for r in beats), *logs)
    assert get_settings().pg_dsn is not None  # the secret really was configured
