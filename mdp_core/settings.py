"""Every ``MDP_*`` environment variable mdp reads, in one place, validated by pydantic
with clear errors (a bad value is refused with the variable's name).

- ``MdpSettings``: ``MDP_PROVIDER``, ``MDP_PG_DSN``, ``MDP_PG_*`` (connection timeouts),
  ``MDP_HOME``, ``MDP_LOG_*``, ``MDP_GRACEFUL_CANCEL_TIMEOUT``, ``MDP_STREAMS_FILE``,
  ``MDP_EXPORT_DIR``, ``MDP_DAGSTER_PG_URL``, ``MDP_RETENTION_DAYS``;
- ``IBKRSettings``: ``MDP_IBKR_*`` (where IB is, timeouts, backoff, watchdog, lines);
- ``CoordinatorRuntimeSettings``: ``MDP_COORDINATOR_*`` (the write coordinator's sizing);
- ``CheckSettings``: ``MDP_CHECK_*`` (the Dagster asset checks);
- ``RollupSettings``: ``MDP_ROLLUP_*`` (the Dagster rollup assets);
- ``HistorySettings``: ``MDP_HISTORY_*`` (the Dagster history asset).

Nothing else reads the environment for ``MDP_*`` (the CLI passes values on to these
classes; ``mdp up`` sets variables for the processes it starts). Every setting has a
default that works on a laptop with nothing installed: the embedded PostgreSQL under
``.mdp/`` and the simulated IB Gateway on 127.0.0.1:4002.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "CheckSettings",
    "CoordinatorRuntimeSettings",
    "HistorySettings",
    "IBKRSettings",
    "MdpSettings",
    "QueueOverflow",
    "RollupSettings",
    "describe_settings_error",
    "get_settings",
    "ibkr_configured",
]

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class MdpSettings(BaseSettings):
    """Process-wide settings: ``MDP_PROVIDER``, ``MDP_PG_DSN``, ``MDP_PG_*`` (connection
    timeouts), ``MDP_HOME``, ``MDP_LOG_*``."""

    model_config = SettingsConfigDict(env_prefix="MDP_", extra="ignore")

    provider: str = Field("ibkr", description="default provider of RuntimeOrchestrator")
    pg_dsn: SecretStr | None = Field(
        None, description="PostgreSQL DSN; unset = the embedded server under MDP_HOME"
    )
    home: Path = Field(Path(".mdp"), description="local state: embedded database, DLQ spool")
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"
    graceful_cancel_timeout: float = Field(2.0, gt=0, description="seconds to stop providers")
    pg_command_timeout: float = Field(
        60.0, gt=0, description="seconds one query or COPY may take before it fails (retried)"
    )
    pg_statement_timeout: float = Field(
        0.0, ge=0, description="PostgreSQL statement_timeout in seconds for mdp's sessions; 0: none"
    )
    pg_keepalive_idle: int = Field(
        30, ge=1, description="seconds of TCP silence before keepalive probes (both ends)"
    )
    streams_file: Path = Field(
        Path("streams.yaml"), description="the streams the Dagster deployment keeps alive"
    )
    export_dir: Path | None = Field(
        None, description="where the Dagster export asset writes (default MDP_HOME/exports)"
    )
    dagster_pg_url: SecretStr | None = Field(
        None, description="Dagster's storage (postgresql+psycopg2://...); mdp up sets it"
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        description="the Dagster retention schedule drops the daily partitions of quotes and "
        "bars, and the heartbeats, older than this many days; unset: keep everything",
    )

    @property
    def home_dir(self) -> Path:
        """``home`` as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def dlq_dir(self) -> Path:
        return self.home_dir / "dlq"


class IBKRSettings(BaseSettings):
    """Connection to TWS / IB Gateway: ``MDP_IBKR_HOST``, ``MDP_IBKR_PORT``,
    ``MDP_IBKR_CLIENT_ID`` and friends. Defaults point at the simulated gateway."""

    model_config = SettingsConfigDict(env_prefix="MDP_IBKR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(4002, ge=1, le=65535)
    client_id: int = Field(1, ge=0)
    connect_timeout: float = Field(4.0, gt=0)
    readonly: bool = True
    account: str = ""
    market_data_type: Literal[1, 2, 3, 4] = Field(
        1, description="1 live, 2 frozen, 3 delayed, 4 delayed-frozen"
    )
    use_rth: bool = False
    reconnect_initial_backoff: float = Field(0.5, gt=0)
    reconnect_max_backoff: float = Field(30.0, gt=0)
    stale_after: float = Field(30.0, gt=0, description="seconds without data = stale")
    exchange_calendar: str = Field("XNYS", description="calendar the staleness watchdog uses")
    max_lines: int = Field(100, ge=1, description="market-data lines per connection")

    @model_validator(mode="after")
    def _backoff_range(self) -> Self:
        if not self.reconnect_max_backoff >= self.reconnect_initial_backoff:
            raise ValueError(
                f"reconnect_max_backoff {self.reconnect_max_backoff} must be at least "
                f"reconnect_initial_backoff {self.reconnect_initial_backoff}"
            )
        return self


def ibkr_configured() -> bool:
    """Whether a real IB Gateway/TWS is configured (``MDP_IBKR_HOST`` or ``MDP_IBKR_PORT``
    set), rather than the simulated gateway's defaults."""
    return bool({"host", "port"} & IBKRSettings().model_fields_set)


#: What a full coordinator queue does: wait, drop the oldest item (counted), or raise.
QueueOverflow = Literal["block", "drop_oldest", "error"]


class CoordinatorRuntimeSettings(BaseSettings):
    """The write coordinator's sizing from ``MDP_COORDINATOR_CAPACITY``, ``..._WORKERS``,
    ``..._BATCH_SIZE``, ``..._FLUSH_INTERVAL``, ``..._DRAIN_TIMEOUT``, ``..._OVERFLOW``, the
    watermarks and the circuit breaker (``CoordinatorSettings.from_env`` turns them into one)."""

    model_config = SettingsConfigDict(env_prefix="MDP_", extra="ignore")

    coordinator_capacity: int = Field(20_000, ge=1)
    coordinator_workers: int = Field(4, ge=1)
    coordinator_batch_size: int = Field(500, ge=1)
    coordinator_flush_interval: float = Field(0.25, ge=0)
    coordinator_drain_timeout: float = Field(30.0, ge=0)
    coordinator_overflow: QueueOverflow = "block"
    coordinator_high_watermark: float = Field(0.8, gt=0, le=1)
    coordinator_low_watermark: float = Field(0.5, gt=0, lt=1)
    coordinator_circuit_failure_threshold: int = Field(5, ge=1)
    coordinator_circuit_reset_timeout: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _watermarks(self) -> Self:
        if not self.coordinator_low_watermark < self.coordinator_high_watermark:
            raise ValueError(
                f"coordinator_low_watermark {self.coordinator_low_watermark} must be below "
                f"coordinator_high_watermark {self.coordinator_high_watermark}"
            )
        return self

    def values(self) -> dict[str, Any]:
        """The settings under ``CoordinatorSettings``' names (without ``coordinator_``)."""
        return {
            name.removeprefix("coordinator_"): value for name, value in self.model_dump().items()
        }


class CheckSettings(BaseSettings):
    """Thresholds of the Dagster asset checks from ``MDP_CHECK_*``."""

    model_config = SettingsConfigDict(env_prefix="MDP_CHECK_", extra="ignore")

    calendar: str = Field(
        "XNYS", description="exchange_calendars name of the market's sessions; 24/7 = always"
    )
    freshness_minutes: float = Field(5.0, gt=0, description="max age of the newest row")
    window_minutes: float = Field(60.0, gt=0, description="recent window of the raw checks")
    gap_max_missing: int = Field(12, ge=0, description="missing 5s slots per symbol allowed")
    dlq_max_depth: int = Field(1000, ge=0, description="records per kind allowed in the DLQ")
    cron: str = Field("*/5 * * * *", description="when the health job runs (UTC)")


class RollupSettings(BaseSettings):
    """The Dagster rollup assets from ``MDP_ROLLUP_*``."""

    model_config = SettingsConfigDict(env_prefix="MDP_ROLLUP_", extra="ignore")

    start: date | None = Field(
        None, description="first partition (UTC day); default: 7 days before loading"
    )
    grace_seconds: float = Field(
        120.0, ge=0, description="wait this long after a window closes before rolling it up"
    )
    lookback_hours: float = Field(
        48.0, gt=0, description="the sensor never requests windows older than this"
    )
    max_requests: int = Field(48, ge=1, description="partitions per asset per sensor tick")

    def first_day(self, now: datetime) -> date:
        return self.start or (now.astimezone(UTC).date() - timedelta(days=7))


class HistorySettings(BaseSettings):
    """The Dagster history asset from ``MDP_HISTORY_*``."""

    model_config = SettingsConfigDict(env_prefix="MDP_HISTORY_", extra="ignore")

    start: date | None = Field(None, description="first partition (UTC day); default a year ago")

    def first_day(self, now: datetime) -> date:
        return self.start or (now.astimezone(UTC).date() - timedelta(days=365))


def get_settings() -> MdpSettings:
    """Read ``MdpSettings`` from the environment now (not cached: tests change it)."""
    return MdpSettings()


def _settings_class(name: str) -> type[BaseSettings] | None:
    todo: list[type[BaseSettings]] = [BaseSettings]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name and cls is not BaseSettings:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def describe_settings_error(exc: ValidationError) -> str | None:
    """One line for a ``ValidationError`` of a settings class (``MdpSettings``,
    ``IBKRSettings``, ``CoordinatorRuntimeSettings``, ...): each bad value with its
    environment variable, e.g. ``MDP_IBKR_PORT='70000': Input should be less than or equal
    to 65535``. ``None`` for the error of any other model. Secret values are not shown."""
    cls = _settings_class(exc.title)
    if cls is None:
        return None
    prefix = str(cls.model_config.get("env_prefix") or "")
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        if not loc:  # a check across fields: its message names them
            problems.append(f"{cls.__name__}: {err['msg']}")
            continue
        field = cls.model_fields.get(str(loc[0]))
        secret = field is not None and "SecretStr" in str(field.annotation)
        value = "***" if secret else repr(err.get("input"))
        problems.append(f"{prefix}{loc[0]}".upper() + f"={value}: {err['msg']}")
    return "invalid setting " + "; ".join(problems)
