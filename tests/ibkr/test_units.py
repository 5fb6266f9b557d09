"""Pure parts of the IBKR provider: the watchdog's rules, the backoff settings, the lazy import
of ib_async, and the endpoint choice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from mdp_core.gateway import ibkr_endpoint
from mdp_core.providers.base import ProviderError
from mdp_core.providers.ibkr import compat
from mdp_core.providers.ibkr.watchdog import StalenessWatchdog, load_market_hours
from mdp_core.settings import IBKRSettings, describe_settings_error, ibkr_configured


class Market:
    def __init__(self) -> None:
        self.open = True

    def __call__(self, now: datetime) -> bool:
        return self.open


def test_watchdog_stale_recovered_and_resubscribe_cadence() -> None:
    market = Market()
    dog = StalenessWatchdog(stale_after=10, resubscribe_after=30, market_open=market)
    # silence counts from the first check in market hours (here 0.0)
    assert dog.check({"AAPL": 0.0, "MSFT": 0.0}, 0.0).newly_stale == []
    assert dog.check({"AAPL": 0.0, "MSFT": 0.0}, 5.0).newly_stale == []
    verdict = dog.check({"AAPL": 0.0, "MSFT": 8.0}, 12.0)
    assert verdict.newly_stale == ["AAPL"] and dog.stale == {"AAPL"} and dog.stale_events == 1
    assert dog.check({"AAPL": 0.0, "MSFT": 8.0}, 15.0).newly_stale == []  # counted once
    assert dog.check({"AAPL": 0.0, "MSFT": 29.0}, 30.0).resubscribe == ["AAPL"]
    assert dog.check({"AAPL": 0.0, "MSFT": 44.0}, 45.0).resubscribe == []  # not again so soon
    assert dog.check({"AAPL": 0.0, "MSFT": 59.0}, 60.0).resubscribe == ["AAPL"]
    verdict = dog.check({"AAPL": 61.0, "MSFT": 60.0}, 62.0)
    assert verdict.recovered == ["AAPL"] and dog.stale == set()


def test_watchdog_ignores_silence_while_the_market_is_closed() -> None:
    market = Market()
    market.open = False
    dog = StalenessWatchdog(stale_after=10, resubscribe_after=30, market_open=market)
    assert dog.check({"AAPL": 0.0}, 1000.0).newly_stale == []  # overnight: not silence
    market.open = True
    assert dog.check({"AAPL": 0.0}, 1001.0).newly_stale == []  # counted from the opening
    assert dog.check({"AAPL": 0.0}, 1012.0).newly_stale == ["AAPL"]
    market.open = False
    assert dog.check({"AAPL": 0.0}, 1013.0).recovered == ["AAPL"] and not dog.stale


def test_watchdog_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="resubscribe_after 5"):
        StalenessWatchdog(stale_after=10, resubscribe_after=5, market_open=lambda t: True)


async def test_market_hours_of_the_nyse_calendar() -> None:
    market_open = await load_market_hours("XNYS")
    assert market_open(datetime(2024, 3, 5, 15, 0, tzinfo=UTC))  # a Tuesday, 10:00 New York
    assert not market_open(datetime(2024, 3, 5, 22, 0, tzinfo=UTC))  # 17:00: closed
    assert not market_open(datetime(2024, 3, 9, 15, 0, tzinfo=UTC))  # a Saturday
    with pytest.raises(ValueError, match="unknown market calendar 'NOPE'"):
        await load_market_hours("NOPE")


def test_a_reconnect_backoff_cap_below_its_first_delay_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MDP_IBKR_RECONNECT_INITIAL_BACKOFF", "0.5")
    monkeypatch.setenv("MDP_IBKR_RECONNECT_MAX_BACKOFF", "0.1")
    with pytest.raises(ValidationError) as info:
        IBKRSettings()
    message = describe_settings_error(info.value)
    assert message is not None
    assert "reconnect_max_backoff 0.1 must be at least reconnect_initial_backoff 0.5" in message


def test_missing_ib_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_cached", None)
    monkeypatch.setitem(sys.modules, "ib_async", None)
    monkeypatch.setitem(sys.modules, "ib_insync", None)
    from mdp_core.providers.ibkr import IBKRStreamSource

    with pytest.raises(ProviderError, match=r"pip install 'mdp\[ibkr\]'"):
        IBKRStreamSource(["AAPL"])


def test_mdp_core_imports_without_ib_async() -> None:
    code = (
        "import sys; sys.modules['ib_async'] = None; sys.modules['ib_insync'] = None\n"
        "import mdp_core, mdp_core.providers.ibkr\n"
        "from mdp_core import ProviderRegistry\n"
        "try:\n"
        "    ProviderRegistry().build('ibkr', symbols=['AAPL'])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ProviderError") and "pip install 'mdp[ibkr]'" in out.stdout


async def test_endpoint_starts_a_gateway_only_when_none_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not ibkr_configured()
    async with asyncio.timeout(30), ibkr_endpoint(["AAPL"], client_id=9) as ep:
        assert ep.simulated and ep.gateway is not None and ep.gateway.listening
        assert (ep.settings.port, ep.settings.client_id) == (ep.gateway.port, 9)
        assert "simulated IB Gateway" in ep.describe()
    assert not ep.gateway.listening
    monkeypatch.setenv("MDP_IBKR_PORT", "7497")
    assert ibkr_configured()
    async with ibkr_endpoint(["AAPL"]) as ep:
        assert not ep.simulated and ep.settings.port == 7497
        assert "7497" in ep.describe()
