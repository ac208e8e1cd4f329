"""The memory limit store passes the LimitStore contract (proxy/testing/limit_store.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from proxy.state import LimitStore, MemoryLimitStore
from proxy.testing.limit_store import LIMIT_STORE_CHECKS, MIDNIGHT, ManualClock


@pytest.mark.parametrize("check", LIMIT_STORE_CHECKS, ids=lambda c: c.__name__)
async def test_memory_store_contract(
    check: Callable[[LimitStore, ManualClock], Awaitable[None]],
) -> None:
    clock = ManualClock()
    store = MemoryLimitStore(clock)
    await check(store, clock)
    await store.aclose()


async def test_memory_store_keeps_one_window_per_counter() -> None:
    clock = ManualClock()
    store = MemoryLimitStore(clock)
    for minute in range(100):
        clock.now = MIDNIGHT + 60 * minute
        await store.take("k", 1, 5, 60)
    assert len(store._windows) == 1  # bounded: old windows are replaced, not kept
