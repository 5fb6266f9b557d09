"""mdp_core: stream market data (quotes, bars) from providers into PostgreSQL, losing nothing.

The public API (see the README and docs/ARCHITECTURE.md) is importable from here; names are
loaded on first use, so ``import mdp_core`` stays fast and needs neither asyncpg nor ib_async
to be imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Bar",
    "Channel",
    "CoordinatorRuntimeSettings",
    "CoordinatorSettings",
    "DeadLetterQueue",
    "IBKRSettings",
    "MdpSettings",
    "ProviderRegistry",
    "ProviderSource",
    "Quote",
    "RetryPolicy",
    "RuntimeOrchestrator",
    "WriteCoordinator",
    "aread_bars",
    "aread_quotes",
    "configure_logging",
    "deduplicate",
    "export_bars",
    "export_quotes",
    "read_bars",
    "read_quotes",
    "resample_bars",
    "resample_ohlc",
    "throttle",
]

_WHERE = {
    "Bar": "mdp_core.models",
    "Quote": "mdp_core.models",
    "Channel": "mdp_core.channel",
    "throttle": "mdp_core.operators",
    "deduplicate": "mdp_core.operators",
    "resample_ohlc": "mdp_core.operators",
    "resample_bars": "mdp_core.operators",
    "ProviderSource": "mdp_core.providers.base",
    "ProviderRegistry": "mdp_core.providers.registry",
    "RuntimeOrchestrator": "mdp_core.runtime",
    "WriteCoordinator": "mdp_core.coordinator",
    "CoordinatorSettings": "mdp_core.coordinator",
    "CoordinatorRuntimeSettings": "mdp_core.settings",
    "RetryPolicy": "mdp_core.coordinator",
    "DeadLetterQueue": "mdp_core.dlq",
    "IBKRSettings": "mdp_core.settings",
    "MdpSettings": "mdp_core.settings",
    "configure_logging": "mdp_core.logs",
    "read_bars": "mdp_core.store.read",
    "read_quotes": "mdp_core.store.read",
    "aread_bars": "mdp_core.store.read",
    "aread_quotes": "mdp_core.store.read",
    "export_bars": "mdp_core.store.export",
    "export_quotes": "mdp_core.store.export",
}

if TYPE_CHECKING:
    from mdp_core.channel import Channel
    from mdp_core.coordinator import (
        CoordinatorRuntimeSettings,
        CoordinatorSettings,
        RetryPolicy,
        WriteCoordinator,
    )
    from mdp_core.dlq import DeadLetterQueue
    from mdp_core.logs import configure_logging
    from mdp_core.models import Bar, Quote
    from mdp_core.operators import deduplicate, resample_bars, resample_ohlc, throttle
    from mdp_core.providers.base import ProviderSource
    from mdp_core.providers.registry import ProviderRegistry
    from mdp_core.runtime import RuntimeOrchestrator
    from mdp_core.settings import IBKRSettings, MdpSettings
    from mdp_core.store.export import export_bars, export_quotes
    from mdp_core.store.read import aread_bars, aread_quotes, read_bars, read_quotes


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mdp_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
