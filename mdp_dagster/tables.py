"""mdp's tables as Dagster sees them: the ``dagster/table_name`` and ``dagster/column_schema``
metadata of the assets that are rows of them (the catalog shows the columns, and the
table name links assets that share a table).

The columns follow the migrations in ``mdp_core/store/migrations`` (``tests/dagster/
test_definitions.py`` compares them with a migrated database).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

__all__ = ["BARS_TABLE", "QUOTES_TABLE", "table_metadata"]

QUOTES_TABLE = "mdp.quotes"
BARS_TABLE = "mdp.bars"


def _col(name: str, type_: str, description: str | None = None, *, null: bool = True) -> Any:
    return dg.TableColumn(
        name, type_, description, constraints=dg.TableColumnConstraints(nullable=null)
    )


_TS = "timestamp with time zone"  # as PostgreSQL names the types (format_type)
_F = "double precision"
_KEY = "part of the primary key"
_INGESTED = _col("ingested_at", _TS, "when the row was written", null=False)
_SOURCE = _col("source", "text", "provider that produced the row", null=False)

COLUMNS: dict[str, list[dg.TableColumn]] = {
    QUOTES_TABLE: [
        _col("symbol", "text", _KEY, null=False),
        _col("ts", _TS, f"{_KEY}; daily partitions (UTC)", null=False),
        _col("bid", _F), _col("ask", _F), _col("bid_size", _F), _col("ask_size", _F),
        _col("last", _F), _col("last_size", _F), _SOURCE, _INGESTED,
    ],
    BARS_TABLE: [
        _col("symbol", "text", _KEY, null=False),
        _col("resolution", "text", f"{_KEY}: 5s (streams), 1m 5m 1h 1d (rollups) ...", null=False),
        _col("ts", _TS, f"{_KEY}: start of the bar; daily partitions (UTC)", null=False),
        _col("open", _F, null=False), _col("high", _F, null=False), _col("low", _F, null=False),
        _col("close", _F, null=False), _col("volume", _F, null=False), _col("vwap", _F),
        _col("trade_count", "bigint"), _SOURCE, _INGESTED,
        _col("partial", "boolean", "built from part of its window", null=False),
    ],
}  # fmt: skip


def table_metadata(table: str) -> dict[str, dg.MetadataValue]:
    """``dagster/table_name`` and ``dagster/column_schema`` of ``table``; ``KeyError``
    naming the known tables for any other."""
    if table not in COLUMNS:
        raise KeyError(f"unknown table {table!r}: expected one of {', '.join(COLUMNS)}")
    return {
        "dagster/table_name": dg.MetadataValue.text(table),
        "dagster/column_schema": dg.MetadataValue.table_schema(
            dg.TableSchema(columns=COLUMNS[table])
        ),
    }
