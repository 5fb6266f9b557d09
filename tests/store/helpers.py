"""Record builders for the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mdp_core.models import Bar, Quote

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def make_quotes(
    n: int,
    *,
    start: datetime = T0,
    step: timedelta = timedelta(seconds=1),
    symbols: tuple[str, ...] = ("AAPL", "MSFT"),
) -> list[Quote]:
    """``n`` valid quotes, keys unique, ``step`` apart per symbol."""
    out = []
    for i in range(n):
        bid = 100.0 + (i % 50) * 0.01
        out.append(
            Quote(
                symbols[i % len(symbols)],
                start + step * (i // len(symbols)),
                bid=bid,
                ask=bid + 0.02,
                bid_size=100.0,
                ask_size=200.0,
                last=bid + 0.01,
                last_size=10.0,
                source="test",
            )
        )
    return out


def make_bars(
    n: int,
    *,
    start: datetime = T0,
    resolution: str = "1m",
    symbols: tuple[str, ...] = ("AAPL", "MSFT"),
) -> list[Bar]:
    """``n`` valid bars, keys unique, one window apart per symbol."""
    step = timedelta(seconds={"5s": 5, "1m": 60, "1h": 3600, "1d": 86400}[resolution])
    out = []
    for i in range(n):
        o = 100.0 + (i % 7)
        out.append(
            Bar(
                symbols[i % len(symbols)],
                start + step * (i // len(symbols)),
                open=o,
                high=o + 1.0,
                low=o - 1.0,
                close=o + 0.5,
                volume=1000.0 + i,
                resolution=resolution,
                vwap=o + 0.25,
                trade_count=10 + i,
                source="test",
            )
        )
    return out
