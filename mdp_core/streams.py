"""What a stream ingests: ``StreamSpec`` (one entry of ``streams.yaml``), its coordinator
overrides (``CoordinatorTuning``), and ``load_streams`` (the whole file, checked).

A malformed file is refused with ``StreamsConfigError`` naming the file, the entry (index
and name) and the field; two streams may not share a name or an IB client id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mdp_core.coordinator import CoordinatorSettings
from mdp_core.models import parse_resolution
from mdp_core.providers.base import normalize_symbols
from mdp_core.settings import IBKRSettings

__all__ = ["CoordinatorTuning", "StreamSpec", "StreamsConfigError", "load_streams"]


class CoordinatorTuning(BaseModel):
    """Per-stream overrides of the coordinator settings (unset = ``MDP_COORDINATOR_*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    flush_interval: float | None = Field(None, ge=0)
    drain_timeout: float | None = Field(None, ge=0)
    overflow: Literal["block", "drop_oldest", "error"] | None = None

    def to_settings(self) -> CoordinatorSettings:
        overrides = {k: v for k, v in self.model_dump().items() if v is not None}
        return CoordinatorSettings.from_env(**overrides)


# Keyword arguments the pipeline passes to the provider itself.
_RESERVED_OPTIONS = frozenset(
    {"symbols", "mode", "resolution", "bar_resolution", "max_buffer", "provider", "overflow",
     "sessions"}
)  # fmt: skip


class StreamSpec(BaseModel):
    """What one stream ingests, and how. One entry of ``streams.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    provider: str = "ibkr"
    mode: Literal["quotes", "bars"] = "bars"
    symbols: list[str]
    resolution: str = "5s"
    sessions: str | None = Field(
        None,
        description="daily bars follow this exchange's sessions (an exchange_calendars name "
        "such as XNYS) instead of UTC days; needs mode bars and resolution 1d",
    )
    client_id: int | None = Field(None, ge=0, description="IB API client id (ibkr only)")
    provider_options: dict[str, Any] = Field(default_factory=dict)
    channel_capacity: int = Field(8192, ge=1)
    channel_overflow: Literal["block", "drop_oldest", "conflate"] | None = Field(
        None,
        description="when the channel is full; default: the provider's choice "
        "(IBKR quotes: conflate), else block",
    )
    throttle: float | None = Field(None, gt=0, description="max items/s (token bucket)")
    dedupe_ttl: float | None = Field(None, gt=0, description="drop repeats within seconds")
    coordinator: CoordinatorTuning = Field(default_factory=CoordinatorTuning)
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics on this port (0: any free)"
    )
    metrics_host: str = Field("127.0.0.1", min_length=1, description="address of the metrics")
    enabled: bool = True

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> list[str]:
        return normalize_symbols(value)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str) -> str:
        return parse_resolution(value)

    @field_validator("sessions")
    @classmethod
    def _sessions(cls, value: str | None) -> str | None:
        if value is not None:
            from mdp_core.calendars import sessions_of

            sessions_of(value)  # ValueError naming an unknown calendar
        return value

    @model_validator(mode="after")
    def _sessions_are_daily(self) -> StreamSpec:
        if self.sessions is not None and (self.mode != "bars" or self.resolution != "1d"):
            raise ValueError(
                f"sessions {self.sessions!r} is set with mode {self.mode!r} and resolution "
                f"{self.resolution!r}: expected mode 'bars' and resolution '1d' (session bars "
                "are daily bars), or no sessions"
            )
        return self

    @field_validator("provider_options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(_RESERVED_OPTIONS & set(value))
        if taken:
            raise ValueError(
                f"{', '.join(taken)} cannot be a provider option: set the stream's own field "
                f"(symbols, mode, resolution, channel_capacity, channel_overflow) instead"
            )
        return value

    def provider_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the provider (``client_id`` becomes ``ibkr_settings``)."""
        kwargs = dict(self.provider_options)
        if self.client_id is not None and self.provider == "ibkr":
            kwargs.setdefault("ibkr_settings", IBKRSettings(client_id=self.client_id))
        return kwargs


class StreamsConfigError(ValueError):
    """``streams.yaml`` is malformed; the message names the entry and the field."""


def load_streams(path: str | Path) -> list[StreamSpec]:
    """Read ``streams.yaml`` (a top-level ``streams:`` list of ``StreamSpec`` entries).

    Raises ``StreamsConfigError`` naming the file, the entry (index and name) and the field
    for anything malformed, and for duplicate stream names or duplicate IB client ids."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StreamsConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise StreamsConfigError(f"{path}: not valid YAML: {exc}") from None
    entries = data.get("streams") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise StreamsConfigError(f"{path}: expected a top-level 'streams:' list of entries")
    specs: list[StreamSpec] = []
    for index, entry in enumerate(entries):
        label = f"streams[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        if not isinstance(entry, dict):
            raise StreamsConfigError(f"{path}: {label}: expected a mapping, got {entry!r}")
        try:
            specs.append(StreamSpec.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"field {'.'.join(str(p) for p in err['loc']) or '(entry)'!r}: "
                f"{err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise StreamsConfigError(f"{path}: {label}: {problems}") from None
    _check_unique(path, specs, "name", lambda s: s.name)
    exported = [s for s in specs if s.metrics_port]  # port 0 (any free one) may repeat
    _check_unique(path, exported, "metrics_port", lambda s: (s.metrics_host, s.metrics_port))
    ibkr = [s for s in specs if s.provider == "ibkr" and s.client_id is not None]
    _check_unique(path, ibkr, "client_id", lambda s: s.client_id)
    return specs


def _check_unique(
    path: Path, specs: list[StreamSpec], field: str, key: Callable[[StreamSpec], Any]
) -> None:
    seen: dict[Any, str] = {}
    for spec in specs:
        value = key(spec)
        if value in seen:
            raise StreamsConfigError(
                f"{path}: streams {seen[value]!r} and {spec.name!r} share {field} {value!r}: "
                f"expected each stream to have its own {field}"
            )
        seen[value] = spec.name
