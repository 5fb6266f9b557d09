"""Where to find IB: the configured Gateway/TWS, or a simulated one started in-process.

``ibkr_endpoint`` lets a script run unchanged on a laptop with nothing installed and
against a real IB Gateway: when neither ``MDP_IBKR_HOST`` nor ``MDP_IBKR_PORT`` is set it
starts ``SimulatedGateway`` on a free local port for the duration of the block::

    async with ibkr_endpoint(["AAPL", "MSFT"], time_compression=60) as ep:
        src = IBKRStreamSource(["AAPL"], ibkr_settings=ep.settings)
        print(ep.describe())
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mdp_core.settings import IBKRSettings, ibkr_configured

if TYPE_CHECKING:
    from mdp_core.gateway.server import SimulatedGateway

__all__ = ["IBKREndpoint", "ibkr_endpoint"]


@dataclass(frozen=True, slots=True)
class IBKREndpoint:
    """Connection settings, and the simulated gateway behind them (None: a configured IB)."""

    settings: IBKRSettings
    gateway: SimulatedGateway | None = None

    @property
    def simulated(self) -> bool:
        return self.gateway is not None

    def describe(self) -> str:
        """One line for humans: where the data comes from."""
        where = f"{self.settings.host}:{self.settings.port}"
        if self.gateway is None:
            return f"IB Gateway/TWS at {where} (from MDP_IBKR_HOST/MDP_IBKR_PORT)"
        compression = self.gateway.clock.time_compression
        return (
            f"no IB configured (MDP_IBKR_HOST/MDP_IBKR_PORT unset): started the simulated IB "
            f"Gateway on {where}, simulated time x{compression:g} (a 5-second bar every "
            f"{5 / compression:.2g}s)"
        )


@asynccontextmanager
async def ibkr_endpoint(
    symbols: str | Iterable[str],
    *,
    time_compression: float = 60.0,
    seed: int = 1,
    client_id: int | None = None,
    **gateway_options: Any,
) -> AsyncIterator[IBKREndpoint]:
    """The configured IB (``IBKRSettings()`` from ``MDP_IBKR_*``), or a ``SimulatedGateway``
    serving ``symbols`` on 127.0.0.1 and a free port, stopped when the block ends.

    ``client_id`` overrides the settings' client id; ``time_compression``, ``seed`` and
    ``gateway_options`` configure the simulated gateway only."""
    settings = IBKRSettings()
    if client_id is not None:
        settings = settings.model_copy(update={"client_id": client_id})
    if ibkr_configured():
        yield IBKREndpoint(settings)
        return
    from mdp_core.gateway.server import SimulatedGateway

    async with SimulatedGateway(
        symbols, port=0, seed=seed, time_compression=time_compression, **gateway_options
    ) as gateway:
        local = settings.model_copy(update={"host": gateway.host, "port": gateway.port})
        yield IBKREndpoint(local, gateway)
