"""PostgreSQL storage: the database (embedded by default), migrations, sinks, rollups, and
reading and exporting the data."""

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
    "WritePathPolicy",
    "aread_bars",
    "aread_quotes",
    "export_bars",
    "export_quotes",
    "fetch_bars",
    "read_bars",
    "read_quotes",
    "rollup_bars",
]

_WHERE = {
    "Database": "mdp_core.store.database",
    "DatabaseError": "mdp_core.store.database",
    "LockHeldError": "mdp_core.store.database",
    "QuotesSink": "mdp_core.store.sinks",
    "BarsSink": "mdp_core.store.sinks",
    "WritePathPolicy": "mdp_core.store.write_path",
    "EmbeddedServer": "mdp_core.store.embedded",
    "rollup_bars": "mdp_core.store.rollups",
    "fetch_bars": "mdp_core.store.rollups",
    "read_bars": "mdp_core.store.read",
    "read_quotes": "mdp_core.store.read",
    "aread_bars": "mdp_core.store.read",
    "aread_quotes": "mdp_core.store.read",
    "export_bars": "mdp_core.store.export",
    "export_quotes": "mdp_core.store.export",
}

if TYPE_CHECKING:
    from mdp_core.store.database import Database, DatabaseError, LockHeldError
    from mdp_core.store.embedded import EmbeddedServer
    from mdp_core.store.export import export_bars, export_quotes
    from mdp_core.store.read import aread_bars, aread_quotes, read_bars, read_quotes
    from mdp_core.store.rollups import fetch_bars, rollup_bars
    from mdp_core.store.sinks import BarsSink, QuotesSink
    from mdp_core.store.write_path import WritePathPolicy


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mdp_core.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
