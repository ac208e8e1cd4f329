"""Requests waiting for a pool's credentials to recover: woken in order, a few at a time.

Owns: a FIFO of waiting requests per pool (the model name a request routes on); when a
credential's cooldown ends, waking as many of the oldest waiters as the pool has ready
credentials then, and no more; handing the turn on to the next waiter when a woken one
succeeded (the credential works: the next may use it too) or left. Waking every waiter at the
moment a credential recovers would send them all at the one credential, re-cool it, and spend
their passes for nothing (a thundering herd).
Does not own: when credentials recover or how many are ready (the scheduler, through the
`PoolState` a waiter passes), what a woken request does (failover.py), or how long a request
may wait in all (failover.py: `max-retry-interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol


class PoolState(Protocol):
    """What the waits need to know of a pool, from the scheduler."""

    def ready(self) -> int:
        """How many of the pool's credentials are ready now."""
        ...

    def recovery_in(self) -> float | None:
        """Seconds until the soonest cooling credential recovers; None: none is cooling."""
        ...


class RecoveryWaits:
    """The waiting requests of every pool. One per app; single event loop."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}  # pool -> (at, timer)

    def waiting(self, pool: str) -> int:
        queue = self._queues.get(pool)
        return len(queue) if queue else 0

    async def wait(
        self, pool: str, state: PoolState, seconds: float, limit: float, *, first: bool = False
    ) -> bool:
        """Wait for a turn in `pool`: the soonest recovery is `seconds` away. At most `limit`
        seconds in all. `first`: a waiter that was woken before goes back to the front (it is
        the oldest). True when woken in turn, False when `limit` ran out first."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        queue = self._queues.setdefault(pool, deque())
        if first:
            queue.appendleft(turn)
        else:
            queue.append(turn)
        self._arm(pool, state, loop.time() + max(seconds, 0.0))
        try:
            async with asyncio.timeout(limit):
                await turn
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.hand_on(pool)  # woken, then left: the turn is the next waiter's
            raise
        finally:
            if not turn.done():
                turn.cancel()
            if turn.cancelled():  # not woken (a wait cancels the future it awaited)
                with contextlib.suppress(ValueError):
                    queue.remove(turn)
            if not queue and self._queues.get(pool) is queue:
                del self._queues[pool]
                self._disarm(pool)

    def hand_on(self, pool: str) -> None:
        """A woken waiter succeeded (or left): wake the next one."""
        self._wake(pool, 1)

    def _arm(self, pool: str, state: PoolState, at: float) -> None:
        """One timer per pool, for the soonest recovery any of its waiters knows of."""
        armed = self._timers.get(pool)
        if armed is not None:
            if armed[0] <= at:
                return
            armed[1].cancel()
        loop = asyncio.get_running_loop()
        self._timers[pool] = (at, loop.call_at(at, self._due, pool, state))

    def _disarm(self, pool: str) -> None:
        armed = self._timers.pop(pool, None)
        if armed is not None:
            armed[1].cancel()

    def _due(self, pool: str, state: PoolState) -> None:
        self._timers.pop(pool, None)
        self._wake(pool, state.ready())
        if self._queues.get(pool):
            # Still waiting: the next recovery (a credential may have been cooled again).
            later = state.recovery_in()
            loop = asyncio.get_running_loop()
            # None: something is ready but was given out; check again shortly.
            self._arm(pool, state, loop.time() + (later if later is not None else 0.05))

    def _wake(self, pool: str, n: int) -> None:
        queue = self._queues.get(pool)
        while queue and n > 0:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)
                n -= 1
