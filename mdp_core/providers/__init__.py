"""Providers: the ``ProviderSource`` contract, the registry and the built-in sources.

``ProviderRegistry``, ``SyntheticSource`` and ``ReplaySource`` are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mdp_core.providers.base import ProviderError, ProviderSource, normalize_symbols

if TYPE_CHECKING:
    from mdp_core.providers.registry import ProviderRegistry, UnknownProviderError
    from mdp_core.providers.replay import ReplaySource
    from mdp_core.providers.synthetic import SyntheticSource

__all__ = [
    "ProviderError",
    "ProviderRegistry",
    "ProviderSource",
    "ReplaySource",
    "SyntheticSource",
    "UnknownProviderError",
    "normalize_symbols",
]

_LAZY = {
    "ProviderRegistry": "mdp_core.providers.registry",
    "ReplaySource": "mdp_core.providers.replay",
    "SyntheticSource": "mdp_core.providers.synthetic",
    "UnknownProviderError": "mdp_core.providers.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mdp_core.providers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
