"""The text commands of ``SimulatedGateway.control`` (and of ``mdp gateway`` on stdin):
``CONTROL_HELP``, the parser that runs one command on a gateway, and the status text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from mdp_core.gateway.records import SessionInfo

__all__ = ["CONTROL_HELP", "Controllable", "run_command", "status_text"]

#: Control commands understood by ``SimulatedGateway.control`` (and ``mdp gateway`` on stdin).
CONTROL_HELP = """\
  status                 sessions, subscriptions and counters
  drop                   close every client socket (drop_all)
  restart SECONDS        stop listening, refuse connections for SECONDS, listen again
  error CODE [TEXT]      send error CODE to every client (1100 1101 1102 2103 2104 2105 2106 ...)
  lost                   connectivity lost: error 1100 and data paused (socket stays up)
  restored [kept|lost]   1102 data kept (default) or 1101 data lost (subscriptions dropped)
  pause / resume         stop / restart data on open sockets, no error sent
  pacing                 send error 100 (max message rate exceeded) to every client
  stall / unstall        stop answering requests and sending data / go on
  help                   this list"""


class Controllable(Protocol):
    """The gateway's status and fault API the commands use (``SimulatedGateway`` has it)."""

    host: str
    port: int

    def stats(self) -> dict[str, Any]: ...
    def sessions(self) -> list[SessionInfo]: ...
    def drop_all(self) -> int: ...
    async def restart(self, downtime: float) -> None: ...
    def broadcast_error(self, code: int, msg: str | None = None, req_id: int = -1) -> int: ...
    def connectivity_lost(self) -> None: ...
    def connectivity_restored(self, data_lost: bool = False) -> None: ...
    def pause_data(self, paused: bool = True) -> None: ...
    def pacing_violation(self) -> int: ...
    def stall(self, stalled: bool = True) -> None: ...


async def run_command(gw: Controllable, command: str) -> str:
    """Run one text command (see ``CONTROL_HELP``) on ``gw``; returns a line to show the user.

    Raises ``ValueError`` naming the command and the expected forms if it is invalid."""
    words = command.split()
    if not words:
        return ""
    name, args = words[0].lower(), words[1:]
    try:
        if name == "help":
            return CONTROL_HELP
        if name == "status":
            return status_text(gw)
        if name == "drop":
            return f"dropped {gw.drop_all()} connection(s)"
        if name == "restart":
            downtime = float(args[0]) if args else 5.0
            await gw.restart(downtime)
            return f"restarted after {downtime}s down"
        if name == "error":
            code = int(args[0])
            sent = gw.broadcast_error(code, " ".join(args[1:]) or None)
            return f"sent error {code} to {sent} client(s)"
        if name == "lost":
            gw.connectivity_lost()
            return "connectivity lost (1100), data paused"
        if name == "restored":
            lost = bool(args) and args[0].lower() == "lost"
            gw.connectivity_restored(data_lost=lost)
            return f"connectivity restored ({'1101 data lost' if lost else '1102 data kept'})"
        if name in ("pause", "resume"):
            gw.pause_data(name == "pause")
            return f"data {name}d"
        if name == "pacing":
            return f"sent error 100 to {gw.pacing_violation()} client(s)"
        if name in ("stall", "unstall"):
            gw.stall(name == "stall")
            return f"{name}ed"
    except (IndexError, ValueError):
        raise ValueError(f"invalid arguments for {command!r}; commands:\n{CONTROL_HELP}") from None
    raise ValueError(f"unknown command {command!r}; commands:\n{CONTROL_HELP}")


def status_text(gw: Controllable) -> str:
    """Listening state, simulated time, switches, counters and one line per session."""
    stats = gw.stats()
    sim = datetime.fromtimestamp(stats["sim_time"], UTC).isoformat(timespec="seconds")
    lines = [
        f"listening={stats['listening']} on {gw.host}:{gw.port} sim_time={sim} "
        f"paused={stats['data_paused']} stalled={stats['stalled']}",
        f"totals: {stats['totals']}",
        f"events: {stats['events']}",
    ]
    lines += [
        f"client {s.client_id} {s.peer}: {len(s.tick_req_ids)} tick, "
        f"{len(s.bar_req_ids)} bar, {len(s.history_req_ids)} history subscription(s), "
        f"market data type {s.market_data_type}"
        for s in gw.sessions()
    ]
    return "\n".join(lines)
