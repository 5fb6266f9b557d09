"""Test helpers: an ib_async client wrapper and event futures (no sleeps as synchronisation)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from ib_async import IB

from mdp_core.gateway import SimulatedGateway

_client_ids = itertools.count(1)


class Client:
    """An ib_async IB connected to a gateway, with the errors it saw recorded."""

    def __init__(self) -> None:
        self.ib = IB()
        self.errors: list[tuple[int, int, str]] = []
        self._error_waiters: list[tuple[int, asyncio.Future[tuple[int, int, str]]]] = []
        self.ib.errorEvent += self._on_error

    def _on_error(self, req_id: int, code: int, msg: str, contract: Any = None) -> None:
        self.errors.append((req_id, code, msg))
        for wanted, future in self._error_waiters:
            if wanted == code and not future.done():
                future.set_result((req_id, code, msg))

    def codes(self) -> list[int]:
        return [code for _, code, _ in self.errors]

    def expect_error(self, code: int) -> asyncio.Future[tuple[int, int, str]]:
        """A future set when error ``code`` arrives (create it before triggering the error)."""
        future: asyncio.Future[tuple[int, int, str]] = asyncio.get_running_loop().create_future()
        self._error_waiters.append((code, future))
        return future

    async def connect(self, gw: SimulatedGateway, client_id: int | None = None, **kw: Any) -> IB:
        await self.ib.connectAsync(
            "127.0.0.1", gw.port, clientId=client_id or next(_client_ids), **kw
        )
        return self.ib


def event_future(
    event: Any, predicate: Callable[..., bool] = lambda *a: True
) -> asyncio.Future[Any]:
    """A future set with the args of the first emit of ``event`` matching ``predicate``."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def handler(*args: Any) -> None:
        if not future.done() and predicate(*args):
            future.set_result(args)
            event.disconnect(handler)

    event += handler
    return future
