"""The IB client library, imported on first use: ``ib_async`` (preferred) or ``ib_insync``.

``mdp_core`` imports and works without either; only building an ``IBKRStreamSource`` needs
one. ``ib_insync`` (unmaintained) is a fallback with the same API, minus ``fetchFields``.
"""

from __future__ import annotations

import importlib
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
