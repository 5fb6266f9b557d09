"""Settings from the environment (``MDP_*``), validated by pydantic with clear errors.

Every setting has a default that works on a laptop with nothing installed: the embedded
PostgreSQL under ``.mdp/`` and the simulated IB Gateway on 127.0.0.1:4002.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["IBKRSettings", "MdpSettings", "describe_settings_error", "get_settings"]

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
    graceful_cancel_timeout: float = Field(5.0, gt=0, description="seconds to stop providers")
    pg_command_timeout: float = Field(
        60.0, gt=0, description="seconds one query or COPY may take before it fails (retried)"
    )
    pg_statement_timeout: float = Field(
        0.0, ge=0, description="PostgreSQL statement_timeout in seconds for mdp's sessions; 0: none"
    )
    pg_keepalive_idle: int = Field(
        30, ge=1, description="seconds of TCP silence before keepalive probes (both ends)"
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
