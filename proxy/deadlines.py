"""Deadlines: time limits on many tasks at once, kept by one timer.

Owns: `Deadlines`, the deadlines pending on one event loop, and `Deadline`, one of them as a
context manager that behaves like `asyncio.timeout`: past its time the task is cancelled,
and leaving the block turns that cancellation into `TimeoutError` (a cancellation from
outside, such as a client leaving, stays a cancellation).
Does not own: what a timeout means for a request (failover.py turns it into a 502).

Why not `asyncio.timeout` or `loop.call_later` per request: arming and cancelling a timer
costs uvloop about 6,500 instructions, and keyrail sets one on every request for a limit
(`first-byte-seconds`, 600 s by default) that almost never fires. Here a deadline is a set
insert and a set discard. One timer stays armed for the earliest deadline it knows of; when
it fires, it ends what is due and re-arms for the earliest still pending. Requests that
finish leave nothing behind, so under steady load it fires about once per timeout length.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

#: uvloop schedules in whole milliseconds: a timer may fire this early for its deadline.
_EARLY = 0.001


class Deadlines:
    """The deadlines pending on one event loop (the loop of the first task given one)."""

    __slots__ = ("_armed_at", "_loop", "_pending", "_timer")

    def __init__(self) -> None:
        self._pending: set[Deadline] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        """How many deadlines are pending."""
        return len(self._pending)

    def limit(self, task: asyncio.Task[Any], seconds: float) -> Deadline:
        """`with deadlines.limit(task, seconds):` cancels `task` if the block outlives
        `seconds`, and raises TimeoutError when it leaves the block for that reason."""
        loop = task.get_loop()
        if loop is not self._loop:  # a first task, or a new loop (tests run one per test)
            self.close()
            self._loop = loop
        deadline = Deadline(self._pending, task, loop.time() + seconds)
        self._pending.add(deadline)
        if deadline.at < self._armed_at:
            self._arm(loop, deadline.at)
        return deadline

    def close(self) -> None:
        """Forget every deadline and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = None, math.inf
        self._pending.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        self._timer, self._armed_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time() + _EARLY
        due = [deadline for deadline in self._pending if deadline.at <= now]
        for deadline in due:
            self._pending.discard(deadline)
            deadline.expire()
        if self._pending:
            self._arm(self._loop, min(deadline.at for deadline in self._pending))


class Deadline:
    """One pending deadline (see `Deadlines.limit`)."""

    __slots__ = ("_cancelling", "_pending", "_task", "at", "expired")

    def __init__(self, pending: set[Deadline], task: asyncio.Task[Any], at: float) -> None:
        self._pending = pending  # its Deadlines' set, which it leaves on exit
        self._task = task
        self._cancelling = task.cancelling()
        self.at = at
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self._pending.discard(self)
        if (
            self.expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError  # ours, not a cancellation from outside (the client left)
