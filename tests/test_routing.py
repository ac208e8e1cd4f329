"""Requests reach the right upstream: prefixes, aliases, pools, discovery, passthrough."""

from __future__ import annotations

import aiohttp
import openai
import orjson

from tests.fakes import Script


async def test_onboarding_a_prefixed_provider(start_upstream, start_keyrail):
    """Runbook 'Onboard a New Provider' steps 1-5 against two fake upstreams."""
    primary, url_a = await start_upstream("primary")
    newco, url_b = await start_upstream("newco")
    kr = await start_keyrail(
        f"""
api-keys: [ops-key]
openai-compatibility:
  - name: primary
    base-url: {url_a}
    models: [{{name: gpt-4o-mini, alias: fast}}]
  - name: newco
    prefix: canary
    base-url: {url_b}
    api-key-entries: [{{api-key: newco-key}}]
    models: [{{name: newco-large-2, alias: large}}]
"""
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="ops-key", max_retries=0) as c:
        ids = sorted([m.id async for m in c.models.list()])
        assert ids == ["canary/large", "fast", "large"]
        reply = await c.chat.completions.create(
            model="canary/large", messages=[{"role": "user", "content": "ping"}]
        )
        assert reply.choices[0].message.content
    assert newco.seen[-1].body["model"] == "newco-large-2"
    assert newco.seen[-1].headers["Authorization"] == "Bearer newco-key"
    assert not primary.seen


async def test_round_robin_over_keys_and_failover_on_429(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(
        f"""
openai-compatibility:
  - name: p
    base-url: {url}
    api-key-entries: [{{api-key: key-a}}, {{api-key: key-b}}]
    models: [{{name: gpt-4o-mini}}]
"""
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as c:
        for _ in range(4):
            await c.chat.completions.create(model="gpt-4o-mini", messages=[])
        used = [s.headers["Authorization"] for s in fake.seen]
        assert sorted(used) == ["Bearer key-a"] * 2 + ["Bearer key-b"] * 2

        fake.seen.clear()
        fake.script = lambda seen: (
            Script(status=429, headers={"Retry-After": "60"})
            if seen.headers["Authorization"] == "Bearer key-a"
            else Script()
        )
        for _ in range(5):
            reply = await c.chat.completions.create(model="gpt-4o-mini", messages=[])
            assert reply.choices[0].message.content
        used = [s.headers["Authorization"] for s in fake.seen]
        assert used.count("Bearer key-a") == 1  # throttled once, then left alone while cooling


async def test_models_discovered_when_a_block_lists_none(start_upstream, start_keyrail):
    _fake, url = await start_upstream(models=("m-one", "m-two", "text-embedding-x"))
    kr = await start_keyrail(
        f"""
openai-compatibility:
  - name: disc
    base-url: {url}
    excluded-models: ["text-embedding-*"]
"""
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as c:
        assert sorted([m.id async for m in c.models.list()]) == ["m-one", "m-two"]


async def test_other_endpoints_pass_through_untouched(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(
        f"""
openai-compatibility:
  - name: p
    base-url: {url}
    models: [{{name: gpt-4o-mini, alias: fast}}]
"""
    )
    body = {"model": "fast", "input": "hello", "vendor_field": {"x": [1, 2]}, "temperature": 0.2}
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/responses", "/v1/completions"):
            async with s.post(kr.url + path, json=body) as r:
                assert r.status == 200, await r.text()
            assert fake.seen[-1].path == path
            assert fake.seen[-1].body == {**body, "model": "gpt-4o-mini"}


async def test_block_headers_go_upstream_and_client_key_does_not(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(
        f"""
api-keys: [client-secret]
openai-compatibility:
  - name: p
    base-url: {url}
    headers: {{X-Title: keyrail-test}}
    models: [{{name: gpt-4o-mini}}]
"""
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            kr.v1 + "/chat/completions",
            data=orjson.dumps({"model": "gpt-4o-mini", "messages": []}),
            headers={"Authorization": "Bearer client-secret", "x-api-key": "client-secret"},
        ) as r,
    ):
        assert r.status == 200
    seen = fake.seen[-1].headers
    assert seen["X-Title"] == "keyrail-test"
    assert "client-secret" not in " ".join(seen.values())


async def test_upstreams_see_keyrails_user_agent_and_never_a_cookie(start_upstream, start_keyrail):
    """One session serves every client of a block: an upstream's Set-Cookie must not come
    back on another client's request. Upstreams see who calls them."""
    fake, url = await start_upstream()
    fake.script = lambda seen: Script(headers={"Set-Cookie": "session=client-one; Path=/"})
    # by name: a cookie jar takes no cookies from a bare IP address
    named = url.replace("127.0.0.1", "localhost")
    kr = await start_keyrail(
        f"""
openai-compatibility:
  - name: p
    base-url: {named}
    models: [{{name: gpt-4o-mini}}]
"""
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as c:
        for _ in range(3):
            await c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert len(fake.seen) == 3
    assert all("Cookie" not in s.headers for s in fake.seen)
    assert all(s.headers["User-Agent"].startswith("keyrail/") for s in fake.seen)
