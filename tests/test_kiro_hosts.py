"""Kiro on its 2026 hosts, through keyrail, against the fake's per-host personas.

The certain facts of kiro.md's December 2026 section, and the test that holds each:

    K1 runtime first, then codewhisperer (+X-Amz-Target), then q   test_table_order_and_urls,
       a moved or retired host hands over to the next             test_fallback_through_hosts
    K2 EU SSO regions → eu-central-1, others → us-east-1; the      test_region_mapping_eu_and_us
       auth region stays the token's
    K3 runtime needs profileArn; resolved through management       test_profile_arn_resolved_once,
       when the token has none; per-host rule                      test_profile_arn_failure_line,
                                                                   test_codewhisperer_rules
    K4 minimal body; REQUEST_BODY_INVALID is a 400 about the       test_minimal_body,
       request                                                     test_agent_fields_400
    K5 a first-token deadline moves to the next credential         test_first_byte_deadline
    usage limits and ListAvailableModels on the new hosts          test_quota_*, test_discovery_*
    thinking prefix in, inline <thinking> out as reasoning (§2.4,  test_thinking_*,
    §3.3)                                                          test_inline_thinking_*,
                                                                   test_kiro_thinking.py
    token file locations (§1.1), refresh hosts per login (§1.3)   test_token_file_*,
                                                                   test_refresh_hosts_*
Older facts (frames, CRCs, refresh flows, headers, mapping) are in test_kiro*.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from drivers.kiro import auth, hosts
from drivers.kiro.driver import KiroDriver
from proxy import quota
from proxy.config import ProviderBlock
from proxy.driver import Credential
from proxy.keys import LIVE, QUOTAS, SCHEDULER
from proxy.testing import LogGuard
from proxy.tokens import Token
from tests.fake_kiro import ARN, NOT_FOUND, RETIRED, TARGET, Answer, FakeKiro, text_frames
from tests.test_kiro import HI, MODEL, write_token

Start = Callable[..., Awaitable[Any]]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeKiro, str]]:
    kiro = FakeKiro()
    server = TestServer(kiro.app, host="127.0.0.1")
    await server.start_server()
    yield kiro, str(server.make_url("")).rstrip("/")
    await server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kiro_block(name: str, token: Path, url: str, urls: list[str], extra: str = "") -> str:
    items = "".join(f"      - {u}\n" for u in urls)
    return (
        f"  - name: {name}\n    token-file: {token}\n    refresh-url: {url}\n"
        f"    management-url: {url}/management\n    base-urls:\n{items}{extra}"
    )


def persona(url: str, name: str, kind: str | None = None) -> str:
    return f"{{url: '{url}/{name}', kind: {kind or name}}}"


async def start(start_keyrail: Start, blocks: str) -> tuple[Any, openai.AsyncOpenAI]:
    kr = await start_keyrail(f"api-keys: [client-key]\nkiro:\n{blocks}")
    return kr, openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)


def idc_token(path: Path, kiro: FakeKiro, name: str, **extra: Any) -> Path:
    """An IAM Identity Center login: OIDC client, no profileArn in the file."""
    access, refresh = kiro.issue(name, social=False)
    kiro.oidc_clients["client-1"] = "secret-1"
    write_token(path, access, refresh, authMethod="IdC", clientId="client-1",
                clientSecret="secret-1", **extra)  # fmt: skip
    doc = orjson.loads(path.read_bytes())
    del doc["profileArn"]
    path.write_bytes(orjson.dumps(doc))
    return path


# -- where requests go ---------------------------------------------------------------------


def _token(**doc: Any) -> Token:
    return Token(access_token="a", refresh_token="r", expires_at=None, document=doc)


async def test_region_mapping_eu_and_us() -> None:
    """The URL the driver builds for an EU and a US token (no base-url), and the refresh host
    that stays in the token's own region."""
    block = ProviderBlock(driver="kiro", name="kiro")
    cred = Credential(id="kiro/1", provider="kiro")
    async with aiohttp.ClientSession() as session:
        driver = KiroDriver(block, session)
        eu = _token(region="eu-west-1", authMethod="IdC")
        us = _token(region="us-west-2", authMethod="IdC")
        assert driver.host_line(driver.region(cred, eu))[0].base == (
            "https://runtime.eu-central-1.kiro.dev"
        )
        assert driver.host_line(driver.region(cred, us))[0].base == (
            "https://runtime.us-east-1.kiro.dev"
        )
        # the profile ARN's region wins over the SSO region; the `region` option over both
        arn_eu = _token(region="us-east-1", profileArn=ARN.replace("us-east-1", "eu-central-1"))
        assert driver.region(cred, arn_eu) == "eu-central-1"
        pinned = KiroDriver(ProviderBlock(driver="kiro", name="k", options={"region": "us-east-1"}),
                            session)  # fmt: skip
        assert pinned.region(cred, eu) == "us-east-1"
    for sso in ("eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1", "eu-south-1", "eu-south-2",
                "eu-central-2", "eu-central-1"):  # fmt: skip
        assert hosts.serving_region(sso) == "eu-central-1"
    for sso in ("us-east-1", "us-east-2", "us-west-2", "ap-northeast-2", "ca-central-1"):
        assert hosts.serving_region(sso) == "us-east-1"
    # the refresh keeps the token's own region
    assert auth.refresh_host(eu, None, "").startswith("https://prod.eu-west-1.")


def test_table_order_and_urls() -> None:
    line = [e.host("eu-central-1") for e in hosts.read_entries("", None)]
    assert [h.base for h in line] == [
        "https://runtime.eu-central-1.kiro.dev",
        "https://codewhisperer.us-east-1.amazonaws.com",
        "https://q.eu-central-1.amazonaws.com",
    ]
    assert [h.kind.target for h in line] == [None, TARGET, None]
    assert [h.kind.profile_arn for h in line] == [hosts.ALWAYS, hosts.SOCIAL_ONLY,
                                                  hosts.SOCIAL_ONLY]  # fmt: skip
    # base-url alone overrides everything; base-urls reorders, by row name, URL or mapping
    only = hosts.read_entries("https://relay.example/kiro", ["runtime"])
    assert [(e.url, e.kind.name) for e in only] == [("https://relay.example/kiro", "q")]
    order = hosts.read_entries(
        "", ["q", "https://runtime.us-east-1.kiro.dev", {"url": "http://x:1/r", "kind": "runtime"}]
    )
    assert [e.kind.name for e in order] == ["q", "runtime", "runtime"]
    with pytest.raises(ValueError, match="kind"):
        hosts.read_entries("", [{"url": "http://x:1", "kind": "nope"}])
    with pytest.raises(ValueError, match="not a URL"):
        hosts.read_entries("", ["runtme"])
    assert hosts.moved(404, b"") and hosts.moved(410, b"")
    assert hosts.moved(RETIRED[0], orjson.dumps(RETIRED[1]))
    assert not hosts.moved(
        403, b'{"message":"The bearer token included in the request is invalid."}'
    )
    assert not hosts.moved(429, b"{}")
    model_gone = b'{"message":"The model claude-3.7 is no longer supported.","reason":null}'
    assert not hosts.moved(400, model_gone)  # about the request: back to the client


async def test_fallback_through_hosts(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path, keyrail_logs: LogGuard
) -> None:
    """Unreachable, then 404, then "retired" (in a 403): the client is served by the fourth
    address with no visible error, and the headers, access line and canary name who answered
    and who broke. The next request goes straight to the host that worked."""
    keyrail_logs.caplog.set_level(logging.INFO)
    kiro, url = fake
    kiro.retired = {"runtime": NOT_FOUND, "codewhisperer": RETIRED}
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    dead = f"{{url: 'http://127.0.0.1:{closed_port()}/gone', kind: runtime}}"
    urls = [dead, persona(url, "runtime"), persona(url, "codewhisperer"), persona(url, "q")]
    kr, client = await start(start_keyrail, kiro_block("kiro", path, url, urls))
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
    assert raw.parse().choices[0].message.content == "Hello from Kiro."
    port = url.rsplit(":", 1)[1]
    assert raw.headers["X-Keyrail-Upstream-Host"] == f"127.0.0.1:{port}/q"
    failed = raw.headers["X-Keyrail-Upstream-Host-Failed"]
    assert "/gone (unreachable)" in failed and f"{port}/codewhisperer (403)" in failed
    access = [r.getMessage() for r in keyrail_logs.caplog.records if r.name == "keyrail.access"]
    assert f"upstream_host=127.0.0.1:{port}/q" in access[-1] and "hosts_failed=" in access[-1]
    # remembered: the next request starts at q
    before = len(kiro.chats)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
    assert len(kiro.chats) == before + 1 and kiro.chats[-1].persona == "q"
    assert "X-Keyrail-Upstream-Host-Failed" not in raw.headers
    # the canary, as an operator runs it, names the host
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "canary", MODEL, "--url", kr.url, "--key", "client-key",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out
    assert f"host=127.0.0.1:{port}/q" in out.decode()
    assert kiro.problems == []
    await client.close()


async def test_every_host_failing_names_them(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    kiro.retired = {"runtime": NOT_FOUND, "q": NOT_FOUND}
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    urls = [persona(url, "runtime"), persona(url, "q")]
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, urls))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HI)
    assert caught.value.status_code == 502
    assert "no host answered" in str(caught.value) and "/runtime (404)" in str(caught.value)
    await client.close()


# -- request rules per host ------------------------------------------------------------------


async def test_minimal_body(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    seen = kiro.chats_at("runtime")[-1]
    state = seen.body["conversationState"]
    assert not {"agentTaskType", "agentContinuationId"} & set(state)
    assert "agentMode" not in seen.body and seen.body["profileArn"] == ARN
    assert "X-Amz-Target" not in seen.headers
    await client.close()


async def test_agent_fields_400(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    """Opted-in agent fields on the runtime host: a 400 naming the field, not rotated to the
    second block, nothing cooled."""
    kiro, url = fake
    a = write_token(tmp_path / "a.json", *kiro.issue("a"))
    b = write_token(tmp_path / "b.json", *kiro.issue("b"))
    opt_in = "    agent-task-type: vibe\n"
    blocks = kiro_block("kiro-a", a, url, [persona(url, "runtime")], opt_in) + kiro_block(
        "kiro-b", b, url, [persona(url, "runtime")], opt_in
    )
    kr, client = await start(start_keyrail, blocks)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HI)
    message = str(caught.value)
    assert "REQUEST_BODY_INVALID" in message and "agentTaskType" in message
    assert len(kiro.chats) == 1
    assert {v.state for v in kr.app[SCHEDULER].credential_views()} == {"ready"}
    await client.close()


async def test_codewhisperer_rules(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    """codewhisperer gets X-Amz-Target, and no profileArn for an IdC login (403 there)."""
    kiro, url = fake
    path = idc_token(tmp_path / "t.json", kiro, "idc")
    _, client = await start(start_keyrail, kiro_block("kiro", path, url,
                                                      [persona(url, "codewhisperer")]))  # fmt: skip
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    seen = kiro.chats_at("codewhisperer")[-1]
    assert seen.headers["X-Amz-Target"] == TARGET and "profileArn" not in seen.body
    assert kiro.problems == []
    await client.close()


async def test_profile_arn_resolved_once(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    """An IdC token without profileArn on the runtime host: the ARN comes from the management
    host's ListAvailableProfiles, once for the credential, and goes with every request."""
    kiro, url = fake
    path = idc_token(tmp_path / "t.json", kiro, "idc")
    kiro.profiles["at-idc"] = ARN
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    for _ in range(3):
        reply = await client.chat.completions.create(model=MODEL, messages=HI)
        assert reply.choices[0].message.content == "Hello from Kiro."
    assert all(seen.body["profileArn"] == ARN for seen in kiro.chats_at("runtime"))
    lookups = [c for c in kiro.management_calls if c[0].endswith("/ListAvailableProfiles")]
    assert len(lookups) == 1
    await client.close()


async def test_profile_arn_failure_line(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path, keyrail_logs: LogGuard
) -> None:
    kiro, url = fake
    path = idc_token(tmp_path / "t.json", kiro, "idc")
    kiro.profile_status = 403
    no_cooling = "    disable-cooling: true\n"
    _, client = await start(
        start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")], no_cooling)
    )
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=MODEL, messages=HI)
        assert "no profileArn" in str(caught.value)
        assert "ListAvailableProfiles answered 403" in str(caught.value)
    assert kiro.chats == []  # the runtime host was never sent a body it would refuse
    lines = [r for r in keyrail_logs.caplog.records
             if r.name == "keyrail.kiro" and "no profileArn" in r.getMessage()]  # fmt: skip
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    await client.close()


# -- first byte ------------------------------------------------------------------------------


async def test_first_byte_deadline(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    """A Kiro answer that sends its headers and then nothing moves to the next credential
    after `first-byte-seconds`, for a streamed and a non-streamed request."""
    kiro, url = fake
    a = write_token(tmp_path / "a.json", *kiro.issue("a"))
    b = write_token(tmp_path / "b.json", *kiro.issue("b"))
    hung = asyncio.Event()
    kiro.script = lambda seen: Answer(hold=hung) if seen.token == "at-a" else Answer()
    short = "    first-byte-seconds: 1\n    disable-cooling: true\n"
    blocks = kiro_block("kiro-a", a, url, [persona(url, "runtime")], short) + kiro_block(
        "kiro-b", b, url, [persona(url, "runtime")], short
    )
    _, client = await start(start_keyrail, blocks)
    try:
        for stream in (False, True):
            for _ in range(2):  # round-robin: one of the two starts with the hung credential
                if stream:
                    chunks = [c async for c in await client.chat.completions.create(
                        model=MODEL, messages=HI, stream=True)]  # fmt: skip
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    reply = await client.chat.completions.create(model=MODEL, messages=HI)
                    text = reply.choices[0].message.content or ""
                assert text == "Hello from Kiro."
        assert any(seen.token == "at-a" for seen in kiro.chats)
    finally:
        hung.set()
        await client.close()


# -- discovery -------------------------------------------------------------------------------


async def test_discovery_paginated_and_merged(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    kiro.model_pages = [["auto", "claude-sonnet-4.5"], ["deepseek-3.2", "claude-opus-4.7"]]
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    listed = {m.id async for m in client.models.list()}
    assert {"kiro-deepseek-3-2", "kiro-claude-opus-4-7"} <= listed  # discovered, page 2
    assert "kiro-claude-haiku-4-5" in listed  # built-in, kept
    pages = [q for p, q in kiro.management_calls if p.endswith("/ListAvailableModels")]
    assert [q.get("nextToken") for q in pages] == [None, "page-1"]
    assert all(q["origin"] == "AI_EDITOR" and q["profileArn"] == ARN for q in pages)
    await client.chat.completions.create(model="kiro-deepseek-3-2", messages=HI)
    assert kiro.chats_at("runtime")[-1].current["modelId"] == "deepseek-3.2"
    await client.close()


async def test_discovery_failure_keeps_built_in_list(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path, keyrail_logs: LogGuard
) -> None:
    kiro, url = fake
    kiro.model_pages = None  # 500
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    listed = {m.id async for m in client.models.list()}
    assert {"kiro-auto", "kiro-claude-sonnet-4-5", "kiro-claude-opus-4-6"} <= listed
    assert "model discovery failed" in keyrail_logs.text()
    await client.close()


async def test_keyrail_models_shows_sources(fake: tuple[FakeKiro, str], tmp_path: Path) -> None:
    kiro, url = fake
    kiro.model_pages = [["deepseek-3.2"]]
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    config = tmp_path / "config.yaml"
    config.write_text("kiro:\n" + kiro_block("kiro", path, url, [persona(url, "runtime")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "models", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    rows = {line.split()[0]: line for line in out.decode().splitlines()[1:] if line.strip()}
    assert rows["kiro-deepseek-3-2"].rstrip().endswith("discovered")
    assert rows["kiro-claude-haiku-4-5"].rstrip().endswith("built-in")


# -- quota -----------------------------------------------------------------------------------


async def _reading(kr: Any, credential_id: str) -> quota.Reading:
    quotas = kr.app[QUOTAS]
    async with asyncio.timeout(10):
        while (reading := quotas.get(credential_id)) is None:
            quotas.changed.clear()
            await quotas.changed.wait()
    return reading  # type: ignore[no-any-return]


async def test_quota_in_metrics(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    kr, client = await start(
        start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")])
    )
    cid = kr.app[LIVE].current.credentials["kiro"][0].id
    await _reading(kr, cid)
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer client-key"}) as http:
        async with http.get(f"{kr.url}/v1/metrics/providers") as r:
            entry = (await r.json())["kiro"]["quota"][cid]
        async with http.get(f"{kr.url}/metrics") as r:
            prometheus = await r.text()
    assert entry["used"] == 12 and entry["limit"] == 50 and entry["remaining"] == 38
    assert entry["resets_at"] == "2030-01-01T00:00:00Z" and entry["spent"] is False
    assert f'keyrail_quota_used{{credential="{cid}",provider="kiro"}} 12.0' in prometheus
    assert f'keyrail_quota_limit{{credential="{cid}",provider="kiro"}} 50.0' in prometheus
    usage = [q for p, q in kiro.management_calls if p == "/management/getUsageLimits"]
    assert usage[0]["resourceType"] == "AGENTIC_REQUEST" and usage[0]["origin"] == "AI_EDITOR"
    # at most once per interval: a round now asks nobody
    runtime = kr.app[LIVE].current
    assert await quota.read_due(runtime, kr.app[QUOTAS], kr.app[SCHEDULER]) == 0
    assert len([c for c in kiro.management_calls if c[0].endswith("getUsageLimits")]) == 1
    await client.close()


async def test_spent_quota_cools_until_reset(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    reset = time.time() + 3 * 86400
    kiro.usage = {"used": 50, "limit": 50, "reset": reset}
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    kr, client = await start(
        start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")])
    )
    cid = kr.app[LIVE].current.credentials["kiro"][0].id
    assert (await _reading(kr, cid)).quota.spent  # type: ignore[union-attr]
    view = next(v for v in kr.app[SCHEDULER].credential_views() if v.id == cid)
    assert view.state == "disabled" and view.reason == "quota"
    assert view.until is not None and abs(view.until - reset) < 60
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=HI)
    assert kiro.chats == []  # not tried and failing: not tried at all
    # a later reading that is not spent lifts it
    kiro.usage = {"used": 1, "limit": 50, "reset": reset}
    far = time.monotonic() + 10_000
    assert await quota.read_due(kr.app[LIVE].current, kr.app[QUOTAS], kr.app[SCHEDULER],
                                now=far) == 1  # fmt: skip
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    await client.close()


# -- thinking --------------------------------------------------------------------------------

THOUGHT = ["<thin", "king>\nI should", " greet. `</thinking>` is a tag", ".</th",
           "inking>\n\nHel", "lo!"]  # fmt: skip


async def test_thinking_request_and_reasoning_split(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    kiro.script = lambda seen: Answer(frames=text_frames(*THOUGHT))
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    _, client = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, *HI], stream=True,
        reasoning_effort="high",
    )  # fmt: skip
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    reasoning = [d.model_extra.get("reasoning_content") for d in deltas if d.model_extra]
    reasoning = [r for r in reasoning if r]
    assert "".join(reasoning) == "I should greet. `</thinking>` is a tag."
    assert len(reasoning) >= 2  # given out as it came, not at the closing tag
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    content = kiro.chats[-1].current["content"]
    assert content.startswith(
        "--- SYSTEM PROMPT ---\n<thinking_mode>enabled</thinking_mode>"
        "<max_thinking_length>32000</max_thinking_length>\nBe brief."
    )
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=HI,
        reasoning_effort="low",
    )
    assert reply.choices[0].message.content == "Hello!"
    assert reply.choices[0].message.model_extra["reasoning_content"] == (
        "I should greet. `</thinking>` is a tag."
    )
    assert "<max_thinking_length>4096<" in kiro.chats[-1].current["content"]
    # without thinking asked for, nothing is split or prefixed
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert (reply.choices[0].message.content or "").startswith("<thinking>")
    assert "thinking_mode" not in kiro.chats[-1].current["content"]
    await client.close()


def test_bad_base_urls_refused_by_check(tmp_path: Path) -> None:
    """A wrong `base-urls` item is a config error (`keyrail check`, start-up, reload), with
    the file and line, not a traceback at start-up."""
    from proxy import config
    from proxy.errors import ConfigError
    from proxy.registry import Registry, options_lookup

    text = (
        "kiro:\n  - token-file: t.json\n    base-urls: [runtime, {url: 'http://x:1', kind: rt}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        config.parse(text, options_lookup(Registry.discover()), source="c.yaml")
    assert caught.value.problems == [
        "c.yaml:2:1: kiro block 'kiro': 'kind' must be one of runtime, codewhisperer, q, not 'rt'"
    ]
    good = text.replace("kind: rt", "kind: runtime")
    assert config.parse(good, options_lookup(Registry.discover())).providers[0].driver == "kiro"


def test_token_file_default_then_legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kiro.md §1.1: `~/.aws/sso/cache/kiro-auth-token.json`, else `~/.kiro/...` (checked
    second)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    block = ProviderBlock(driver="kiro", name="kiro")

    def chosen() -> str:
        return str(KiroDriver.credentials(block)[0].extra["token_file"])

    assert chosen() == str(tmp_path / ".aws/sso/cache/kiro-auth-token.json")  # neither exists
    (tmp_path / ".kiro").mkdir()
    (tmp_path / ".kiro/kiro-auth-token.json").write_text("{}")
    assert chosen() == str(tmp_path / ".kiro/kiro-auth-token.json")
    (tmp_path / ".aws/sso/cache").mkdir(parents=True)
    (tmp_path / ".aws/sso/cache/kiro-auth-token.json").write_text("{}")
    assert chosen() == str(tmp_path / ".aws/sso/cache/kiro-auth-token.json")


def test_refresh_hosts_keep_the_auth_region() -> None:
    """kiro.md §1.3: social refresh at prod.{region}.auth.desktop.kiro.dev, IdC at
    oidc.{region}.amazonaws.com, Builder ID always at oidc.us-east-1 (K2: the auth region is
    not mapped like the API region)."""
    social = _token(region="ap-northeast-2", authMethod="social")
    idc = _token(region="eu-west-3", authMethod="IdC", clientId="c", clientSecret="s")
    builder = _token(region="eu-west-3", authMethod="builder-id", clientId="c", clientSecret="s")
    assert (
        auth.refresh_host(social, None, "") == "https://prod.ap-northeast-2.auth.desktop.kiro.dev"
    )
    assert auth.refresh_host(idc, None, "") == "https://oidc.eu-west-3.amazonaws.com"
    assert auth.refresh_host(builder, None, "") == "https://oidc.us-east-1.amazonaws.com"
    assert not auth.is_social(idc, None) and auth.is_social(social, None)


async def test_inline_thinking_through_messages(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    """Claude Code's path: `thinking.budget_tokens` on /v1/messages becomes Kiro's thinking
    prefix, and the inline `<thinking>` text comes back as a thinking block, streamed as
    thinking deltas before the text."""
    import anthropic

    kiro, url = fake
    kiro.script = lambda seen: Answer(frames=text_frames(*THOUGHT))
    path = write_token(tmp_path / "t.json", *kiro.issue("one"))
    kr, _ = await start(start_keyrail, kiro_block("kiro", path, url, [persona(url, "runtime")]))
    c = anthropic.AsyncAnthropic(base_url=kr.url, api_key="client-key", max_retries=0)
    async with c.messages.stream(
        model=MODEL, max_tokens=5000, thinking={"type": "enabled", "budget_tokens": 4000},
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:  # fmt: skip
        kinds = [e.delta.type async for e in stream if e.type == "content_block_delta"]
        final = await stream.get_final_message()
    await c.close()
    assert kinds[:2] == ["thinking_delta", "thinking_delta"] and kinds[-1] == "text_delta"
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "I should greet. `</thinking>` is a tag."
    assert final.content[-1].type == "text" and final.content[-1].text == "Hello!"
    assert "<max_thinking_length>4000<" in kiro.chats[-1].current["content"]
