"""The kiro driver through keyrail, with the `openai` SDK as client, against a fake Kiro on
127.0.0.1 that speaks real event-stream frames cut at random byte boundaries."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from drivers.kiro import eventstream
from proxy.keys import LIVE, SCHEDULER
from proxy.tokens import format_expiry
from tests.fake_kiro import ARN, Answer, FakeKiro, Seen, text_frames, tool_frames

MODEL = "kiro-claude-sonnet-4-5"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeKiro, str]]:
    kiro = FakeKiro()
    server = TestServer(kiro.app, host="127.0.0.1")
    await server.start_server()
    yield kiro, str(server.make_url("")).rstrip("/")
    await server.close()


def write_token(
    path: Path, access: str, refresh: str, *, expires_in: float = 3600, **extra: Any
) -> Path:
    doc = {
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": format_expiry(time.time() + expires_in),
        "profileArn": ARN,
        "authMethod": "social",
        "provider": "Github",
        **extra,
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)
    return path


def block(name: str, token_file: Path, url: str, extra: str = "") -> str:
    return (
        f"  - name: {name}\n    token-file: {token_file}\n    base-url: {url}\n"
        f"    refresh-url: {url}\n{extra}"
    )


Start = Callable[..., Awaitable[Any]]


async def client_for(start_keyrail: Start, blocks: str) -> openai.AsyncOpenAI:
    kr = await start_keyrail(f"api-keys: [client-key]\nkiro:\n{blocks}")
    return openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)


@pytest.fixture
async def one(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeKiro, Path]]:
    kiro, url = fake
    path = write_token(tmp_path / "kiro-auth-token.json", *kiro.issue("one"))
    client = await client_for(start_keyrail, block("kiro", path, url))
    yield client, kiro, path
    await client.close()
    assert kiro.problems == []


HI = [{"role": "user", "content": "hi"}]


async def test_text_stream(one: tuple[openai.AsyncOpenAI, FakeKiro, Path]) -> None:
    client, kiro, _ = one
    stream = await client.chat.completions.create(
        model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Kiro."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    # 12.5 % of a 200k window; marked as an estimate
    assert usage.prompt_tokens == 25_000 and usage.model_extra == {"estimated": True}
    assert len({c.id for c in chunks}) == 1
    seen = kiro.chats[-1]
    assert seen.current["modelId"] == "claude-sonnet-4.5"
    assert seen.current["content"] == "hi" and seen.current["origin"] == "AI_EDITOR"
    assert seen.body["profileArn"] == ARN
    assert seen.token == "at-one"


async def test_text_not_streamed_and_models(
    one: tuple[openai.AsyncOpenAI, FakeKiro, Path],
) -> None:
    client, _, _ = one
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    listed = sorted([m.id async for m in client.models.list()])
    assert "kiro-claude-sonnet-4-5" in listed and "kiro-claude-opus-4-6" in listed
    assert all(m.startswith("kiro-") for m in listed)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def tool_answer(seen: Seen) -> Answer:
    """First turn: text, then two tool uses; once results are back: a text answer."""
    context = seen.current.get("userInputMessageContext", {})
    if context.get("toolResults"):
        results = {r["toolUseId"]: r["content"][0]["text"] for r in context["toolResults"]}
        return Answer(frames=text_frames(f"Paris {results['tooluse_a']}, {results['tooluse_b']}"))
    frames = text_frames("Let me check.")[:1]
    a = tool_frames("tooluse_a", "get_weather", ['{"ci', 'ty":"Par', 'is"}'])
    b = tool_frames("tooluse_b", "get_weather", ['{"city":', '"Rome"}'])
    # interleaved: a's first piece, b's first piece, then the rest
    frames += [a[0], b[0], a[1], b[1], a[2], b[2], a[3], a[3]]  # a's stop repeated
    return Answer(frames=frames + text_frames()[-2:])


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_call_round_trip(
    one: tuple[openai.AsyncOpenAI, FakeKiro, Path], stream: bool
) -> None:
    client, kiro, _ = one
    kiro.script = tool_answer
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
    ]
    calls: dict[int, dict[str, str]] = {}
    if stream:
        finish = None
        async for chunk in await client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER], stream=True
        ):
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or []:
                    call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    if tc.id:
                        assert not call["id"], "id only on the first fragment"
                        call["id"], call["name"] = tc.id, tc.function.name
                    call["arguments"] += tc.function.arguments or ""
                finish = choice.finish_reason or finish
        assert finish == "tool_calls"
    else:
        reply = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER]
        )
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.content == "Let me check."
        for i, tc in enumerate(reply.choices[0].message.tool_calls or []):
            calls[i] = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert [calls[i]["id"] for i in sorted(calls)] == ["tooluse_a", "tooluse_b"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["arguments"]) == {"city": "Rome"}
    first = kiro.chats[-1]
    spec = first.current["userInputMessageContext"]["tools"][0]["toolSpecification"]
    assert spec["name"] == "get_weather" and spec["inputSchema"]["json"]["type"] == "object"
    assert first.current["content"].startswith("--- SYSTEM PROMPT ---\nBe brief.\n")

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls.values()
            ],
        }
    )  # fmt: skip
    messages.append({"role": "tool", "tool_call_id": "tooluse_a", "content": "22C"})
    messages.append({"role": "tool", "tool_call_id": "tooluse_b", "content": "25C"})
    reply = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "Paris 22C, 25C"
    second = kiro.chats[-1]
    assert [next(iter(h)) for h in second.history] == [
        "userInputMessage",
        "assistantResponseMessage",
    ]
    uses = second.history[1]["assistantResponseMessage"]["toolUses"]
    assert uses[0] == {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}
    results = second.current["userInputMessageContext"]["toolResults"]
    assert [r["toolUseId"] for r in results] == ["tooluse_a", "tooluse_b"]


async def test_refresh_before_expiry_written_back(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    path = write_token(tmp_path / "t.json", *kiro.issue("old"), expires_in=-60)
    kiro.access_tokens.discard("at-old")  # expired: the upstream would refuse it
    client = await client_for(start_keyrail, block("kiro", path, url))
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    assert [r["path"] for r in kiro.refreshes] == ["/refreshToken"]
    assert kiro.refreshes[0]["refreshToken"] == "rt-old"
    assert [c.token for c in kiro.chats] == ["at-refreshed-1"]
    doc = json.loads(path.read_text())
    assert doc["accessToken"] == "at-refreshed-1" and doc["refreshToken"] == "rt-refreshed-1"
    assert doc["expiresAt"].endswith("Z") and doc["provider"] == "Github"
    assert "access_token" not in doc  # the file's own spelling
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await client.close()
    assert kiro.problems == []


async def test_refresh_on_invalid_token_403(
    one: tuple[openai.AsyncOpenAI, FakeKiro, Path], log_text: Callable[[], str]
) -> None:
    client, kiro, path = one
    kiro.access_tokens.discard("at-one")  # revoked early, though not expired
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert [c.token for c in kiro.chats] == ["at-one", "at-refreshed-1"]
    assert len(kiro.refreshes) == 1
    assert json.loads(path.read_text())["refreshToken"] == "rt-refreshed-1"
    logs = log_text()
    for secret in ("at-one", "rt-one", "at-refreshed-1", "rt-refreshed-1"):
        assert secret not in logs


async def test_concurrent_rejections_share_one_refresh(
    one: tuple[openai.AsyncOpenAI, FakeKiro, Path],
) -> None:
    client, kiro, _ = one
    kiro.access_tokens.discard("at-one")
    kiro.refresh_gate = asyncio.Event()
    jobs = [
        asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HI))
        for _ in range(20)
    ]
    async with asyncio.timeout(10):
        await kiro.refresh_started.wait()
    kiro.refresh_gate.set()
    replies = await asyncio.gather(*jobs)
    assert all(r.choices[0].message.content == "Hello from Kiro." for r in replies)
    # the fake rotates refresh tokens: a second refresh with rt-one would have failed
    assert len(kiro.refreshes) == 1


async def test_concurrent_expiry_shares_one_refresh(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    path = write_token(tmp_path / "t.json", *kiro.issue("old"), expires_in=60)
    client = await client_for(start_keyrail, block("kiro", path, url))
    kiro.refresh_gate = asyncio.Event()
    jobs = [
        asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HI))
        for _ in range(20)
    ]
    async with asyncio.timeout(10):
        await kiro.refresh_started.wait()
    assert kiro.chats == []  # nobody went upstream with the expiring token
    kiro.refresh_gate.set()
    replies = await asyncio.gather(*jobs)
    assert len(replies) == 20 and len(kiro.refreshes) == 1
    assert {c.token for c in kiro.chats} == {"at-refreshed-1"}
    await client.close()


async def test_oidc_login_refreshes_at_token_endpoint_without_profile_arn(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    kiro.oidc_clients["client-1"] = "client-secret-1"
    access, refresh = kiro.issue("idc", social=False)
    kiro.access_tokens.discard(access)
    path = tmp_path / "snake.json"
    path.write_bytes(
        orjson.dumps(
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_at": "2020-01-01T00:00:00.000000000Z",
                "auth_method": "idc",
                "client_id": "client-1",
                "client_secret": "client-secret-1",
                "region": "eu-central-1",
            }
        )
    )
    path.chmod(0o644)  # too open: repaired
    client = await client_for(start_keyrail, block("kiro", path, url))
    reply = await client.chat.completions.create(model="kiro-claude-haiku-4-5", messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    assert kiro.refreshes[0]["path"] == "/token"
    assert kiro.refreshes[0]["grantType"] == "refresh_token"
    assert "profileArn" not in kiro.chats[-1].body
    doc = json.loads(path.read_text())
    assert doc["access_token"] == "at-refreshed-1" and "accessToken" not in doc
    assert doc["client_secret"] == "client-secret-1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await client.close()
    assert kiro.problems == []


async def test_throttling_moves_to_second_credential(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    a = write_token(tmp_path / "a.json", *kiro.issue("a"))
    b = write_token(tmp_path / "b.json", *kiro.issue("b"))
    throttled = {"message": "Rate exceeded", "reason": "USER_REQUEST_RATE_EXCEEDED"}
    kiro.script = lambda seen: (
        Answer(status=429, json=throttled, headers={"Retry-After": "60"})
        if seen.token == "at-a"
        else Answer()
    )
    client = await client_for(start_keyrail, block("kiro-a", a, url) + block("kiro-b", b, url))
    for _ in range(2):
        reply = await client.chat.completions.create(model=MODEL, messages=HI)
        assert reply.choices[0].message.content == "Hello from Kiro."
    # a answered 429 once and then cooled down; b served both requests
    assert [c.token for c in kiro.chats] == ["at-a", "at-b", "at-b"]
    await client.close()


async def test_throttling_frame_quota_and_suspension_fail_over(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    paths = [write_token(tmp_path / f"{n}.json", *kiro.issue(n)) for n in "abc"]
    throttle = eventstream.exception("ThrottlingException", b'{"message":"Too many requests"}')
    quota = {"message": "limit", "reason": "MONTHLY_REQUEST_COUNT"}
    suspended = {"message": "Account suspended", "reason": "TEMPORARILY_SUSPENDED"}
    by_token = {
        "at-a": Answer(frames=[throttle]),  # a 200 whose first frame is a throttling exception
        "at-b": Answer(status=402, json=quota),
        "at-c": Answer(status=403, json=suspended),
    }
    kiro.script = lambda seen: by_token.get(seen.token, Answer())
    blocks = "".join(block(f"kiro-{n}", p, url) for n, p in zip("abcd", paths, strict=False))
    d = write_token(tmp_path / "d.json", *kiro.issue("d"))
    kr = await start_keyrail(f"kiro:\n{blocks}{block('kiro-d', d, url)}")
    client = openai.AsyncOpenAI(base_url=kr.v1, api_key="none", max_retries=0)
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    # a cools down, b and c are disabled; d serves both requests
    tokens = [c.token for c in kiro.chats]
    assert sorted(tokens) == ["at-a", "at-b", "at-c", "at-d", "at-d"] and tokens[-1] == "at-d"
    assert kiro.refreshes == []  # quota and suspension are not token problems
    states = {v.provider: v.reason for v in kr.app[SCHEDULER].credential_views()}
    assert states == {"kiro-a": "quota", "kiro-b": "unauthorized", "kiro-c": "unauthorized",
                      "kiro-d": ""}  # fmt: skip
    await client.close()


async def test_invalid_request_goes_back_without_failover(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    a = write_token(tmp_path / "a.json", *kiro.issue("a"))
    b = write_token(tmp_path / "b.json", *kiro.issue("b"))
    bad = {"message": "Improperly formed request.", "reason": None}
    kiro.script = lambda seen: Answer(status=400, json=bad)
    client = await client_for(start_keyrail, block("kiro-a", a, url) + block("kiro-b", b, url))
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=HI)
    assert "Improperly formed request" in str(err.value)
    assert len(kiro.chats) == 1
    await client.close()


async def test_truncation_and_broken_streams(
    one: tuple[openai.AsyncOpenAI, FakeKiro, Path],
) -> None:
    client, kiro, _ = one
    cut = eventstream.exception("ContentLengthExceededException", b'{"message":"too long"}')
    kiro.script = lambda seen: Answer(frames=[*text_frames("Part")[:1], cut])
    reply = await client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "Part"

    # a corrupt frame after text: the client sees the text, then an in-band error
    good = text_frames("Good")[0]
    corrupt = bytearray(text_frames("bad")[0])
    corrupt[-1] ^= 0xFF
    kiro.script = lambda seen: Answer(frames=[good], tail=bytes(corrupt))
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as err:
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "Good" and "CRC" in str(err.value)

    # a connection dropped mid-frame
    kiro.script = lambda seen: Answer(frames=[good, good], cut_at=len(good) + 10)
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass

    # corruption before any text: an ordinary 502, as nothing reached the client (last, as
    # it cools the only credential)
    kiro.script = lambda seen: Answer(frames=[], tail=bytes(corrupt))
    with pytest.raises(openai.APIStatusError) as status_err:
        await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    assert status_err.value.status_code == 502


async def test_prefix_exclusions_and_aliases_apply(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path
) -> None:
    kiro, url = fake
    path = write_token(tmp_path / "t.json", *kiro.issue("p"))
    listed = block("kiro", path, url, '    prefix: k\n    excluded-models: ["*opus*"]\n')
    aliased = block(
        "kiro-alias",
        path,
        url,
        "    models:\n      - {name: kiro-claude-haiku-4-5, alias: quick}\n",
    )
    client = await client_for(start_keyrail, listed + aliased)
    ids = {m.id async for m in client.models.list()}
    assert {"k/kiro-claude-sonnet-4-5", "kiro-claude-sonnet-4-5", "quick"} <= ids
    assert not any("opus" in m for m in ids)
    reply = await client.chat.completions.create(model="quick", messages=HI)
    assert reply.choices[0].message.content == "Hello from Kiro."
    assert kiro.chats[-1].current["modelId"] == "claude-haiku-4.5"
    await client.close()


async def test_inline_tokens_live_in_memory(
    fake: tuple[FakeKiro, str], start_keyrail: Start, tmp_path: Path, log_text: Callable[[], str]
) -> None:
    kiro, url = fake
    access, refresh = kiro.issue("inline-1")
    blocks = (
        f"  - name: inl\n    access-token: {access}\n    refresh-token: {refresh}\n"
        f"    base-url: {url}\n    refresh-url: {url}\n"
    )
    kr = await start_keyrail(f"kiro:\n{blocks}")
    (cred,) = kr.app[LIVE].current.credentials["inl"]
    assert access not in cred.id and refresh not in cred.id and access not in repr(cred)
    client = openai.AsyncOpenAI(base_url=kr.v1, api_key="none", max_retries=0)
    for _ in range(2):
        reply = await client.chat.completions.create(model=MODEL, messages=HI)
        assert reply.choices[0].message.content == "Hello from Kiro."
    # no expiry is known for inline tokens: refreshed once on first use, kept in memory
    assert len(kiro.refreshes) == 1 and {c.token for c in kiro.chats} == {"at-refreshed-1"}
    assert os.listdir(tmp_path) == []
    assert refresh not in log_text() and "at-refreshed-1" not in log_text()
    await client.close()
