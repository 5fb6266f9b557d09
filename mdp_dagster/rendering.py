"""How checks and the health asset present what they found: markdown tables, times, and
the health asset's rows and metadata (no SQL, no Dagster context)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from mdp_core.store.heartbeats import Heartbeat, HeartbeatPolicy, stream_state

__all__ = ["HEALTH_COLUMNS", "health_metadata", "health_rows", "iso", "md_table"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat() if t is not None else "-"


HEALTH_COLUMNS = [
    dg.TableColumn("stream", "string"),
    dg.TableColumn("enabled", "bool"),
    dg.TableColumn("mode", "string"),
    dg.TableColumn("provider", "string"),
    dg.TableColumn("symbols", "int"),
    dg.TableColumn("state", "string", description="running, stale or stopped"),
    dg.TableColumn("last_heartbeat", "string"),
    dg.TableColumn("heartbeat_age_s", "float"),
    dg.TableColumn("rate", "float", description="records committed per second"),
    dg.TableColumn("received", "int", description="records counted at the provider's edge"),
    dg.TableColumn("committed", "int"),
    dg.TableColumn("dead_lettered", "int"),
    dg.TableColumn("dropped", "int", description="by a named policy (conflate, ...)"),
    dg.TableColumn("dlq_depth", "int", description="records of this stream in the DLQ"),
    dg.TableColumn("run_id", "string"),
    dg.TableColumn("error", "string"),
]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def health_rows(
    specs: Sequence[Any],
    heartbeats: dict[str, Heartbeat],
    dlq_by_stream: Counter[str],
    now: datetime,
    policy: HeartbeatPolicy,
) -> list[dict[str, Any]]:
    """One row per stream of streams.yaml (``specs``: ``StreamSpec``)."""
    rows = []
    for spec in specs:
        hb = heartbeats.get(spec.name)
        c = hb.counters if hb else {}
        rows.append(
            {
                "stream": spec.name,
                "enabled": spec.enabled,
                "mode": spec.mode,
                "provider": spec.provider,
                "symbols": len(spec.symbols),
                "state": stream_state(hb, now, policy),
                "last_heartbeat": iso(hb.ts) if hb else "-",
                "heartbeat_age_s": round((now - hb.ts).total_seconds(), 1) if hb else None,
                "rate": float(c.get("rate") or 0.0),
                "received": _int(c.get("received")),
                "committed": _int(c.get("committed")),
                "dead_lettered": _int(c.get("dead_lettered")),
                "dropped": _int(c.get("dropped_total")),
                "dlq_depth": dlq_by_stream.get(spec.name, 0),
                "run_id": hb.run_id if hb else "-",
                "error": str(c.get("error") or ""),
            }
        )
    return rows


def health_metadata(rows: list[dict[str, Any]], dlq_depth: int, quarantined: int) -> dict[str, Any]:
    states = Counter(r["state"] for r in rows)
    table = dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in rows],
        schema=dg.TableSchema(columns=HEALTH_COLUMNS),
    )
    md_cols = ["stream", "state", "last_heartbeat", "rate", "committed", "dead_lettered",
               "dlq_depth", "error"]  # fmt: skip
    return {
        "streams": table,
        "summary": dg.MetadataValue.md(
            md_table(md_cols, [[r[c] for c in md_cols] for r in rows]) if rows else "no streams"
        ),
        "streams_total": len(rows),
        "running": states.get("running", 0),
        "stale": states.get("stale", 0),
        "stopped": states.get("stopped", 0),
        "dlq_depth": dlq_depth,
        "dlq_quarantined": quarantined,
    }
