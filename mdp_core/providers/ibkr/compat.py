"""The IB client library, imported on first use: ``ib_async`` (preferred) or ``ib_insync``.

``mdp_core`` imports and works without either; only building an ``IBKRStreamSource`` needs
one. ``ib_insync`` (unmaintained) is a fallback with the same API, minus ``fetchFields``.

ib_insync's event library (``eventkit`` 1.0) finds the event loop through the loop policy
(``get_event_loop_policy().get_event_loop()``), at import and whenever an event is awaited,
never through the running loop. A loop that runs without being the policy's (a runner
with a loop factory, or one started after an earlier ``asyncio.run`` in the same thread
reset the policy's) makes it raise "There is no current event loop". ``bind_loop()`` makes
the running loop the policy's, as ``asyncio.run`` itself does; a no-op for ib_async.
"""

from __future__ import annotations

import asyncio
import importlib
import warnings
from dataclasses import dataclass
from typing import Any

from mdp_core.providers.base import ProviderError

__all__ = ["IBLibrary", "load_ib_library"]

_INSTALL_HINT = (
    "the 'ibkr' provider needs ib_async: install it with pip install 'mdp[ibkr]' "
    "(or use another provider: 'synthetic' or 'replay')"
)


@dataclass(frozen=True, slots=True)
class IBLibrary:
    """The parts of the IB client library the source uses."""

    name: str  # "ib_async" or "ib_insync"
    module: Any
    IB: Any
    Stock: Any
    startup_fetch_none: Any  # ib_async's StartupFetchNONE; None for ib_insync

    def bind_loop(self) -> None:
        """ib_insync: make the running loop the loop policy's (see the module docstring)."""
        if self.name == "ib_insync":
            _bind_policy_loop()

    def connect_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``IB.connectAsync`` (fetch nothing at startup)."""
        return {} if self.startup_fetch_none is None else {"fetchFields": self.startup_fetch_none}


_cached: IBLibrary | None = None


def load_ib_library() -> IBLibrary:
    """Import ``ib_async`` (else ``ib_insync``); ``ProviderError`` saying what to install."""
    global _cached
    if _cached is not None:
        return _cached
    errors: list[str] = []
    for name in ("ib_async", "ib_insync"):
        try:
            if name == "ib_insync":
                _bind_policy_loop()  # eventkit asks the policy for a loop at import
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        _cached = IBLibrary(
            name=name,
            module=module,
            IB=module.IB,
            Stock=module.Stock,
            startup_fetch_none=getattr(module, "StartupFetchNONE", None),
        )
        return _cached
    raise ProviderError(f"{_INSTALL_HINT} ({'; '.join(errors)})")


def _bind_policy_loop() -> None:
    """Make the running loop the policy's current one; outside a running loop, make sure
    the policy has one (a new loop, if it was reset)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                asyncio.get_event_loop_policy().get_event_loop()
                return
            except RuntimeError:
                loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
