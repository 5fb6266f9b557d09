"""Fixtures for the simulated gateway tests: a gateway on an ephemeral port and ib_async clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from mdp_core.gateway import SimulatedGateway
from tests.gateway.helpers import Client


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    """AAPL, MSFT, SPY random walks; a simulated minute per real second."""
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY"], port=0, seed=1, time_compression=60.0, tick_interval=0.02
    ) as gateway:
        yield gateway


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[[], Client]]:
    """Makes ib_async clients; disconnects them all at the end."""
    clients: list[Client] = []

    def make() -> Client:
        client = Client()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.ib.disconnect()
