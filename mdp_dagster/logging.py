"""Bridge mdp's loguru records into a Dagster run's log (visible in the UI's run view).

The library logs through loguru (``mdp_core.logs.logger``, passwords already masked) from
whatever thread it runs in; the stream op runs the pipeline's event loop in a thread of its
own. Dagster's ``context.log`` belongs to the op's (main) thread, so the sink only queues
records (thread-safe, bounded) and the op forwards them with ``drain()`` from its own thread.
"""

from __future__ import annotations

import queue
from types import TracebackType
from typing import TYPE_CHECKING, Any

from loguru import logger as _loguru_logger

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["LoguruBridge"]

# loguru level -> the DagsterLogManager method that logs at the matching level
_LEVELS: dict[str, str] = {
    "TRACE": "debug",
    "DEBUG": "debug",
    "INFO": "info",
    "SUCCESS": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "critical",
}


class LoguruBridge:
    """While entered, loguru records at ``level`` or above from modules under ``prefix``
    are queued and ``drain()`` hands them to ``log`` (a ``DagsterLogManager`` or any object
    with ``debug/info/warning/error/critical(msg)``) at the matching level.

    Guarantees: the sink never blocks the logging thread; at most ``max_pending`` records
    wait (beyond that they are counted in ``dropped`` and reported by the next ``drain``);
    leaving the block removes the sink and forwards what is still queued.
    """

    def __init__(
        self, log: Any, *, level: str = "INFO", prefix: str = "mdp", max_pending: int = 10_000
    ) -> None:
        self.log = log
        self.level = level.upper()
        self.prefix = prefix
        self.dropped = 0
        self._reported_dropped = 0
        self._pending: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=max_pending)
        self._handler_id: int | None = None

    def _accepts(self, record: Any) -> bool:
        name = record["name"] or ""
        return bool(name == self.prefix or name.startswith(self.prefix))

    def _sink(self, message: Message) -> None:
        record = message.record
        text = f"[{record['name']}] {record['message']}"
        if record["exception"] is not None and record["exception"].value is not None:
            exc = record["exception"].value
            text += f" ({type(exc).__name__}: {exc})"
        try:
            self._pending.put_nowait((record["level"].name, text))
        except queue.Full:
            self.dropped += 1

    def drain(self) -> int:
        """Forward every queued record to ``log`` (call from the thread owning ``log``);
        return how many were forwarded."""
        forwarded = 0
        while True:
            try:
                level, text = self._pending.get_nowait()
            except queue.Empty:
                break
            getattr(self.log, _LEVELS.get(level, "info"))(text)
            forwarded += 1
        if self.dropped > self._reported_dropped:
            self.log.warning(
                f"{self.dropped - self._reported_dropped} mdp log records were not forwarded "
                "to this run's log (too many at once); the process's stderr has them all"
            )
            self._reported_dropped = self.dropped
        return forwarded

    def __enter__(self) -> LoguruBridge:
        self._handler_id = _loguru_logger.add(
            self._sink, level=self.level, filter=self._accepts, format="{message}", catch=True
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handler_id is not None:
            try:
                _loguru_logger.remove(self._handler_id)
            except ValueError:
                pass  # someone (configure_logging) removed every handler meanwhile
            self._handler_id = None
        self.drain()
