"""The contract every `LimitStore` backend passes (proxy/state/base.py documents it).

`LIMIT_STORE_CHECKS` are coroutines `check(store, clock)`; `clock` is a `ManualClock` the store
was built with. A backend's test runs each of them against a fresh store (keyrail's own tests
do it for memory; a Redis backend does the same with a Redis on a free port), so two backends
cannot drift apart in meaning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proxy.state.base import LimitStore

#: 2027-01-15 00:00:00 UTC: a round minute and a UTC midnight.
MIDNIGHT = 1_799_971_200.0


class ManualClock:
    """A clock tests move by hand: `clock()` is now, `advance(s)` moves it on."""

    def __init__(self, now: float = MIDNIGHT) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def requests_per_window(store: LimitStore, clock: ManualClock) -> None:
    """`limit` takes of 1 pass in one window, the next is refused until the window ends."""
    clock.now = MIDNIGHT + 10  # 10 s into a minute
    for _ in range(5):
        assert (await store.take("c:rpm", 1, 5, 60)).allowed
    refused = await store.take("c:rpm", 1, 5, 60)
    assert not refused.allowed
    assert abs(refused.retry_after - 50) < 1e-6
    assert await store.used("c:rpm", 60) == 5  # a refusal adds nothing
    clock.advance(50)  # the next minute
    assert (await store.take("c:rpm", 1, 5, 60)).allowed
    assert await store.used("c:rpm", 60) == 1


async def tokens_admit_below_limit_then_correct(store: LimitStore, clock: ManualClock) -> None:
    """A token take is admitted while the window is below the limit, whatever its amount;
    `add` corrects an estimate, downwards too."""
    clock.now = MIDNIGHT
    assert (await store.take("c:tpm", 800, 1000, 60)).allowed
    await store.add("c:tpm", -500, 60)  # the upstream reported less than estimated
    assert await store.used("c:tpm", 60) == 300
    assert (await store.take("c:tpm", 900, 1000, 60)).allowed  # 300 < 1000: admitted
    assert await store.used("c:tpm", 60) == 1200
    assert not (await store.take("c:tpm", 1, 1000, 60)).allowed


async def daily_window_resets_at_utc_midnight(store: LimitStore, clock: ManualClock) -> None:
    clock.now = MIDNIGHT + 86400 - 3600  # 23:00 UTC
    await store.add("c:day", 100, 86400)
    refused = await store.take("c:day", 1, 100, 86400)
    assert not refused.allowed and abs(refused.retry_after - 3600) < 1e-6
    clock.advance(3600)  # 00:00 UTC
    assert await store.used("c:day", 86400) == 0


async def windows_are_per_key_and_length(store: LimitStore, clock: ManualClock) -> None:
    clock.now = MIDNIGHT
    await store.add("a", 3, 60)
    assert await store.used("b", 60) == 0
    assert await store.used("a", 86400) == 0


async def concurrency_slots(store: LimitStore, clock: ManualClock) -> None:
    """`limit` slots at once; a release frees one; never below zero."""
    assert await store.acquire("c:conc", 2)
    assert await store.acquire("c:conc", 2)
    assert not await store.acquire("c:conc", 2)
    assert await store.in_use("c:conc") == 2
    await store.release("c:conc")
    assert await store.acquire("c:conc", 2)
    for _ in range(4):
        await store.release("c:conc")
    assert await store.in_use("c:conc") == 0


async def concurrent_takes_never_overshoot(store: LimitStore, clock: ManualClock) -> None:
    """Many takes at once: exactly `limit` are admitted."""
    clock.now = MIDNIGHT
    results = await asyncio.gather(*(store.take("c:burst", 1, 7, 60) for _ in range(20)))
    assert sum(r.allowed for r in results) == 7
    slots = await asyncio.gather(*(store.acquire("c:slots", 3) for _ in range(10)))
    assert sum(slots) == 3


LIMIT_STORE_CHECKS: tuple[Callable[[LimitStore, ManualClock], Awaitable[None]], ...] = (
    requests_per_window,
    tokens_admit_below_limit_then_correct,
    daily_window_resets_at_utc_midnight,
    windows_are_per_key_and_length,
    concurrency_slots,
    concurrent_takes_never_overshoot,
)
