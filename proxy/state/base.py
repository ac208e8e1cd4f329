"""The limit store: the few atomic counter operations client limits are built from.

Owns: the interface (`LimitStore`) and its semantics, which every backend (memory, Redis)
implements exactly. Does not own: which counters exist or what their limits are
(proxy/clients/limits.py decides), nor credential state (the scheduler keeps that locally).

Every operation is one atomic step on one key, so that each maps onto one Redis round trip
(a short Lua script, or MULTI/EXEC) and two instances sharing a Redis never both get the last
unit of a limit: `rpm: 10` gives 10 successes across all instances together.

Windows are FIXED and aligned to the Unix epoch: the window of `now` for `window_seconds` W
is `floor(now / W)`, and it ends at `(floor(now / W) + 1) * W`. So a 60 s window is a
calendar minute and an 86400 s window is a UTC day (it resets at 00:00 UTC; Unix time has no
leap seconds). Every instance computes the same window from its own clock, and a backend can
name a window's counter `f"{key}:{W}:{floor(now / W)}"` and let it expire after the window.

    take(key, amount, limit, window_seconds) -> Take(allowed, retry_after)
        Admit when the count of `key` in the current window is BELOW `limit`, and then add
        `amount` to it. Refused: nothing is added, and `retry_after` is the seconds until the
        window ends. For request counts `amount` is 1 (the (limit+1)th request is refused); for
        tokens it is an estimate made before the call: a client may start a request while its
        budget is not yet spent, and what the request really cost is settled with `add`.
        Redis:  local v = tonumber(redis.call('GET', k) or '0')
                if v >= limit then return {0, pttl} end
                redis.call('INCRBY', k, amount); redis.call('EXPIRE', k, W + 1)
    add(key, amount, window_seconds) -> None
        Add `amount` (may be negative: a correction of an estimate) to the current window's
        count, without any check. Redis: INCRBY + EXPIRE.
    used(key, window_seconds) -> int
        The current window's count (for "remaining" in metrics). Redis: GET.
    acquire(key, limit) -> bool
        Take one of `limit` concurrent slots of `key`; False (nothing taken) when all are
        in use. Not windowed: a slot is held until `release`.
        Redis:  if redis.call('INCR', k) > limit then redis.call('DECR', k) return 0 end
    release(key) -> None
        Give one slot of `key` back (never below zero). Redis: DECR, floored at 0.
    in_use(key) -> int
        Slots of `key` held right now.

Keys are opaque strings chosen by the caller (e.g. `client:<name>:rpm`); they never contain
a secret. A backend must keep counters across a config reload: the store outlives the config.
Time comes from an injectable clock (`Clock`: seconds since the epoch, like `time.time`), so
tests move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

#: Seconds since the Unix epoch (wall time: windows are calendar minutes and UTC days).
Clock = Callable[[], float]
wall_clock: Clock = time.time


class Take(NamedTuple):
    """What `take` decided: admitted, or refused with the seconds until the window ends."""

    allowed: bool
    retry_after: float


class LimitStore(Protocol):
    """Atomic windowed counters and concurrency slots; see the module docstring."""

    async def take(self, key: str, amount: int, limit: int, window_seconds: int) -> Take: ...

    async def add(self, key: str, amount: int, window_seconds: int) -> None: ...

    async def used(self, key: str, window_seconds: int) -> int: ...

    async def acquire(self, key: str, limit: int) -> bool: ...

    async def release(self, key: str) -> None: ...

    async def in_use(self, key: str) -> int: ...

    async def aclose(self) -> None: ...


def window_of(now: float, window_seconds: int) -> tuple[int, float]:
    """The index of the window `now` falls in, and the seconds until it ends."""
    index = int(now // window_seconds)
    return index, (index + 1) * window_seconds - now
