"""Connecting an ib_async ``IB`` with errors that say what to do.

ib_async reports a refused connection as a bare ``ConnectionRefusedError``, a missing API
handshake as ``TimeoutError``, and a duplicate client id (IB error 326) by waiting for the
whole timeout. ``connect_ib`` turns each into a ``ProviderError`` naming host, port and
client id, and gives up on a duplicate client id as soon as error 326 arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr.compat import IBLibrary

__all__ = ["DuplicateClientIdError", "IBKRConnectError", "connect_ib"]


class IBKRConnectError(ProviderError):
    """The IB Gateway / TWS could not be connected to (the message says why and what to do)."""


class DuplicateClientIdError(IBKRConnectError):
    """IB error 326: another session already uses this client id."""


async def connect_ib(
    ib: Any,
    lib: IBLibrary,
    *,
    host: str,
    port: int,
    client_id: int,
    timeout: float,
    readonly: bool = True,
    account: str = "",
) -> None:
    """Connect ``ib`` (read-only, fetching nothing at startup) or raise ``IBKRConnectError``."""
    where = f"{host}:{port}"
    lib.bind_loop()
    duplicate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_error(req_id: int, code: int, msg: str, *args: Any) -> None:
        if code == 326 and not duplicate.done():
            duplicate.set_result(msg)

    ib.errorEvent += on_error
    options = {"timeout": timeout, "readonly": readonly, "account": account}
    connecting = asyncio.ensure_future(
        ib.connectAsync(host, port, clientId=client_id, **options, **lib.connect_kwargs())
    )
    try:
        await asyncio.wait({connecting, duplicate}, return_when=asyncio.FIRST_COMPLETED)
        if duplicate.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            ib.disconnect()
            raise DuplicateClientIdError(
                f"client id {client_id} is already in use at {where} (IB error 326): every "
                "connection needs its own client id; set MDP_IBKR_CLIENT_ID (or "
                "IBKRSettings(client_id=...)) to one no other session uses"
            )
        connecting.result()
    except ConnectionRefusedError:
        raise IBKRConnectError(
            f"cannot connect to IB Gateway/TWS at {where}: connection refused. Start the "
            f"simulated gateway with `mdp gateway --port {port}`, start IB Gateway/TWS with "
            "its API enabled on that port (MDP_IBKR_HOST/MDP_IBKR_PORT), or use another "
            "provider (`--provider synthetic`)"
        ) from None
    except TimeoutError:
        raise IBKRConnectError(
            f"no TWS API handshake from {where} within {timeout}s (client id {client_id}): "
            "is it an IB Gateway/TWS API port with 'Enable ActiveX and Socket Clients' on? "
            "Raise MDP_IBKR_CONNECT_TIMEOUT if it is just slow"
        ) from None
    except OSError as exc:  # unreachable host, reset, broken while connecting, ...
        raise IBKRConnectError(
            f"cannot connect to IB Gateway/TWS at {where} (client id {client_id}): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    finally:
        ib.errorEvent -= on_error
        if not duplicate.done():
            duplicate.cancel()
        if not connecting.done():
            connecting.cancel()
