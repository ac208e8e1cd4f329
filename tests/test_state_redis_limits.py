"""The Redis limit store passes the LimitStore contract against a real redis-server, and falls
back to local counters when Redis is gone."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from proxy.state import LimitStore
from proxy.state.redis_limits import RedisLimitStore
from proxy.testing.limit_store import LIMIT_STORE_CHECKS, ManualClock
from tests.redis_server import RedisServer, free_port, redis_server

__all__ = ["redis_server"]


@pytest.mark.parametrize("check", LIMIT_STORE_CHECKS, ids=lambda c: c.__name__)
async def test_redis_store_passes_the_contract(
    check: Callable[[LimitStore, ManualClock], Awaitable[None]], redis_server: RedisServer
):
    clock = ManualClock()
    client = Redis.from_url(redis_server.url)
    try:  # a fresh namespace: a fresh store on the same server
        store = RedisLimitStore(client, namespace=f"t{uuid.uuid4().hex[:8]}", clock=clock)
        await check(store, clock)
    finally:
        await client.aclose()


async def test_two_stores_on_one_redis_share_one_limit(redis_server: RedisServer):
    clock = ManualClock()
    clients = [Redis.from_url(redis_server.url) for _ in range(2)]
    try:
        a, b = (RedisLimitStore(c, namespace="shared", clock=clock) for c in clients)
        allowed = 0
        for i in range(20):
            allowed += (await (a if i % 2 else b).take("client:rpm", 1, 10, 60)).allowed
        assert allowed == 10  # not 20
        assert await a.used("client:rpm", 60) == await b.used("client:rpm", 60) == 10
    finally:
        for c in clients:
            await c.aclose()


async def test_without_redis_the_counters_are_local():
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        store = RedisLimitStore(client, clock=ManualClock())
        results = [await store.take("c:rpm", 1, 3, 60) for _ in range(4)]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert await store.acquire("c:conc", 1) and not await store.acquire("c:conc", 1)
    finally:
        await client.aclose()
