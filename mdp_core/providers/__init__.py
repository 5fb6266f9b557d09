"""Providers: the ``ProviderSource`` contract, the registry and the built-in sources."""

from mdp_core.providers.base import ProviderError, ProviderSource, normalize_symbols

__all__ = ["ProviderError", "ProviderSource", "normalize_symbols"]
