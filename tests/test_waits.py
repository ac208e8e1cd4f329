"""Requests waiting for credentials wake in order, as many as are ready, not all at once."""

from __future__ import annotations

import asyncio

from proxy.waits import RecoveryWaits


class Pool:
    def __init__(self, ready: int = 1) -> None:
        self.ready_now = ready
        self.due = asyncio.Event()
        self.leaving: asyncio.Task[bool] | None = None

    def ready(self) -> int:
        self.due.set()
        if self.leaving is not None:
            self.leaving.cancel()  # its client leaves just as its turn comes
        return self.ready_now

    def recovery_in(self) -> float | None:
        return 3600.0  # nothing else recovers during the test


async def test_one_waiter_per_ready_credential_in_arrival_order() -> None:
    waits = RecoveryWaits()
    pool = Pool(ready=1)
    woken: list[int] = []

    async def waiter(i: int) -> None:
        assert await waits.wait("m", pool, 0.01, 10)
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.wait_for(pool.due.wait(), 5)
    await asyncio.sleep(0)  # let the woken one run
    assert woken == [0] and waits.waiting("m") == 4  # one credential: one waiter
    waits.hand_on("m")  # it succeeded: the next one's turn
    await asyncio.sleep(0)
    assert woken == [0, 1]
    for _ in range(3):
        waits.hand_on("m")
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2, 3, 4] and waits.waiting("m") == 0


async def test_the_budget_ends_a_wait_and_a_woken_waiter_that_leaves_hands_on() -> None:
    waits = RecoveryWaits()
    pool = Pool(ready=0)
    assert not await waits.wait("m", pool, 0.01, 0.05)  # nothing became ready in time
    assert waits.waiting("m") == 0
    pool.ready_now = 1
    pool.due.clear()
    first = asyncio.create_task(waits.wait("m", pool, 0.01, 10))
    second = asyncio.create_task(waits.wait("m", pool, 0.01, 10))
    pool.leaving = first
    assert await asyncio.wait_for(second, 5)  # the turn passed on
    assert first.cancelled()
