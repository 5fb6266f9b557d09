"""The ``Sink`` protocol: what batches are written to (``QuotesSink``, ``BarsSink`` or your
own), by the write coordinator and by DLQ replay alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Sink"]

T_contra = TypeVar("T_contra", contravariant=True)


class Sink(Protocol[T_contra]):
    """What the coordinator writes to: ``QuotesSink``, ``BarsSink`` or your own.

    ``write`` stores the whole batch in one transaction (all or nothing) and returns how
    many rows were new; it raises on failure (see ``mdp_core.errors`` for how errors are
    read)."""

    @property
    def kind(self) -> str:
        """``"quote"`` or ``"bar"``: what the DLQ records as the items' kind."""
        ...

    async def write(self, batch: Sequence[T_contra], /) -> int: ...
