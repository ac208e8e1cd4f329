"""The roo driver through keyrail against the fake Roo router on 127.0.0.1 (tests/fake_roo.py):
the router protocol while a router speaks it, the CLI login file, and the sunset: one upstream
call per credential, then 503 `provider_discontinued` at once until a reload. Also `keyrail
check` on the runbook's minimax: and roo: examples."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.__main__ import main
from proxy.keys import SCHEDULER
from proxy.reload import RELOADER
from tests.fake_roo import USAGE, FakeRoo
from tests.ops_helpers import serve_file

Start = Callable[..., Awaitable[Any]]
HI = [{"role": "user", "content": "hi"}]
MODEL = "xai/grok-code-fast-1"


@pytest.fixture
async def fake(start_upstream_app: Callable[..., Awaitable[str]]) -> tuple[FakeRoo, str]:
    roo = FakeRoo()
    return roo, await start_upstream_app(roo.app)


def roo_block(url: str, keys: str = "roo-token", extra: str = "") -> str:
    return (
        f"api-keys: [client-key]\nroo:\n  - base-url: {url}/proxy\n    api-key: [{keys}]\n"
        f"    models: [{{name: {MODEL}}}]\n{extra}"
    )


async def test_router_protocol_streamed_and_not(
    fake: tuple[FakeRoo, str], start_keyrail: Start
) -> None:
    roo, url = fake
    kr = await start_keyrail(roo_block(url))
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model=MODEL, messages=HI, stream=True, reasoning_effort="high"
        )
        chunks = [x async for x in stream]
        reply = await c.chat.completions.create(model=MODEL, messages=HI, reasoning_effort="none")
    text = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
    thought = "".join(
        (x.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for x in chunks
        if x.choices
    )
    assert (thought, text) == ("Thinking.", "Hello from Roo.")
    assert all("reasoning_details" not in (x.choices[0].delta.model_extra or {})
               for x in chunks if x.choices)  # fmt: skip
    message = reply.choices[0].message
    assert message.content == "Hello from Roo."
    assert (message.model_extra or {}).get("reasoning_content") == "Thinking."
    assert reply.usage is not None and reply.usage.total_tokens == USAGE["total_tokens"]
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 800
    first, second = roo.seen
    assert first.body["reasoning"] == {"enabled": True, "effort": "high"}
    assert second.body["reasoning"] == {"enabled": False}
    assert first.body["stream_options"] == {"include_usage": True}
    assert first.headers["Authorization"] == "Bearer roo-token"
    assert first.headers["X-Title"] == "Roo Code" and first.headers["X-Roo-App-Version"]
    assert roo.problems == []


def jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    claims = {"iss": "roo", "sub": "user_1", "exp": int(exp), "r": {"u": "user_1", "t": "cli"}}
    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(("days", "ok"), [(2, True), (1 / 24, False)])
async def test_cli_login_file_in_home(
    days: float,
    ok: bool,
    fake: tuple[FakeRoo, str],
    start_keyrail: Start,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roo, url = fake
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ROO_API_KEY", raising=False)
    token = jwt(time.time() + days * 86400)
    roo.tokens = {token}
    (tmp_path / ".roo").mkdir()
    login = tmp_path / ".roo" / "cli-credentials.json"
    login.write_bytes(orjson.dumps({"token": token, "createdAt": "2026-12-01T00:00:00.000Z"}))
    login.chmod(0o600)
    kr = await start_keyrail(  # no api-key, no token-file: the Roo CLI's login file
        f"api-keys: [client-key]\nroo:\n  - base-url: {url}/proxy/v1\n"
        f"    models: [{{name: {MODEL}}}]\n"
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        if ok:
            reply = await c.chat.completions.create(model=MODEL, messages=HI)
            assert reply.choices[0].message.content == "Hello from Roo."
            assert roo.seen[-1].headers["Authorization"] == f"Bearer {token}"
        else:  # the CLI's rule: expired 24 h before `exp`; no refresh call exists
            with pytest.raises(openai.AuthenticationError) as info:
                await c.chat.completions.create(model=MODEL, messages=HI)
            assert "roo auth login" in str(info.value)
            assert roo.seen == []


# -- the sunset ---------------------------------------------------------------------------


async def chat(session: aiohttp.ClientSession, base: str, stream: bool) -> tuple[int, Any]:
    async with session.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "stream": stream},
        headers={"Authorization": "Bearer client-key"},
    ) as response:
        return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", ["error", "gone", "content"])
async def test_sunset_one_call_per_credential_then_503_until_reload(
    shape: str,
    stream: bool,
    fake: tuple[FakeRoo, str],
    servers: list[TestServer],
    tmp_path: Path,
) -> None:
    roo, url = fake
    roo.sunset, roo.sunset_shape = True, shape
    path = tmp_path / "config.yaml"
    path.write_text(roo_block(url, keys="roo-a, roo-b"))
    kr = await serve_file(path, servers)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            status, body = await chat(session, kr.url, stream)
            assert status == 503, body
            error = body["error"]
            assert error["code"] == "provider_discontinued"
            assert "was shut down" in error["message"]
            assert "openai-compatibility" in error["message"]
            assert "roo-a" not in error["message"]
        assert [s.headers["Authorization"] for s in roo.seen] == [
            "Bearer roo-a",
            "Bearer roo-b",
        ] or [s.headers["Authorization"] for s in roo.seen] == ["Bearer roo-b", "Bearer roo-a"]
        views = kr.app[SCHEDULER].credential_views()
        assert {(v.state, v.reason, v.until) for v in views} == {("disabled", "discontinued", None)}
        async with session.get(f"{kr.url}/v1/metrics/providers") as response:
            metrics = await response.json()
        assert metrics["roo"]["credentials"]["disabled"] == 2
        # A reload (the operator moved or fixed the block) gives the credentials one more try.
        path.write_text(roo_block(url, keys="roo-a, roo-b") + "# edited\n")
        assert (await kr.app[RELOADER].reload(reason="test")).status == "reloaded"
        status, body = await chat(session, kr.url, stream)
        assert status == 503 and len(roo.seen) == 4


# -- keyrail check ------------------------------------------------------------------------

RUNBOOK = """\
api-keys: [sk-keyrail-test-key-0123456789]
minimax:
  - token-file: ~/.minimax/oauth-token.json
    base-url: https://api.minimax.io/anthropic
  - token-file: ~/.cli-proxy-api/minimax-api-key.json
    base-url: https://api.minimax.chat/v1
  - api-key: ${MINIMAX_API_KEY:-mm-placeholder}
    region: cn
    prefix: mm
    models: [{name: MiniMax-M2.7, alias: m2}]
    rate-limit: {rpm: 60}
roo:
  - token-file: ~/.roo/oauth-token.json
  - api-key: ${ROO_API_KEY:-roo-placeholder}
    base-url: https://router.example.com/proxy/v1
"""


def test_check_accepts_the_runbook_examples_and_warns_about_roo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(RUNBOOK)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("default Roo Code Router was shut down") == 1
    )  # only the block without base-url
    assert ":13:" in out  # it points at that block
    assert "Anthropic endpoint" in out and "'rate-limit' is accepted" in out
    assert out.rstrip().endswith("OK (5 provider blocks)")


def test_check_rejects_a_minimax_block_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("minimax:\n  - region: mars\n")
    assert main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert "config.yaml:2:1:" in out and "'region' must be global or cn" in out
    assert "needs 'api-key' or 'token-file'" in out


async def test_models_discovered_from_the_router(
    fake: tuple[FakeRoo, str], start_keyrail: Start
) -> None:
    _, url = fake
    kr = await start_keyrail(f"roo:\n  - base-url: {url}/proxy/v1\n    api-key: roo-token\n")
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="unused", max_retries=0) as c:
        listed = sorted([m.id async for m in c.models.list()])
    assert listed == ["roo/free-model", "xai/grok-code-fast-1"]


async def test_tool_call_over_three_chunks_passes_through(
    fake: tuple[FakeRoo, str], start_keyrail: Start
) -> None:
    _, url = fake
    kr = await start_keyrail(roo_block(url))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=HI,
            stream=True,
            tools=[tool],  # type: ignore[list-item]
        )
        chunks = [x async for x in stream]
    calls = [t for x in chunks if x.choices for t in (x.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "call_roo_1"
    args = "".join(t.function.arguments or "" for t in calls if t.function)
    assert orjson.loads(args) == {"city": "Paris"}
    assert [x.choices[0].finish_reason for x in chunks if x.choices][-1] == "tool_calls"


async def test_roo_api_key_from_the_environment(
    fake: tuple[FakeRoo, str], start_keyrail: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    roo, url = fake
    monkeypatch.setenv("ROO_API_KEY", "roo-token")
    kr = await start_keyrail(
        f"roo:\n  - base-url: {url}/proxy/v1\n    models: [{{name: {MODEL}}}]\n"
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="unused", max_retries=0) as c:
        reply = await c.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Roo."
    assert roo.seen[-1].headers["Authorization"] == "Bearer roo-token"
