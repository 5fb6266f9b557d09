"""The dead-letter queue: a local, durable spool of records the database did not take
(``DeadLetterQueue``; see ``mdp_core.dlq.spool`` for what it guarantees).

- ``spool.py``: ``DeadLetterQueue`` (put, count, iter/list, replay, purge);
- ``records.py``: ``DeadLetterRecord`` and ``ReplayResult``;
- ``replay.py``: one replay's work; ``files.py``: names, modes, durable writes.
"""

from __future__ import annotations

from mdp_core.dlq.records import DeadLetterRecord, ReplayBusyError, ReplayResult
from mdp_core.dlq.spool import DeadLetterQueue

__all__ = ["DeadLetterQueue", "DeadLetterRecord", "ReplayBusyError", "ReplayResult"]
