"""ProviderRegistry: provider names -> factories that build a ``ProviderSource``.

Every new registry knows the built-ins ``"synthetic"``, ``"replay"`` and ``"ibkr"`` (the
last imported only when built, so ``ib_async`` is needed only by those who use it).
Third-party packages add providers through the entry-point group ``mdp.providers``::

    [project.entry-points."mdp.providers"]
    my_feed = "my_package.feed:MyFeedSource"     # a ProviderSource class or a factory

Entry points are listed when first needed and loaded on the first ``build`` of their
name; a broken one raises a ``ProviderError`` naming it and never breaks the registry.
A name registered explicitly (``register``) or built in wins over an entry point.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

from mdp_core.logs import logger
from mdp_core.providers.base import ProviderError, ProviderSource

__all__ = ["ENTRY_POINT_GROUP", "ProviderFactory", "ProviderRegistry", "UnknownProviderError"]

ENTRY_POINT_GROUP = "mdp.providers"

#: Anything called with keyword arguments that returns a ProviderSource (a subclass works).
ProviderFactory = Callable[..., ProviderSource]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
# What CPython says when a call gets a keyword it does not take, or misses a required one.
_BAD_KEYWORD_RE = re.compile(r"unexpected keyword argument '(\w+)'")
_MISSING_RE = re.compile(
    r"missing (?:a|\d+) required (?:keyword-only |positional )?arguments?: (.+)$"
)


def _synthetic(**kwargs: Any) -> ProviderSource:
    from mdp_core.providers.synthetic import SyntheticSource

    return SyntheticSource(**kwargs)


def _replay(**kwargs: Any) -> ProviderSource:
    from mdp_core.providers.replay import ReplaySource

    return ReplaySource(**kwargs)


def _ibkr(**kwargs: Any) -> ProviderSource:
    try:
        from mdp_core.providers.ibkr import IBKRStreamSource
    except ImportError as exc:
        raise ProviderError(
            f"provider 'ibkr' is not available ({exc}): install it with "
            "pip install 'mdp[ibkr]' (it needs ib_async), or use another provider: "
            "'synthetic' (generated data) or 'replay' (a CSV/Parquet/JSON file)"
        ) from exc
    return IBKRStreamSource.from_config(**kwargs)


_BUILTINS: dict[str, ProviderFactory] = {
    "synthetic": _synthetic,
    "replay": _replay,
    "ibkr": _ibkr,
}


class UnknownProviderError(KeyError, ValueError):
    """No provider has that name. Both a ``KeyError`` (a lookup that failed) and a
    ``ValueError`` (a bad argument), so either ``except`` catches it; the message names the
    known providers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _normalize_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name.strip().lower()):
        raise ValueError(
            f"invalid provider name {name!r}: expected a short name of letters, digits, "
            "'_', '-' or '.', starting with a letter"
        )
    return name.strip().lower()


class ProviderRegistry:
    """Names -> provider factories. ``build(name, **kwargs)`` makes a ``ProviderSource``.

    Names are case-insensitive (``"IBKR"`` is ``"ibkr"``).
    """

    def __init__(self, *, entry_points: bool = True) -> None:
        """``entry_points=False`` ignores the ``mdp.providers`` entry-point group."""
        self._factories: dict[str, ProviderFactory] = dict(_BUILTINS)
        self._use_entry_points = entry_points
        self._entry_points: dict[str, metadata.EntryPoint] | None = None

    def register(self, name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
        """Register ``factory`` (called with keyword arguments) under ``name``.

        Raises ``ValueError`` if the name is taken (built-in or registered) and ``replace``
        is false, and ``TypeError`` if ``factory`` is not callable.
        """
        key = _normalize_name(name)
        if not callable(factory):
            raise TypeError(f"provider {key!r}: factory {factory!r} is not callable")
        if key in self._factories and not replace:
            raise ValueError(
                f"provider {key!r} is already registered; pass replace=True to replace it"
            )
        self._factories[key] = factory

    def names(self) -> list[str]:
        """Every known name, sorted: built-ins, registered ones and entry points."""
        return sorted(set(self._factories) | set(self._discovered()))

    def __contains__(self, name: object) -> bool:
        try:
            key = _normalize_name(name)
        except ValueError:
            return False
        return key in self._factories or key in self._discovered()

    def build(self, name: str, **kwargs: Any) -> ProviderSource:
        """Build provider ``name`` with ``kwargs`` (``symbols``, ``mode``, ...).

        Raises ``UnknownProviderError`` (a ``KeyError`` and a ``ValueError``) for an unknown
        name, listing the known ones,, ``TypeError``
        naming the provider and the argument when an argument is not accepted or a required
        one is missing, ``ProviderError`` when the provider cannot be loaded; errors raised
        by the provider's own validation pass through unchanged.
        """
        key = _normalize_name(name)
        factory = self._factories.get(key) or self._load_entry_point(key)
        _check_arguments(key, factory, kwargs)
        try:
            source = factory(**kwargs)
        except TypeError as exc:
            better = _argument_error(key, factory, exc)
            if better is None:
                raise
            raise better from exc
        if not isinstance(source, ProviderSource):
            raise ProviderError(
                f"provider {key!r}: factory returned {type(source).__name__}, "
                "expected a ProviderSource"
            )
        return source

    # -- entry points ----------------------------------------------------------------------

    def _discovered(self) -> dict[str, metadata.EntryPoint]:
        if not self._use_entry_points:
            return {}
        if self._entry_points is None:
            found: dict[str, metadata.EntryPoint] = {}
            try:
                eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
            except Exception as exc:  # broken installed metadata must not break the registry
                logger.error("cannot list entry points of group {}: {}", ENTRY_POINT_GROUP, exc)
                eps = metadata.EntryPoints(())
            for ep in eps:
                try:
                    key = _normalize_name(ep.name)
                except ValueError as exc:
                    logger.error(
                        "ignoring entry point {!r} of {}: {}", ep.name, ENTRY_POINT_GROUP, exc
                    )
                    continue
                if key in self._factories:
                    logger.debug("entry point {} is shadowed by the provider of that name", key)
                found.setdefault(key, ep)
            self._entry_points = found
        return self._entry_points

    def _load_entry_point(self, key: str) -> ProviderFactory:
        ep = self._discovered().get(key)
        if ep is None:
            raise UnknownProviderError(
                f"unknown provider {key!r}: expected one of {', '.join(self.names())}"
            )
        try:
            factory = ep.load()
        except Exception as exc:
            raise ProviderError(
                f"provider {key!r}: entry point '{ep.name} = {ep.value}' of group "
                f"{ENTRY_POINT_GROUP} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(factory):
            raise ProviderError(
                f"provider {key!r}: entry point '{ep.name} = {ep.value}' is "
                f"{type(factory).__name__}, expected a ProviderSource class or a factory"
            )
        self._factories[key] = factory
        return factory


def _check_arguments(key: str, factory: ProviderFactory, kwargs: dict[str, Any]) -> None:
    """Refuse arguments the factory's signature cannot take, before calling it."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # no signature to check (some builtins): the call itself will tell
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise _argument_error(key, factory, exc) or TypeError(f"provider {key!r}: {exc}") from None


def _argument_error(key: str, factory: ProviderFactory, exc: TypeError) -> TypeError | None:
    """A TypeError naming the provider and the bad argument, if ``exc`` is about arguments."""
    text = str(exc)
    if match := _BAD_KEYWORD_RE.search(text):
        accepted = _accepted(factory)
        hint = f" (accepted: {', '.join(accepted)})" if accepted else ""
        return TypeError(f"provider {key!r} does not accept argument {match.group(1)!r}{hint}")
    if match := _MISSING_RE.search(text):
        return TypeError(f"provider {key!r} needs argument {match.group(1)}")
    return None


def _accepted(factory: ProviderFactory) -> list[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]
