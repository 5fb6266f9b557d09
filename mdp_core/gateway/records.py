"""What the simulated gateway keeps for assertions: the requests it received
(``RecordedRequest``), the ticks and bars it wrote (``SentTick``, ``SentBar``) and snapshots
of its sessions (``SessionInfo``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mdp_core.gateway.market import SimBar, SimTick

__all__ = ["RecordedRequest", "SentBar", "SentTick", "SessionInfo"]


@dataclass
class RecordedRequest:
    """A request as received, and what the gateway answered directly.

    ``replies`` holds the msg ids sent in reply, in order; ``errors`` the error codes among
    them. ``time`` is simulated epoch seconds.
    """

    client_id: int | None
    msg_id: int
    fields: tuple[str, ...]
    time: float
    replies: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SentTick:
    """A tick burst written to a client (``delayed``: sent with delayed tick types)."""

    client_id: int
    req_id: int
    tick: SimTick
    delayed: bool


@dataclass(frozen=True, slots=True)
class SentBar:
    """A bar written to a client: ``kind`` is ``"realtime"`` (msg 50) or ``"update"`` (msg 90)."""

    client_id: int
    req_id: int
    bar: SimBar
    kind: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of one client session."""

    client_id: int | None
    peer: str
    server_version: int
    market_data_type: int
    tick_req_ids: tuple[int, ...]
    bar_req_ids: tuple[int, ...]
    history_req_ids: tuple[int, ...]
