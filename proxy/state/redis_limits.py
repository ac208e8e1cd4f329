"""The Redis limit store: client-limit counters shared by every worker and instance.

Implements `LimitStore` (base.py documents the semantics; this follows them exactly): each
operation is one Lua script or one command, so it is atomic in Redis and two instances never
both get the last unit of a limit (`rpm: 10` is 10 across all of them). A window's counter is
`NAMESPACE:limit:KEY:W:INDEX` and expires after its window; concurrency slots are
`NAMESPACE:slots:KEY`, kept for an hour after their last use, so slots a crashed process held
come back by themselves.

When Redis is unreachable or slow (every command is bounded by the client's timeout), an
operation is answered by a local `MemoryLimitStore` instead: limits then hold per process
until Redis answers again (the connection's health is `RedisState`'s, shared.py). A request
never fails because of Redis. Does not own: the connection (shared.py), which counters exist
(proxy/clients/limits.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.state.base import Clock, LimitStore, Take, wall_clock, window_of
from proxy.state.memory import MemoryLimitStore

log = logging.getLogger("keyrail.state")
SLOT_TTL = 3600
#: after a failed command, Redis is left alone this long (requests do not each wait a timeout)
PAUSE_AFTER_FAILURE = 1.0
T = TypeVar("T")

_TAKE = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v >= tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
_ADD = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
_ACQUIRE = """
local v = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if v > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
return 1
"""
_RELEASE = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v <= 1 then redis.call('DEL', KEYS[1]) return 0 end
return redis.call('DECR', KEYS[1])
"""


class RedisLimitStore:
    """`LimitStore` over a redis-py asyncio client that `RedisState` owns (and closes)."""

    def __init__(
        self,
        client: Any,
        *,
        namespace: str = "keyrail",
        healthy: Callable[[], bool] = lambda: True,
        clock: Clock = wall_clock,
    ) -> None:
        self._client = client
        self._ns = namespace
        self._healthy = healthy
        self._clock = clock
        self._local = MemoryLimitStore(clock)
        self._paused_until = 0.0
        self._take = client.register_script(_TAKE)
        self._add = client.register_script(_ADD)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def _window_key(self, key: str, window_seconds: int) -> tuple[str, float]:
        index, left = window_of(self._clock(), window_seconds)
        return f"{self._ns}:limit:{key}:{window_seconds}:{index}", left

    async def _shared(self, op: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """`op` in Redis; `local` when Redis is away, slow or just failed."""
        from redis.exceptions import RedisError

        if not self._healthy() or time.monotonic() < self._paused_until:
            return await local()
        try:
            return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.debug("state: a limit counter fell back to local state (%s)", exc)
            return await local()

    async def take(self, key: str, amount: int, limit: int, window_seconds: int) -> Take:
        name, left = self._window_key(key, window_seconds)

        async def shared() -> Take:
            allowed = await self._take(keys=[name], args=[amount, limit, window_seconds + 1])
            return Take(True, 0.0) if int(allowed) else Take(False, left)

        return await self._shared(
            shared, lambda: self._local.take(key, amount, limit, window_seconds)
        )

    async def add(self, key: str, amount: int, window_seconds: int) -> None:
        name, _left = self._window_key(key, window_seconds)

        async def shared() -> None:
            await self._add(keys=[name], args=[amount, window_seconds + 1])

        await self._shared(shared, lambda: self._local.add(key, amount, window_seconds))

    async def used(self, key: str, window_seconds: int) -> int:
        name, _left = self._window_key(key, window_seconds)

        async def shared() -> int:
            return int(await self._client.get(name) or 0)

        return await self._shared(shared, lambda: self._local.used(key, window_seconds))

    async def acquire(self, key: str, limit: int) -> bool:
        name = f"{self._ns}:slots:{key}"

        async def shared() -> bool:
            return bool(int(await self._acquire(keys=[name], args=[limit, SLOT_TTL])))

        return await self._shared(shared, lambda: self._local.acquire(key, limit))

    async def release(self, key: str) -> None:
        name = f"{self._ns}:slots:{key}"

        async def shared() -> None:
            await self._release(keys=[name])

        await self._shared(shared, lambda: self._local.release(key))

    async def in_use(self, key: str) -> int:
        name = f"{self._ns}:slots:{key}"

        async def shared() -> int:
            return int(await self._client.get(name) or 0)

        return await self._shared(shared, lambda: self._local.in_use(key))

    async def aclose(self) -> None:
        return None  # the client is RedisState's: it closes it


if TYPE_CHECKING:  # mypy proves the Redis store implements the whole interface
    _implements: LimitStore = RedisLimitStore(None)
