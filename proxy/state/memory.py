"""The in-process limit store: the default `state: memory`.

Owns: windowed counters and concurrency slots in plain dicts, for one process. Does not own
the semantics (base.py documents them; this follows them exactly) nor anything shared between
workers or instances (a Redis backend does that behind the same interface).

Each operation is synchronous underneath (`take_at`, `add_at`, `acquire_now`, `release_now`,
with the time passed in), so it is atomic on the event loop; the interface's coroutines wrap
them. Client limits call the synchronous twins directly when this is their store: a coroutine
per counter was most of what a limited request cost (bench/README.md). Memory is bounded by
the number of distinct keys (one per configured client and limit): a counter keeps only its
current window, replaced when the next window starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.state.base import Clock, LimitStore, Take, wall_clock


class MemoryLimitStore:
    """Counters in this process; `clock` is injectable for tests."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        #: (key, window_seconds) -> (window index, count in that window)
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}
        self._slots: dict[str, int] = {}

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- synchronous: `now` from `clock()`, taken once by a caller that does several ---------

    def take_at(self, key: str, amount: int, limit: int, window_seconds: int, now: float) -> float:
        """`take` at time `now`: 0.0 when admitted, else the seconds until the window ends."""
        index = int(now // window_seconds)
        slot = (key, window_seconds)
        held = self._windows.get(slot)
        count = held[1] if held is not None and held[0] == index else 0
        if count >= limit:
            return (index + 1) * window_seconds - now
        self._windows[slot] = (index, count + amount)
        return 0.0

    def add_at(self, key: str, amount: int, window_seconds: int, now: float) -> None:
        index = int(now // window_seconds)
        slot = (key, window_seconds)
        held = self._windows.get(slot)
        count = held[1] if held is not None and held[0] == index else 0
        self._windows[slot] = (index, count + amount)

    def used_at(self, key: str, window_seconds: int, now: float) -> int:
        held = self._windows.get((key, window_seconds))
        return held[1] if held is not None and held[0] == int(now // window_seconds) else 0

    def acquire_now(self, key: str, limit: int) -> bool:
        held = self._slots.get(key, 0)
        if held >= limit:
            return False
        self._slots[key] = held + 1
        return True

    def release_now(self, key: str) -> None:
        held = self._slots.get(key, 0)
        if held <= 1:
            self._slots.pop(key, None)
        else:
            self._slots[key] = held - 1

    # -- the LimitStore interface --------------------------------------------------------------

    async def take(self, key: str, amount: int, limit: int, window_seconds: int) -> Take:
        now = self._clock()
        left = self.take_at(key, amount, limit, window_seconds, now)
        if left:
            return Take(False, left)
        return Take(True, 0.0)

    async def add(self, key: str, amount: int, window_seconds: int) -> None:
        self.add_at(key, amount, window_seconds, self._clock())

    async def used(self, key: str, window_seconds: int) -> int:
        return self.used_at(key, window_seconds, self._clock())

    async def acquire(self, key: str, limit: int) -> bool:
        return self.acquire_now(key, limit)

    async def release(self, key: str) -> None:
        self.release_now(key)

    async def in_use(self, key: str) -> int:
        return self._slots.get(key, 0)

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:  # mypy proves the memory store implements the whole interface
    _implements: LimitStore = MemoryLimitStore()
