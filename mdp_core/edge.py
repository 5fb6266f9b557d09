"""The edge of a stream: where a provider hands its records over, and where counting starts.

Every record a provider receives is counted here first (``received``), before anything can
drop it, and then leaves by exactly one way: into the stream's one ``Channel`` (and from
there to the database or the dead-letter spool), or by a named policy counted in
``dropped`` (``invalid``, ``duplicate``, ``late``, ``resampled``, ...). Nothing in between
keeps a private buffer.

Two ways in:

- ``emit(record)`` for a push provider (IBKR: ib_async's synchronous callbacks): it never
  waits. Under the channel's ``block`` policy it returns ``False`` when the channel is
  full, and the provider must pause its input (stop reading its socket) until
  ``wait_for_room()``; the record itself is never refused.
- ``await put(record)`` for a pull provider (a file, a generator): the record goes in,
  then it waits while the channel is full; a cancellation cannot lose a record.

A provider that holds records back for a while (IBKR holds live bars while it backfills a
gap, to release both in time order) counts them with ``receive()`` when they arrive and
hands them on with ``deliver()`` later; ``drop(policy)`` counts a received record that
leaves by a policy.

When the stream's resolution is coarser than the provider's bars, the edge folds them into
coarser bars (``BarWindows``): the one place where streams resample. The native bars folded
into an emitted bar are counted as ``dropped["resampled"]`` (the bar stands for them),
late ones as ``dropped["late"]``. With ``sessions`` (an exchange calendar) the daily bars
follow that exchange's sessions (``SessionWindows``), and native bars between sessions are
counted as ``dropped["outside_session"]``. ``close()`` flushes the open windows (a bar cut
short by the stop is ``partial``) and closes the channel.

Accounting, at every moment: ``received == delivered + held + folding + sum(dropped)``,
where ``delivered`` counts the channel's accepted records (native or resampled), ``held``
what the provider holds, and ``folding`` the native bars in open windows (0 after close).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mdp_core.channel import Channel, ChannelClosed
from mdp_core.logs import logger
from mdp_core.models import Bar
from mdp_core.session_windows import SessionWindows
from mdp_core.windows import BarWindows

__all__ = ["Edge"]

T = TypeVar("T")

RESAMPLED = "resampled"  # native bars folded into a coarser bar that stands for them
LATE = "late"  # native bars whose coarser window was already emitted
CLOSED = "closed"  # records that arrived after the consumer closed the channel
OUTSIDE_SESSION = "outside_session"  # native bars between an exchange's sessions


class Edge(Generic[T]):
    """See the module docstring. ``resolution``: fold bars into this coarser resolution
    (``None``: hand records on as they are); ``sessions``: an exchange calendar whose
    sessions the (daily) bars follow."""

    def __init__(
        self,
        channel: Channel[T],
        *,
        resolution: str | None = None,
        sessions: str | None = None,
        name: str = "",
    ):
        self.channel = channel
        self.name = name
        self.received = 0
        self.dropped: Counter[str] = Counter()
        self.error: BaseException | None = None  # the provider's failure, if it failed
        self._windows: BarWindows | None = None
        if sessions is not None:
            self._windows = SessionWindows(sessions)
        elif resolution is not None:
            self._windows = BarWindows(resolution)
        self._bars_out = 0  # resampled bars emitted
        self._folded_in = 0  # native bars handed to the windows (late ones included)
        self._push = channel.push
        # where a record goes on: the channel, or the windows first (a bound method each)
        self._deliver: Callable[[Any], bool] = channel.push if self._windows is None else self._fold

    # -- in -----------------------------------------------------------------------------

    def emit(self, record: T) -> bool:
        """Count ``record`` and hand it on without waiting; ``False``: pause your input."""
        self.received += 1
        try:
            return self._deliver(record)
        except ChannelClosed:
            self.dropped[CLOSED] += 1
            return True

    async def put(self, record: T) -> None:
        """Count ``record``, hand it on, and if that filled the channel wait for room
        before returning (so a producer that puts one at a time never overfills it). The
        record is in before any wait: a cancellation cannot lose it."""
        self.received += 1
        try:
            room = self._deliver(record)
        except ChannelClosed:
            self.dropped[CLOSED] += 1
            return
        if not room:
            await self.channel.wait_for_room()

    def receive(self, n: int = 1) -> None:
        """Count ``n`` records that arrived and are held back for a later ``deliver``."""
        self.received += n

    def deliver(self, record: T) -> bool:
        """Hand on a record counted by ``receive`` (or ``put``); ``False``: pause input."""
        try:
            return self._deliver(record)
        except ChannelClosed:
            self.dropped[CLOSED] += 1
            return True

    def drop(self, policy: str, n: int = 1) -> None:
        """``n`` received records leave by the named ``policy`` (counted)."""
        self.dropped[policy] += n

    # -- pressure and end ---------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Whether the channel is at or past its capacity."""
        return len(self.channel) >= self.channel.capacity

    async def wait_for_room(self) -> None:
        """Return once the channel has room again (or is closed)."""
        await self.channel.wait_for_room()

    @property
    def folding(self) -> int:
        """Native bars in windows not emitted yet."""
        if self._windows is None:
            return 0
        return self._folded_in - self._windows.folded - self.dropped[LATE] - self._windows.outside

    def close(self, error: BaseException | None = None) -> None:
        """Flush the open windows into the channel and close it (with ``error``, which its
        consumer then raises after the buffered records). Idempotent."""
        if error is not None and self.error is None:
            self.error = error
        if self._windows is not None:
            self._send(self._windows.flush())
        self.channel.close(error)

    # -- folding ------------------------------------------------------------------------

    def _fold(self, record: Any) -> bool:
        windows = self._windows
        assert windows is not None
        self._folded_in += 1
        if not isinstance(record, Bar):
            raise TypeError(f"edge {self.name!r}: resampling needs Bar records, got {record!r}")
        closed = windows.add(record)
        if windows.outside:
            self.dropped[OUTSIDE_SESSION] = windows.outside
        if closed is None:
            self.dropped[LATE] += 1
            logger.warning("stream {}: late bar {} {} left out", self.name, record.symbol,
                           record.ts)  # fmt: skip
            return not self.full
        return self._send(closed) if closed else not self.full

    def _send(self, bars: Any) -> bool:
        windows = self._windows
        assert windows is not None
        room = True
        for bar in bars:
            try:
                room = self._push(bar) and room
            except ChannelClosed:
                self.dropped[CLOSED] += 1
            self._bars_out += 1
        self.dropped[RESAMPLED] = windows.folded - self._bars_out
        return room
