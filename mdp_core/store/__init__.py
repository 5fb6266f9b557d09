"""PostgreSQL storage: the database (embedded by default), migrations, sinks and rollups."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BarsSink",
    "Database",
    "DatabaseError",
    "EmbeddedServer",
    "LockHeldError",
    "QuotesSink",
    "fetch_bars",
    "rollup_bars",
]

_WHERE = {
    "Database": "mdp_core.store.database",
    "DatabaseError": "mdp_core.store.database",
    "LockHeldError": "mdp_core.store.database",
    "QuotesSink": "mdp_core.store.sinks",
    "BarsSink": "mdp_core.store.sinks",
    "EmbeddedServer": "mdp_core.store.embedded",
    "rollup_bars": "mdp_core.store.rollups",
    "fetch_bars": "mdp_core.store.rollups",
}

if TYPE_CHECKING:
    from mdp_core.store.database import Database, DatabaseError, LockHeldError
    from mdp_core.store.embedded import EmbeddedServer
    from mdp_core.store.rollups import fetch_bars, rollup_bars
    from mdp_core.store.sinks import BarsSink, QuotesSink


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mdp_core.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
