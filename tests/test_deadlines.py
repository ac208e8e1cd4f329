"""Deadlines on one timer: each behaves like `asyncio.timeout`, in any order of arrival."""

from __future__ import annotations

import asyncio

import pytest

from proxy.deadlines import Deadlines

BOUND = 5.0  # seconds any of these tests may wait before it counts as hung


async def _limited(
    deadlines: Deadlines,
    seconds: float,
    release: asyncio.Event,
    inside: asyncio.Event | None = None,
) -> str:
    """Wait for `release` under a deadline of `seconds`; say how the block ended."""
    task = asyncio.current_task()
    assert task is not None
    try:
        with deadlines.limit(task, seconds):
            if inside is not None:
                inside.set()
            await release.wait()
    except TimeoutError:
        return "timed out"
    return "released"


async def test_a_passed_deadline_is_a_timeout_and_a_met_one_is_not() -> None:
    deadlines, never, now = Deadlines(), asyncio.Event(), asyncio.Event()
    now.set()
    async with asyncio.timeout(BOUND):
        assert await _limited(deadlines, 0.01, never) == "timed out"
        assert await _limited(deadlines, 60, now) == "released"
    assert len(deadlines) == 0  # nothing left behind either way


async def test_deadlines_fire_in_order_while_later_ones_stay_pending() -> None:
    deadlines, never, later = Deadlines(), asyncio.Event(), asyncio.Event()
    long = asyncio.create_task(_limited(deadlines, 60, later))
    first = asyncio.create_task(_limited(deadlines, 0.02, never))
    second = asyncio.create_task(_limited(deadlines, 0.04, never))
    async with asyncio.timeout(BOUND):
        assert await first == "timed out"
        assert not second.done()  # each fires at its own time, not with the first
        assert await second == "timed out"
        assert not long.done()
        later.set()
        assert await long == "released"


async def test_a_shorter_deadline_after_a_long_one_fires_on_time() -> None:
    # The timer was armed for the 600 s deadline: the 0.01 s one must re-arm it, or this
    # test hangs until its bound.
    deadlines, never = Deadlines(), asyncio.Event()
    long = asyncio.create_task(_limited(deadlines, 600, never))
    async with asyncio.timeout(BOUND):
        assert await _limited(deadlines, 0.01, never) == "timed out"
    long.cancel()


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines, never, inside = Deadlines(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_limited(deadlines, 60, never, inside))
    async with asyncio.timeout(BOUND):
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(deadlines) == 0
