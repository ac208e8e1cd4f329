"""The in-process limit store: the default `state: memory`.

Owns: windowed counters and concurrency slots in plain dicts, for one process. Does not own
the semantics (base.py documents them; this follows them exactly) nor anything shared between
workers or instances (a Redis backend does that behind the same interface).

The coroutines never await, so each operation is atomic on the event loop. Memory is bounded
by the number of distinct keys (one per configured client and limit): a counter keeps only its
current window, replaced when the next window starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.state.base import Clock, LimitStore, Take, wall_clock, window_of


class MemoryLimitStore:
    """Counters in this process; `clock` is injectable for tests."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        #: (key, window_seconds) -> (window index, count in that window)
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}
        self._slots: dict[str, int] = {}

    def _current(self, key: str, window_seconds: int) -> tuple[int, int, float]:
        index, left = window_of(self._clock(), window_seconds)
        held = self._windows.get((key, window_seconds))
        count = held[1] if held is not None and held[0] == index else 0
        return index, count, left

    async def take(self, key: str, amount: int, limit: int, window_seconds: int) -> Take:
        index, count, left = self._current(key, window_seconds)
        if count >= limit:
            return Take(False, left)
        self._windows[(key, window_seconds)] = (index, count + amount)
        return Take(True, 0.0)

    async def add(self, key: str, amount: int, window_seconds: int) -> None:
        index, count, _left = self._current(key, window_seconds)
        self._windows[(key, window_seconds)] = (index, count + amount)

    async def used(self, key: str, window_seconds: int) -> int:
        return self._current(key, window_seconds)[1]

    async def acquire(self, key: str, limit: int) -> bool:
        held = self._slots.get(key, 0)
        if held >= limit:
            return False
        self._slots[key] = held + 1
        return True

    async def release(self, key: str) -> None:
        held = self._slots.get(key, 0)
        if held <= 1:
            self._slots.pop(key, None)
        else:
            self._slots[key] = held - 1

    async def in_use(self, key: str) -> int:
        return self._slots.get(key, 0)

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:  # mypy proves the memory store implements the whole interface
    _implements: LimitStore = MemoryLimitStore()
