"""Fixtures: a simulated gateway on a free port (a simulated minute per real second) and a
loguru capture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from mdp_core.gateway import SimulatedGateway
from mdp_core.logs import logger


@pytest.fixture
async def gw() -> AsyncIterator[SimulatedGateway]:
    async with SimulatedGateway(
        symbols=["AAPL", "MSFT", "SPY"], port=0, seed=3, time_compression=60.0, tick_interval=0.02
    ) as gateway:
        yield gateway


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Messages logged through loguru at WARNING and above during the test."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)
