"""The in-process limit store: the default `state: memory`.

Owns: windowed counters and concurrency slots in plain dicts, for one process. Does not own
the semantics (base.py documents them; this follows them exactly) nor anything shared between
workers or instances (a Redis backend does that behind the same interface).

Every counter is a small mutable cell in a dict (`[window index, count]`, or `[in use]` for a
slot), updated in place, and every operation is synchronous underneath, so it is atomic on
the event loop; the interface's coroutines wrap it. The in-process fast path: client limits
hold on to their cells (`window_cell`, `slot_cell`) and take several counters in one call
(`take_cells`, `add_cells`), because a coroutine and a dict lookup per counter were most of
what a limited request cost (bench/README.md). Memory is bounded by the number of distinct
keys (one per configured client and limit): a cell keeps only its current window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.state.base import Clock, LimitStore, Take, wall_clock

#: one counter of a `take_cells` / `add_cells` call: (cell, limit, window seconds, scaled);
#: a scaled counter counts the call's `amount`, the others count 1
CellEntry = tuple[list[int], int, int, bool]


class MemoryLimitStore:
    """Counters in this process; `clock` is injectable for tests."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self.clock = clock
        #: (key, window_seconds) -> [window index, count in that window]
        self._windows: dict[tuple[str, int], list[int]] = {}
        #: key -> [slots in use]
        self._slots: dict[str, list[int]] = {}

    # -- cells: the in-process fast path -----------------------------------------------------

    def window_cell(self, key: str, window_seconds: int) -> list[int]:
        """The cell of `key`'s counter for windows of `window_seconds` (made if new)."""
        return self._windows.setdefault((key, window_seconds), [-1, 0])

    def slot_cell(self, key: str) -> list[int]:
        """The cell of `key`'s concurrency slots (made if new)."""
        return self._slots.setdefault(key, [0])

    @staticmethod
    def take_cells(entries: Sequence[CellEntry], amount: int, now: float) -> tuple[int, float]:
        """`take` on several counters at once, all or nothing: (-1, 0.0) when every one is
        below its limit (each then counts 1, or `amount` when scaled), else (the index of the
        first that is not, seconds until its window ends) and nothing is counted."""
        for i, (cell, limit, window, _scaled) in enumerate(entries):
            index = int(now // window)
            if cell[0] != index:  # a new window: the counter starts over
                cell[0], cell[1] = index, 0
            if cell[1] >= limit:
                return i, (index + 1) * window - now
        for cell, _limit, _window, scaled in entries:
            cell[1] += amount if scaled else 1
        return -1, 0.0

    @staticmethod
    def add_cells(entries: Sequence[CellEntry], amount: int, now: float) -> None:
        """`add` `amount` to each scaled counter's current window."""
        for cell, _limit, window, scaled in entries:
            if scaled:
                index = int(now // window)
                if cell[0] != index:
                    cell[0], cell[1] = index, 0
                cell[1] += amount

    @staticmethod
    def acquire_cell(cell: list[int], limit: int) -> bool:
        if cell[0] >= limit:
            return False
        cell[0] += 1
        return True

    @staticmethod
    def release_cell(cell: list[int]) -> None:
        if cell[0] > 0:
            cell[0] -= 1

    # -- the LimitStore interface ------------------------------------------------------------

    async def take(self, key: str, amount: int, limit: int, window_seconds: int) -> Take:
        cell = self.window_cell(key, window_seconds)
        refused, left = self.take_cells(((cell, limit, window_seconds, True),), amount,
                                        self.clock())  # fmt: skip
        return Take(False, left) if refused >= 0 else Take(True, 0.0)

    async def add(self, key: str, amount: int, window_seconds: int) -> None:
        cell = self.window_cell(key, window_seconds)
        self.add_cells(((cell, 0, window_seconds, True),), amount, self.clock())

    async def used(self, key: str, window_seconds: int) -> int:
        cell = self._windows.get((key, window_seconds))
        current = cell is not None and cell[0] == int(self.clock() // window_seconds)
        return cell[1] if cell is not None and current else 0

    async def acquire(self, key: str, limit: int) -> bool:
        return self.acquire_cell(self.slot_cell(key), limit)

    async def release(self, key: str) -> None:
        cell = self._slots.get(key)
        if cell is not None:
            self.release_cell(cell)

    async def in_use(self, key: str) -> int:
        cell = self._slots.get(key)
        return cell[0] if cell is not None else 0

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:  # mypy proves the memory store implements the whole interface
    _implements: LimitStore = MemoryLimitStore()
