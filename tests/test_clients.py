"""Client keys with scope and limits, usage per client, over real sockets with the official SDK.

Limits run on the memory limit store with a manual clock (no sleeps); streams are held open
by an upstream that waits on an event.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from proxy.keys import LIMITS, LIVE
from proxy.reload import RELOADER
from proxy.state import MemoryLimitStore
from proxy.testing.limit_store import MIDNIGHT, ManualClock
from tests.fakes import Script, chunk
from tests.ops_helpers import serve_file

PLAIN = "plain-key-0000000000000000"
SCOPED = "scoped-key-1111111111111111"
LIMITED = "limited-key-2222222222222222"
MGMT = "management-secret-3333333333"
CONFIG = """
api-keys:
  - {plain}
  - key: {scoped}
    name: fb-app
    models: ["fb/*"]
  - key: {limited}
    name: {limited_name}
    {limits}
remote-management: {{secret-key: {mgmt}}}
openai-compatibility:
  - name: fb
    prefix: fb
    base-url: {url}
    api-key-entries: [{{api-key: upstream-fb-1}}]
    models: [{{name: gpt-4o-mini, alias: fast}}, {{name: gpt-4o, alias: smart}}]
  - name: other
    base-url: {url}
    api-key-entries: [{{api-key: upstream-other-1}}]
    models: [{{name: gpt-4o-mini, alias: cheap}}]
"""


def config(url: str, limits: str = "rpm: 5", name: str = "team-b") -> str:
    return CONFIG.format(
        plain=PLAIN,
        scoped=SCOPED,
        limited=LIMITED,
        mgmt=MGMT,
        url=url,
        limits=limits,
        limited_name=name,
    )


def sdk(kr, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=kr.v1, api_key=key, max_retries=0)


HI = [{"role": "user", "content": "hi"}]


def manual_clock(kr) -> ManualClock:
    clock = ManualClock(MIDNIGHT + 5)  # 5 s into a minute and into a UTC day
    kr.app[LIMITS].use(MemoryLimitStore(clock))
    return clock


async def test_a_scoped_key_sees_and_calls_only_its_models(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(config(url))
    async with sdk(kr, SCOPED) as c:
        listed = sorted(m.id for m in (await c.models.list()).data)
        assert listed == ["fb/fast", "fb/smart"]
        reply = await c.chat.completions.create(model="fb/fast", messages=HI)
        assert reply.choices[0].message.content
        for model in ("cheap", "fast"):  # another block, and fb's model without its prefix
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await c.chat.completions.create(model=model, messages=HI)
            assert caught.value.status_code == 403
            assert caught.value.code == "model_not_allowed"
            assert model in caught.value.message
        with pytest.raises(openai.PermissionDeniedError):
            await c.models.retrieve("cheap")
    assert len([s for s in fake.seen if s.path.endswith("/chat/completions")]) == 1
    async with sdk(kr, PLAIN) as c:  # a plain key: everything, as before
        listed = sorted(m.id for m in (await c.models.list()).data)
        assert listed == ["cheap", "fast", "fb/fast", "fb/smart", "smart"]
        await c.chat.completions.create(model="cheap", messages=HI)


async def test_rpm_5_gives_5_successes_then_429_until_the_minute_ends(
    start_upstream, start_keyrail
):
    fake, url = await start_upstream()
    kr = await start_keyrail(config(url, "rpm: 5"))
    clock = manual_clock(kr)
    async with sdk(kr, LIMITED) as c:
        for _ in range(5):
            await c.chat.completions.create(model="fast", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="fast", messages=HI)
        error = caught.value
        assert error.code == "client_rate_limited"  # not the upstream cooldown's model_cooldown
        assert error.response.headers["Retry-After"] == "55"
        assert len(fake.seen) == 5  # the sixth never reached an upstream
        clock.advance(55)  # the next minute
        await c.chat.completions.create(model="fast", messages=HI)
    async with sdk(kr, PLAIN) as c:  # other keys are not limited by it
        await c.chat.completions.create(model="fast", messages=HI)


class HeldStreams:
    """An upstream whose streams send their first chunk, then wait for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._post)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.started += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk(body["model"], {"role": "assistant", "content": "held "}))
        await self.release.wait()
        await response.write(chunk(body["model"], {}, "stop") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def test_max_concurrent_2_with_3_streams_gives_exactly_one_429(
    start_upstream_app, start_keyrail
):
    upstream = HeldStreams()
    url = await start_upstream_app(upstream.app) + "/v1"
    kr = await start_keyrail(config(url, "max-concurrent: 2"))
    async with sdk(kr, LIMITED) as c:

        async def open_stream():
            return await c.chat.completions.create(model="fast", messages=HI, stream=True)

        results = await asyncio.wait_for(
            asyncio.gather(*(open_stream() for _ in range(3)), return_exceptions=True), 10
        )
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        streams = [r for r in results if not isinstance(r, BaseException)]
        assert len(refused) == 1 and len(streams) == 2, results
        assert refused[0].code == "client_rate_limited"
        assert refused[0].response.headers["Retry-After"] == "1"
        assert upstream.started == 2
        upstream.release.set()
        for stream in streams:
            assert "held" in "".join([ch.choices[0].delta.content or "" async for ch in stream])
        # the slots came back: two more at once are fine
        again = await asyncio.gather(open_stream(), open_stream())
        for stream in again:
            [ch async for ch in stream]


def big_usage(seen) -> Script:
    """A completion reporting 300 prompt + 100 completion tokens."""
    return Script(
        json={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": seen.body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 300, "completion_tokens": 100, "total_tokens": 400},
        }
    )


@pytest.mark.parametrize(
    ("limit", "reset_after"), [("tpm: 1000", 55), ("daily-tokens: 1000", 86400 - 5)]
)
async def test_token_limits_count_what_the_upstream_reported(
    start_upstream, start_keyrail, limit, reset_after
):
    """400 tokens a request: 0, 400, 800 are under 1000, so three pass and the fourth is
    refused; the estimate alone (a few tokens for this body) would have let many more by."""
    fake, url = await start_upstream()
    fake.script = big_usage
    kr = await start_keyrail(config(url, limit))
    clock = manual_clock(kr)
    async with sdk(kr, LIMITED) as c:
        for _ in range(3):
            await c.chat.completions.create(model="fast", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="fast", messages=HI)
        assert caught.value.code == "client_rate_limited"
        assert caught.value.response.headers["Retry-After"] == str(reset_after)
        assert len(fake.seen) == 3
        clock.advance(reset_after - 1)
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(model="fast", messages=HI)
        clock.advance(1)  # the next minute / 00:00 UTC
        await c.chat.completions.create(model="fast", messages=HI)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{kr.url}/v1/metrics/clients", headers={"Authorization": f"Bearer {LIMITED}"}
        ) as resp,
    ):
        mine = await resp.json()
    name = "tpm" if limit.startswith("tpm") else "daily-tokens"
    assert list(mine) == ["team-b"]  # a named client's key sees only itself
    window = 60 if name == "tpm" else 86400  # the clock is at the start of a new window
    assert mine["team-b"]["limits"][name] == {
        "limit": 1000,
        "used": 400,
        "remaining": 600,
        "resets_in_seconds": window,
    }


async def test_a_failed_request_gives_its_token_estimate_back(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    fake.script = lambda seen: Script(status=500)
    kr = await start_keyrail(config(url, "tpm: 1000"))
    manual_clock(kr)
    async with sdk(kr, LIMITED) as c:
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="fast", messages=HI)
    (client,) = [c for c in kr.app[LIVE].current.client_keys.clients if c.name == "team-b"]
    assert await kr.app[LIMITS].store.used(client.ref + ":tpm", 60) == 0


async def test_a_reload_keeps_the_counters_of_keys_that_stay(start_upstream, servers, tmp_path):
    _fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(config(url, "rpm: 3"))
    kr = await serve_file(path, servers)
    manual_clock(kr)
    async with sdk(kr, LIMITED) as c:
        for _ in range(2):
            await c.chat.completions.create(model="fast", messages=HI)
        path.write_text(config(url, "rpm: 3", name="team-b-renamed"))
        assert (await kr.app[RELOADER].reload()).status == "reloaded"
        await c.chat.completions.create(model="fast", messages=HI)
        with pytest.raises(openai.RateLimitError):  # 3 in this minute, across the reload
            await c.chat.completions.create(model="fast", messages=HI)


async def test_usage_per_client_matches_the_fake_field_by_field(
    start_upstream, start_keyrail, log_text
):
    fake, url = await start_upstream()
    fail_next = {"n": 0}

    def script(seen) -> Script:
        if fail_next["n"]:
            fail_next["n"] -= 1
            return Script(status=500)
        return Script()

    fake.script = script
    kr = await start_keyrail(config(url, "rpm: 100"))
    manual_clock(kr)
    async with sdk(kr, SCOPED) as c:
        for _ in range(3):
            await c.chat.completions.create(model="fb/fast", messages=HI)
        stream = await c.chat.completions.create(model="fb/smart", messages=HI, stream=True)
        [ch async for ch in stream]
        with pytest.raises(openai.PermissionDeniedError):
            await c.chat.completions.create(model="cheap", messages=HI)
        fail_next["n"] = 1
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="fb/fast", messages=HI)
    async with sdk(kr, LIMITED) as c:
        await c.chat.completions.create(model="cheap", messages=HI)
    async with sdk(kr, PLAIN) as c:  # plain keys are not in the per-client usage
        await c.chat.completions.create(model="cheap", messages=HI)

    # What the fake counted: every request it answered 200 reported 11 + 7 tokens.
    answered = [s for s in fake.seen if s.path.endswith("/chat/completions")]
    by_upstream_key = {}
    for s in answered:
        by_upstream_key.setdefault(s.headers["Authorization"], []).append(s.body["model"])
    assert len(by_upstream_key["Bearer upstream-fb-1"]) == 5  # 3 + 1 stream + 1 failed
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {PLAIN}"}
        async with http.get(f"{kr.url}/v1/metrics/clients", headers=auth) as resp:
            usage = await resp.json()
        async with http.get(f"{kr.url}/v1/metrics/clients?format=list", headers=auth) as resp:
            listed = await resp.json()
        async with http.get(f"{kr.url}/metrics") as resp:
            prometheus = await resp.text()
    assert sorted(usage) == ["fb-app", "team-b"]
    fb = usage["fb-app"]
    assert fb["request_count"] == 6
    assert fb["success_count"] == 4 and fb["failure_count"] == 2
    assert fb["status_counts"] == {"2xx": 4, "401": 0, "403": 1, "429": 0, "5xx": 1, "other": 0}
    assert (fb["prompt_tokens"], fb["completion_tokens"], fb["total_tokens"]) == (44, 28, 72)
    assert fb["models"]["fb/fast"]["request_count"] == 4
    assert fb["models"]["fb/fast"]["status_counts"]["5xx"] == 1
    assert fb["models"]["fb/smart"]["prompt_tokens"] == 11  # the stream's usage
    assert fb["models"]["cheap"]["status_counts"]["403"] == 1
    assert fb["last_seen"] and fb["limits"] == {} and fb["models_allowed"] == ["fb/*"]
    team = usage["team-b"]
    assert (team["request_count"], team["prompt_tokens"], team["completion_tokens"]) == (1, 11, 7)
    assert team["limits"]["rpm"]["used"] == 1 and team["limits"]["rpm"]["remaining"] == 99
    assert listed["object"] == "list" and [d["client"] for d in listed["data"]] == [
        "fb-app",
        "team-b",
    ]

    def sample(name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", prometheus, re.MULTILINE)
        assert match, f"{name}{{{want}}} not in /metrics"
        return float(match.group(1))

    assert sample("keyrail_client_requests_total", client="fb-app", status_class="2xx") == 4
    assert sample("keyrail_client_requests_total", client="fb-app", status_class="403") == 1
    assert sample("keyrail_client_requests_total", client="fb-app", status_class="5xx") == 1
    assert sample("keyrail_client_tokens_total", client="fb-app", direction="prompt") == 44
    assert sample("keyrail_client_tokens_total", client="fb-app", direction="completion") == 28
    assert sample("keyrail_client_tokens_total", client="team-b", direction="prompt") == 11

    # The access line names the client; a plain key's line has no client.
    lines = [ln for ln in log_text().splitlines() if "path=/v1/chat/completions" in ln]
    assert sum("client=fb-app" in ln for ln in lines) == 6
    assert sum("client=team-b" in ln for ln in lines) == 1
    assert len(lines) == 8


async def test_no_client_key_in_any_output(start_upstream, start_keyrail, log_text):
    _fake, url = await start_upstream()
    kr = await start_keyrail(config(url, "rpm: 1"))
    manual_clock(kr)
    bodies: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def get(path: str, key: str, **headers: str) -> None:
            async with http.get(
                kr.url + path, headers={"Authorization": f"Bearer {key}", **headers}
            ) as resp:
                bodies.append(await resp.text())
                bodies.append(str(resp.headers))

        async def chat(key: str, model: str) -> None:
            body = {"model": model, "messages": HI}
            async with http.post(
                f"{kr.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                bodies.append(await resp.text())
                bodies.append(str(resp.headers))

        await chat(SCOPED, "cheap")  # 403
        await chat(LIMITED, "fast")
        await chat(LIMITED, "fast")  # 429
        await chat(SCOPED + "x", "fast")  # 401
        for path in (
            "/v1/metrics/clients",
            "/v1/metrics/clients?format=list",
            "/metrics",
            "/v1/models",
        ):
            await get(path, PLAIN)
        for path in ("clients", "sessions", "config", "providers"):
            await get(f"/v0/management/{path}", MGMT)
    managed = orjson.loads(bodies[-4])  # /v0/management/config
    assert [c["key"] for c in managed["clients"]] == ["[REDACTED]", "[REDACTED]"]
    clients = orjson.loads(bodies[-8])  # /v0/management/clients
    assert [c["name"] for c in clients["data"]] == ["fb-app", "team-b"]
    assert clients["plain_keys"] == 1
    assert clients["data"][1]["limits"]["rpm"] == 1
    everything = "\n".join(bodies) + log_text()
    for key in (PLAIN, SCOPED, LIMITED, MGMT):
        assert key not in everything
    assert "client_rate_limited" in everything and "model_not_allowed" in everything


async def test_claude_code_s_dialect_gets_its_own_error_types(start_upstream, start_keyrail):
    """The same refusals through `/v1/messages` and the official `anthropic` package: the
    SDK raises its typed errors from Anthropic-shaped bodies; the models list is filtered."""
    _fake, url = await start_upstream()
    kr = await start_keyrail(config(url, "rpm: 1"))
    manual_clock(kr)
    async with anthropic.AsyncAnthropic(base_url=kr.url, api_key=SCOPED, max_retries=0) as c:
        listed = sorted(m.id for m in (await c.models.list()).data)
        assert listed == ["fb/fast", "fb/smart"]
        reply = await c.messages.create(model="fb/fast", max_tokens=50, messages=HI)
        assert reply.content[0].text
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await c.messages.create(model="cheap", max_tokens=50, messages=HI)
        assert denied.value.body["type"] == "error"
        assert denied.value.body["error"]["type"] == "permission_error"
    async with anthropic.AsyncAnthropic(base_url=kr.url, api_key=LIMITED, max_retries=0) as c:
        await c.messages.create(model="cheap", max_tokens=50, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await c.messages.create(model="cheap", max_tokens=50, messages=HI)
        assert limited.value.body["error"]["type"] == "rate_limit_error"
        assert limited.value.response.headers["Retry-After"] == "55"
