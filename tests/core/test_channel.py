"""Channel: overflow policies with exact counts, close semantics, batching, waking."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdp_core.channel import Channel, ChannelClosed


@dataclass(frozen=True)
class Tick:
    symbol: str
    n: int


def test_block_policy_rejects_offers_when_full_and_counts_them() -> None:
    ch: Channel[int] = Channel(3)
    assert [ch.offer(i) for i in range(5)] == [True, True, True, False, False]
    s = ch.stats()
    assert (s.depth, s.accepted, s.rejected, s.dropped, s.high_water) == (3, 3, 2, 0, 3)


def test_drop_oldest_keeps_the_newest_items() -> None:
    ch: Channel[int] = Channel(3, overflow="drop_oldest")
    for i in range(10):
        assert ch.offer(i)
    assert [ch.get_nowait() for _ in range(3)] == [7, 8, 9]
    assert (ch.stats().dropped, ch.stats().delivered) == (7, 3)


def test_conflate_keeps_newest_item_per_symbol_in_place() -> None:
    ch: Channel[Tick] = Channel(2, overflow="conflate")
    for t in [Tick("A", 1), Tick("B", 1), Tick("A", 2), Tick("A", 3), Tick("C", 1)]:
        ch.offer(t)
    # A2/A3 replaced A1 in place; C arrived when full and pushed out the oldest (A).
    assert [ch.get_nowait(), ch.get_nowait()] == [Tick("B", 1), Tick("C", 1)]
    s = ch.stats()
    assert (s.conflated, s.dropped, s.accepted, s.delivered) == (2, 1, 5, 2)


def test_conflate_only_when_full_a_consumer_that_keeps_up_sees_everything() -> None:
    ch: Channel[Tick] = Channel(10, overflow="conflate")
    ticks = [Tick("A", n) for n in range(6)] + [Tick("B", 0)]
    for t in ticks:
        ch.offer(t)
    assert ch.drain_nowait() == ticks  # below its capacity the channel is plain FIFO
    assert (ch.stats().conflated, ch.stats().dropped) == (0, 0)


def test_conflate_with_custom_key() -> None:
    ch: Channel[Tick] = Channel(2, overflow="conflate", key_fn=lambda t: t.n % 2)
    for n in range(6):
        ch.offer(Tick("A", n))
    assert [ch.get_nowait().n, ch.get_nowait().n] == [4, 5]


def test_push_never_loses_under_block_and_asks_to_pause() -> None:
    ch: Channel[int] = Channel(3)
    assert [ch.push(i) for i in range(5)] == [True, True, False, False, False]  # full at 3
    s = ch.stats()
    assert (s.depth, s.accepted, s.rejected, s.high_water) == (5, 5, 0, 5)
    assert ch.drain_nowait() == [0, 1, 2, 3, 4]


async def test_wait_for_room_returns_once_the_consumer_took_items() -> None:
    ch: Channel[int] = Channel(2)
    for i in range(4):
        ch.push(i)
    waiter = asyncio.create_task(ch.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    ch.get_nowait()
    ch.get_nowait()
    await asyncio.sleep(0)
    assert not waiter.done()  # 2 of capacity 2: still full
    ch.get_nowait()
    await asyncio.wait_for(waiter, 5)


@given(
    capacity=st.integers(1, 8),
    overflow=st.sampled_from(["block", "drop_oldest", "conflate"]),
    ops=st.lists(st.one_of(st.sampled_from("ABCD"), st.none()), max_size=60),
)
def test_accounting_always_balances(capacity: int, overflow: str, ops: list[str | None]) -> None:
    """accepted == delivered + depth + dropped + conflated; offered == accepted + rejected."""
    ch: Channel[Tick] = Channel(capacity, overflow=overflow)  # type: ignore[arg-type]
    offered = 0
    for i, op in enumerate(ops):
        if op is None:
            try:
                ch.get_nowait()
            except asyncio.QueueEmpty:
                pass
        else:
            offered += 1
            ch.offer(Tick(op, i))
        s = ch.stats()
        assert s.accepted == s.delivered + s.depth + s.dropped + s.conflated
        assert offered == s.accepted + s.rejected
        assert s.depth <= capacity and s.high_water <= capacity
        if overflow == "conflate":  # at most one pending item per key, once full
            assert s.conflated == 0 or len(ch) <= capacity


async def test_put_waits_for_space_under_block() -> None:
    ch: Channel[int] = Channel(2)
    await ch.put(1)
    await ch.put(2)
    third = asyncio.create_task(ch.put(3))
    await asyncio.sleep(0)
    assert not third.done() and len(ch) == 2  # held back: backpressure
    assert await ch.get() == 1
    await asyncio.wait_for(third, 1)
    assert [ch.get_nowait(), ch.get_nowait()] == [2, 3]


async def test_iter_ends_after_close_once_drained() -> None:
    ch: Channel[int] = Channel(10)
    for i in range(3):
        ch.offer(i)
    ch.close()
    assert [x async for x in ch.iter()] == [0, 1, 2]
    with pytest.raises(ChannelClosed):
        await ch.put(4)
    with pytest.raises(ChannelClosed):
        ch.offer(4)


async def test_consumer_sees_the_provider_error_after_the_buffered_items() -> None:
    ch: Channel[int] = Channel(10)
    ch.offer(1)
    ch.offer(2)
    ch.close(RuntimeError("gateway said no"))
    got: list[int] = []
    with pytest.raises(RuntimeError, match="gateway said no"):
        async for x in ch:
            got.append(x)
    assert got == [1, 2]


async def test_close_wakes_a_waiting_consumer_and_a_waiting_producer() -> None:
    ch: Channel[int] = Channel(1)
    consumer = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    ch.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(consumer, 1)

    full: Channel[int] = Channel(1)
    full.offer(1)
    producer = asyncio.create_task(full.put(2))
    await asyncio.sleep(0)
    full.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(producer, 1)


async def test_get_batch_takes_what_is_buffered_up_to_max() -> None:
    ch: Channel[int] = Channel(100)
    for i in range(7):
        ch.offer(i)
    assert await ch.get_batch(5) == [0, 1, 2, 3, 4]
    assert await ch.get_batch(5) == [5, 6]
    assert await ch.get_batch(5, timeout=0.01) == []  # nothing came: empty, not an error
    ch.offer(7)
    ch.close()
    assert [b async for b in ch.iter_batches(10)] == [[7]]


async def test_batches_wait_for_the_first_item() -> None:
    ch: Channel[int] = Channel(10)
    batch = asyncio.create_task(ch.get_batch(10))
    await asyncio.sleep(0)
    assert not batch.done()
    ch.offer(42)
    assert await asyncio.wait_for(batch, 1) == [42]


async def test_cancelled_getter_does_not_swallow_a_wake_up() -> None:
    ch: Channel[int] = Channel(10)
    first = asyncio.create_task(ch.get())
    second = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    ch.offer(1)  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs: `second` must get the item
    assert await asyncio.wait_for(second, 1) == 1


async def test_offer_threadsafe_from_another_thread() -> None:
    ch: Channel[int] = Channel(100)
    ch.bind_loop()
    t = threading.Thread(target=lambda: [ch.offer_threadsafe(i) for i in range(50)])
    t.start()
    t.join()
    got = [await asyncio.wait_for(ch.get(), 1) for _ in range(50)]
    assert got == list(range(50))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="capacity 0 is invalid"):
        Channel(0)
    with pytest.raises(ValueError, match="overflow 'newest' is invalid: expected one of block"):
        Channel(1, overflow="newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key_fn is only used with overflow='conflate'"):
        Channel(1, key_fn=lambda x: x)
