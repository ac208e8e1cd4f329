"""Two keyrail instances sharing a real redis-server (`state: redis://…`).

Each instance is a whole app on its own port with its own scheduler and metrics; they meet
only in Redis. The fake upstream answers 429 (Retry-After: 30) for one key and 200 for the
other, so which key an instance uses is visible in what the upstream saw.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.keys import CONVERSATIONS, LIMITS, SCHEDULER, STATE
from proxy.state.redis_limits import RedisLimitStore
from proxy.state.shared import RedisState
from proxy.testing.limit_store import MIDNIGHT
from tests.conftest import Keyrail
from tests.fakes import Script, Seen
from tests.ops_helpers import serve_file, wait_for
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]
CONFIG = """
state: {state}
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries:
      - api-key: sk-hot-key
      - api-key: sk-cool-key
    models:
      - {{name: up-model, alias: m}}
      - {{name: up-other, alias: other}}
"""
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _by_key(seen: Seen) -> Script:
    """429 for the hot key on model `m`; everything else is served."""
    hot = seen.headers.get("Authorization") == "Bearer sk-hot-key"
    if hot and seen.body.get("model") == "up-model":
        return Script(status=429, headers={"Retry-After": "30"})
    return Script()


async def _two(start_upstream, servers, tmp_path: Path, state: str) -> tuple[list[Keyrail], object]:
    fake, url = await start_upstream()
    fake.script = _by_key
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(state=state, url=url))

    def quick(app: web.Application) -> None:
        shared = app[STATE]
        if isinstance(shared, RedisState):
            shared.push_seconds = 0.05  # metrics reach the others fast (no waiting on a timer)

    instances = [await serve_file(path, servers, before_start=quick) for _ in range(2)]
    return instances, fake


async def _chat(session: aiohttp.ClientSession, k: Keyrail, model: str = "m") -> int:
    async with session.post(f"{k.v1}/chat/completions", json={**BODY, "model": model}) as resp:
        await resp.read()
        return resp.status


def _keys_used(fake, since: int) -> list[str]:
    return [s.headers.get("Authorization", "") for s in fake.seen[since:] if s.body]


def _cooling(k: Keyrail) -> dict[str, float]:
    """credential id → seconds until it is ready again, for those cooling down."""
    return {
        v.id: (v.until or 0) - time.time()
        for v in k.app[SCHEDULER].credential_views()
        if v.state == "cooling_down"
    }


async def test_a_429_seen_by_one_instance_keeps_the_other_off_that_key(
    start_upstream, servers: list[TestServer], tmp_path: Path, redis_server: RedisServer
):
    (a, b), fake = await _two(start_upstream, servers, tmp_path, redis_server.url)
    async with aiohttp.ClientSession() as session:
        # a tries the hot key first (round-robin starts at the first), gets 429, fails over
        assert await _chat(session, a) == 200
        assert _keys_used(fake, 0) == ["Bearer sk-hot-key", "Bearer sk-cool-key"]
        took = await wait_for(lambda: _cooling(b), 5, "b hears of a's 429")
        assert took < 1.0  # pub/sub: milliseconds, not a polling period
        [(hot_id, left)] = _cooling(b).items()
        assert 28 < left <= 30.5  # for the hinted time, not a default
        before = len(fake.seen)
        for _ in range(4):
            assert await _chat(session, b) == 200
        assert _keys_used(fake, before) == ["Bearer sk-cool-key"] * 4  # b never tried it
        # ...and only for the hinted time: 31 s on, b uses the key again
        scheduler = b.app[SCHEDULER]
        real = scheduler.clock
        scheduler.clock = lambda: real() + 31
        before = len(fake.seen)
        for _ in range(2):
            await _chat(session, b)
        assert "Bearer sk-hot-key" in _keys_used(fake, before)
        assert hot_id.startswith("fakeco")


async def test_metrics_from_either_instance_count_both(
    start_upstream, servers: list[TestServer], tmp_path: Path, redis_server: RedisServer
):
    (a, b), _fake = await _two(start_upstream, servers, tmp_path, redis_server.url)
    async with aiohttp.ClientSession() as session:
        for k, n in ((a, 3), (b, 2)):
            for _ in range(n):
                assert await _chat(session, k) == 200
        # a: 3 requests, the first one with a 429 first -> 4 attempts; b: 2 attempts
        local = {"a": 4, "b": 2}
        totals: dict[str, int] = {}

        async def count(k: Keyrail, scope: str = "") -> int:
            async with session.get(f"{k.url}/v1/metrics/providers{scope}") as resp:
                data = await resp.json()
                totals["scope"] = resp.headers["X-Keyrail-Metrics-Scope"] == "deployment"
                return int(data["fakeco"]["request_count"])

        for k in (a, b):
            deadline = time.monotonic() + 5
            while (n := await count(k)) != 6:
                assert time.monotonic() < deadline, f"metrics count {n}, not 6"
                await asyncio.sleep(0.02)
            assert totals["scope"]
        assert await count(a, "?scope=local") == local["a"]
        assert await count(b, "?scope=local") == local["b"]
        async with session.get(f"{b.url}/metrics") as resp:
            text = await resp.text()
        line = 'keyrail_upstream_requests_total{driver="openai-compatibility",provider="fakeco",'
        ok = [ln for ln in text.splitlines() if ln.startswith(line) and '"2xx"' in ln]
        assert ok and ok[0].endswith(" 5.0"), ok  # 5 successes across both instances
        async with session.get(f"{b.url}/metrics?scope=local") as resp:
            text = await resp.text()
        ok = [ln for ln in text.splitlines() if ln.startswith(line) and '"2xx"' in ln]
        assert ok[0].endswith(" 2.0"), ok


async def test_losing_redis_loses_no_request_and_the_instances_converge_after(
    start_upstream,
    servers: list[TestServer],
    tmp_path: Path,
    redis_server: RedisServer,
    log_text,
):
    (a, b), fake = await _two(start_upstream, servers, tmp_path, redis_server.url)
    states = [a.app[STATE], b.app[STATE]]
    assert all(s.healthy for s in states)
    redis_server.stop()
    await wait_for(lambda: not any(s.healthy for s in states), 5, "both notice Redis is gone")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{a.url}/health") as resp:  # still ok, and says why degraded
            assert resp.status == 200
            assert (await resp.json())["state"] == {"backend": "redis", "connected": False}
        # every request is served meanwhile; a meets the 429 on `m` and cools the key for it
        # locally only, b asks for the other model (the hot key serves that one)
        for k in (a, b, a, b, a):
            assert await _chat(session, k, "m" if k is a else "other") == 200
        assert _cooling(a) and not _cooling(b)
        redis_server.start()
        await wait_for(lambda: all(s.healthy for s in states), 10, "both reconnect")
        # converged: a's cooldown (recorded while Redis was away) reached b
        await wait_for(lambda: _cooling(b), 5, "b learns a's cooldown from the merge")
        before = len(fake.seen)
        assert await _chat(session, b) == 200
        assert _keys_used(fake, before) == ["Bearer sk-cool-key"]
        # ... and the metrics agree again: 4 attempts by a (one 429), 3 by b
        for k in (a, b):
            deadline = time.monotonic() + 5
            while (n := await _deployment_count(session, k)) != 7:
                assert time.monotonic() < deadline, f"deployment count {n}, not 7"
                await asyncio.sleep(0.02)
    warnings = [ln for ln in log_text().splitlines() if "is unreachable" in ln]
    assert len(warnings) == 2, warnings  # one warning per instance, however many retries


async def _deployment_count(session: aiohttp.ClientSession, k: Keyrail) -> int:
    async with session.get(f"{k.url}/v1/metrics/providers") as resp:
        data = await resp.json()
        if resp.headers["X-Keyrail-Metrics-Scope"] != "deployment":
            return -1
        return int(data["fakeco"]["request_count"])


async def test_a_redis_that_never_answers_is_bounded_by_the_timeout(
    start_upstream, servers: list[TestServer], tmp_path: Path, log_text
):
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # takes the connection, never answers a command

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        (a, _b), _fake = await _two(
            start_upstream, servers, tmp_path, f"redis://127.0.0.1:{port}/0"
        )
        assert time.monotonic() - started < 8  # two instances, each waited ~1 s at most
        assert not a.app[STATE].healthy
        async with aiohttp.ClientSession() as session:
            assert await _chat(session, a) == 200
            async with session.get(f"{a.url}/v1/metrics/providers") as resp:
                assert resp.headers["X-Keyrail-Metrics-Scope"] == "local"
        assert "is unreachable (TimeoutError)" in log_text()
    finally:
        for writer in silent:
            writer.close()
        server.close()


LIMITED_KEY = "team-key-0123456789abcdef0123"
LIMITED = """
state: {state}
api-keys:
  - key: {key}
    name: team
    rpm: 10
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries: [{{api-key: sk-upstream}}]
    models: [{{name: up-model, alias: m}}]
"""


async def test_an_rpm_10_client_key_gets_10_successes_across_both_instances(
    start_upstream, servers: list[TestServer], tmp_path: Path, redis_server: RedisServer
):
    _fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(LIMITED.format(state=redis_server.url, key=LIMITED_KEY, url=url))

    def frozen_minute(app: web.Application) -> None:
        # One calendar minute for the whole test (a real clock could cross into the next).
        shared = app[STATE]
        assert isinstance(shared, RedisState)
        app[LIMITS].store = RedisLimitStore(
            shared.client, healthy=lambda: shared.healthy, clock=lambda: MIDNIGHT + 10
        )
        shared.push_seconds = 0.05

    a, b = [await serve_file(path, servers, before_start=frozen_minute) for _ in range(2)]
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    statuses: list[int] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in range(20):
            k = (a, b)[i % 2]
            async with session.post(f"{k.v1}/chat/completions", json=BODY) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["error"]["code"] == "client_rate_limited"
                    assert 1 <= int(resp.headers["Retry-After"]) <= 50
        assert statuses.count(200) == 10 and statuses.count(429) == 10, statuses
        # either instance's /v1/metrics/clients counts the requests both served
        for k in (a, b):
            deadline = time.monotonic() + 5
            while True:
                async with session.get(f"{k.url}/v1/metrics/clients") as resp:
                    team = (await resp.json())["team"]
                if team["request_count"] == 20:
                    break
                assert time.monotonic() < deadline, team
                await asyncio.sleep(0.02)
            assert team["success_count"] == 10
            assert team["limits"]["rpm"]["used"] == 10


STICKY = """
state: {state}
routing: {{session-affinity: true}}
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries: [{{api-key: sk-a}}, {{api-key: sk-b}}, {{api-key: sk-c}}]
    models: [{{name: up-model, alias: m}}]
"""


async def test_a_conversation_keeps_its_credential_on_either_instance(
    start_upstream, servers: list[TestServer], tmp_path: Path, redis_server: RedisServer
):
    fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(STICKY.format(state=redis_server.url, url=url))
    a, b = [await serve_file(path, servers) for _ in range(2)]
    async with aiohttp.ClientSession() as session:

        async def turn(k: Keyrail, conversation: str) -> str:
            headers = {"x-session-id": conversation}
            async with session.post(f"{k.v1}/chat/completions", json=BODY, headers=headers) as r:
                assert r.status == 200
            return fake.seen[-1].headers["Authorization"]

        # b first serves two other conversations: its own rotation would now pick the third
        # key, not the first that a bound conv-1 to
        first = await turn(a, "conv-1")
        await wait_for(lambda: len(b.app[CONVERSATIONS]) == 1, 5, "b hears of a's binding")
        assert [await turn(b, f"other-{i}") for i in range(2)] == ["Bearer sk-a", "Bearer sk-b"]
        assert first == "Bearer sk-a"
        assert [await turn(k, "conv-1") for k in (b, a, b)] == [first] * 3
