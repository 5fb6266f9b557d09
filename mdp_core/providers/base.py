"""The provider contract: a source of Quote or Bar records.

A provider is built with the symbols it streams and a ``mode``; ``start()`` connects,
``stream()`` yields immutable records until ``stop()`` is called (or a finite source ends),
and raises if the provider fails, so a consumer never mistakes a failure for the end.

A *push* provider (``push = True``: records arrive in callbacks that cannot wait, like
ib_async's) writes into the ``Edge`` the runtime attaches before ``start()``; it keeps no
buffer of its own. See ``mdp_core.edge``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, TypeVar

from mdp_core.instruments import canonical_id
from mdp_core.models import normalize_symbol, parse_resolution

if TYPE_CHECKING:
    from mdp_core.edge import Edge

__all__ = ["Mode", "ProviderError", "ProviderSource", "normalize_symbols", "parse_mode"]

Mode = Literal["quotes", "bars"]
T = TypeVar("T")


class ProviderError(RuntimeError):
    """A provider cannot go on (bad configuration, unreachable upstream, ...)."""


def normalize_symbols(symbols: str | Iterable[str]) -> list[str]:
    """Symbols normalised by the records' rule (``models.normalize_symbol``: stripped,
    upper-cased, 1-64 printable characters), instrument ids (``EUR:CASH``, see
    ``mdp_core.instruments``) in their canonical form, de-duplicated, in order;
    ``"AAPL,MSFT"`` works too.

    Raises ``ValueError`` naming the bad entry (pydantic reports only ``ValueError``)."""
    if isinstance(symbols, str):
        symbols = symbols.split(",")
    out: list[str] = []
    for raw in symbols:
        if not isinstance(raw, str):
            raise ValueError(f"invalid symbol {raw!r}: expected a str")
        symbol = normalize_symbol(raw)
        if ":" in symbol:
            symbol = canonical_id(symbol)
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise ValueError("no symbols given: expected at least one symbol")
    return out


def parse_mode(mode: str) -> Mode:
    if mode not in ("quotes", "bars"):
        raise ValueError(f"invalid mode {mode!r}: expected 'quotes' or 'bars'")
    return mode  # type: ignore[return-value]


class ProviderSource(ABC, Generic[T]):
    """Base class of every provider (``ProviderSource[Quote]``, ``ProviderSource[MyType]``).
    Subclasses implement ``start``, ``stop``, ``stream``.

    Guarantees expected of every subclass:
    - ``stream()`` yields only validated, immutable records;
    - ``stop()`` is idempotent and makes ``stream()`` end promptly;
    - a failure surfaces as an exception from ``stream()``, never as a silent end.

    ``resolution`` is the provider's native resolution: that of the bars it delivers
    (``None`` for quotes); the runtime resamples them when a stream asks for coarser ones.
    A provider that refuses input it received (a malformed file row) reports it with
    ``refuse(policy)``, so the stream's accounting sees it.
    """

    #: registry name of the provider (``"synthetic"``, ``"replay"``, ``"ibkr"``, ...)
    name: ClassVar[str] = ""
    #: records come from callbacks into ``self.edge`` (see the module docstring)
    push: ClassVar[bool] = False
    #: what a push provider wants its channel to do when full, per mode (default "block")
    default_overflow: ClassVar[dict[str, str]] = {}
    edge: Edge[Any] | None = None  # attached by the runtime before start()

    def __init__(
        self,
        symbols: str | Iterable[str],
        mode: str = "quotes",
        bar_resolution: str = "5s",
    ) -> None:
        self.symbols = normalize_symbols(symbols)
        self.mode: Mode = parse_mode(mode)
        self.resolution: str | None = (
            parse_resolution(bar_resolution) if self.mode == "bars" else None
        )

    def attach(self, edge: Edge[Any]) -> None:
        """Give the provider the edge of its stream (before ``start()``)."""
        self.edge = edge

    def refuse(self, policy: str, n: int = 1) -> None:
        """Count ``n`` received inputs that leave by the named ``policy`` (e.g. "invalid")."""
        if self.edge is not None:
            self.edge.receive(n)
            self.edge.drop(policy, n)

    @abstractmethod
    async def start(self) -> None:
        """Connect / begin producing. Raises ``ProviderError`` with a clear message on failure."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop producing and release resources; idempotent."""

    @abstractmethod
    def stream(self) -> AsyncIterator[T]:
        """The records, as an async iterator (call after ``start``)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        shown = ",".join(self.symbols[:5]) + ("..." if len(self.symbols) > 5 else "")
        return f"{type(self).__name__}(symbols=[{shown}], mode={self.mode!r})"
