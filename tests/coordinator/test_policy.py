"""RetryPolicy schedule, CircuitBreaker states, settings validation."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from mdp_core.circuit import CircuitBreaker
from mdp_core.coordinator import (
    CoordinatorRuntimeSettings,
    CoordinatorSettings,
    RetryPolicy,
    WriteCoordinator,
)
from tests.coordinator.helpers import FakeClock, MemorySink


def test_backoff_caps_grow_exponentially_up_to_max() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter="none")
    assert [policy.backoff(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.cap(10_000) == 1.0  # no overflow for absurd attempt numbers


def test_full_jitter_draws_uniformly_below_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, rng=random.Random(7))
    expected_rng = random.Random(7)
    for attempt in range(1, 8):
        delay = policy.backoff(attempt)
        assert delay == expected_rng.uniform(0.0, policy.cap(attempt))
        assert 0.0 <= delay <= policy.cap(attempt)


def test_equal_jitter_stays_in_the_upper_half() -> None:
    policy = RetryPolicy(jitter="equal", rng=random.Random(1))
    for attempt in range(1, 6):
        assert policy.cap(attempt) / 2 <= policy.backoff(attempt) <= policy.cap(attempt)


def test_budget_is_the_sum_of_caps_between_attempts() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=5.0)
    assert policy.budget == pytest.approx(0.05 + 0.1 + 0.2 + 0.4)
    assert RetryPolicy(max_attempts=1).budget == 0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_backoff": -1}, "initial_backoff"),
        ({"max_backoff": 0.01, "initial_backoff": 0.1}, "max_backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "some"}, "jitter"),
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"capacity": 0}, "capacity"),
        ({"workers": 0}, "workers"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"overflow": "conflate"}, "overflow"),
        ({"low_watermark": 0.9, "high_watermark": 0.8}, "watermarks"),
        ({"flush_interval": -1}, "flush_interval"),
        ({"circuit_reset_timeout": 0}, "circuit_reset_timeout"),
    ],
)
def test_coordinator_settings_reject_bad_values(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        CoordinatorSettings(**kwargs)  # type: ignore[arg-type]


def test_runtime_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_COORDINATOR_CAPACITY", "1234")
    monkeypatch.setenv("MDP_COORDINATOR_WORKERS", "3")
    monkeypatch.setenv("MDP_COORDINATOR_OVERFLOW", "drop_oldest")
    settings = CoordinatorRuntimeSettings()
    converted = CoordinatorSettings.from_env(settings)
    assert (converted.capacity, converted.workers, converted.overflow) == (
        1234,
        3,
        "drop_oldest",
    )
    assert converted.batch_size == 500
    coord = WriteCoordinator(MemorySink(), settings=settings)
    assert coord.settings == converted


def test_runtime_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_COORDINATOR_WORKERS", "0")
    with pytest.raises(ValidationError, match="coordinator_workers"):
        CoordinatorRuntimeSettings()
    monkeypatch.delenv("MDP_COORDINATOR_WORKERS")
    monkeypatch.setenv("MDP_COORDINATOR_OVERFLOW", "spill")
    with pytest.raises(ValidationError, match="coordinator_overflow"):
        CoordinatorRuntimeSettings()


def test_runtime_settings_keyword_form_from_the_design() -> None:
    settings = CoordinatorRuntimeSettings(
        coordinator_capacity=20_000,
        coordinator_workers=4,
        coordinator_batch_size=500,
        coordinator_flush_interval=0.25,
    )
    assert CoordinatorSettings.from_env(settings) == CoordinatorSettings()


async def test_circuit_opens_after_threshold_and_probes_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 1.0, clock=clock, sleep=clock.sleep)
    for _ in range(2):
        breaker.record_failure(TimeoutError())
    assert breaker.state == "closed"
    breaker.record_failure(TimeoutError())
    assert breaker.state == "open" and breaker.times_opened == 1
    # the first caller waits out the reset timeout and becomes the probe; the second waits
    first = asyncio.create_task(breaker.acquire())
    assert await asyncio.wait_for(first, 5) is True
    assert breaker.state == "half_open" and clock.now == pytest.approx(1.0)
    second = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)
    assert not second.done()
    breaker.record_failure(TimeoutError())  # probe failed: open again, new reset timeout
    assert breaker.state == "open"
    assert await asyncio.wait_for(second, 5) is True  # it became the next probe
    assert clock.now == pytest.approx(2.0)
    breaker.record_success()
    assert breaker.state == "closed" and breaker.outage_since is None
    assert await breaker.acquire() is True


async def test_circuit_gives_up_at_the_deadline() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock, sleep=clock.sleep)
    breaker.record_failure(OSError())
    assert await asyncio.wait_for(breaker.acquire(deadline=2.5), 5) is False
    assert clock.now == pytest.approx(2.5)


async def test_cancelled_probe_lets_another_caller_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock, sleep=clock.sleep)
    breaker.record_failure(OSError())
    assert await breaker.acquire() is True
    assert breaker.state == "half_open"
    breaker.release_probe()
    assert breaker.state == "open"
    assert await asyncio.wait_for(breaker.acquire(), 5) is True


def test_a_custom_classifier_is_used_and_its_nonsense_is_not_transient() -> None:
    policy = RetryPolicy(classify=lambda exc: "transient" if isinstance(exc, KeyError) else "?")  # type: ignore[arg-type,return-value]
    assert policy.classification(KeyError()) == "transient"
    assert policy.classification(TimeoutError()) == "permanent"
    assert RetryPolicy().classification(TimeoutError()) == "transient"
