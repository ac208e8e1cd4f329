"""The minimax driver through keyrail, with the official `openai` SDK as client, against the
fake MiniMax on 127.0.0.1 (tests/fake_minimax.py): reasoning separated in every shape MiniMax
sends it, usage present, the 200-with-error table cooling or rejecting as its code says,
streamed and not, the Coding Plan quota in metrics, OAuth token files refreshed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy import quota
from proxy.keys import LIVE, QUOTAS, SCHEDULER
from proxy.tokens import format_expiry
from tests.fake_minimax import USAGE, Answer, FakeMinimax, Seen

Start = Callable[..., Awaitable[Any]]
HI = [{"role": "user", "content": "hi"}]
MODEL = "MiniMax-M2.7"


@pytest.fixture
async def fake(start_upstream_app: Callable[..., Awaitable[str]]) -> tuple[FakeMinimax, str]:
    mm = FakeMinimax()
    return mm, await start_upstream_app(mm.app)


async def keyrail_for(start_keyrail: Start, url: str, extra: str = "") -> Any:
    return await start_keyrail(
        "api-keys: [client-key]\nminimax:\n"
        f"  - base-url: {url}/v1\n    api-key: mm-key-1\n    quota: false\n{extra}"
    )


@pytest.fixture
async def client(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> AsyncIterator[openai.AsyncOpenAI]:
    kr = await keyrail_for(start_keyrail, fake[1])
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        yield c
    assert fake[0].problems == []


async def streamed(client: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=kwargs.pop("messages", HI), stream=True,
        stream_options={"include_usage": True}, **kwargs,
    )  # fmt: skip
    return [c async for c in stream]


def texts(chunks: list[Any]) -> tuple[str, str]:
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    return reasoning, content


@pytest.mark.parametrize("shape", ["details", "think", "mirror", "orphan"])
async def test_reasoning_separated_in_every_shape_streamed(
    shape: str, fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    fake[0].script = lambda _s: Answer(shape=shape)
    chunks = await streamed(client)
    reasoning, content = texts(chunks)
    assert content == "Hello from MiniMax."
    assert reasoning == ("" if shape == "orphan_none" else "The user greets me; I greet back.")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == USAGE["total_tokens"]
    assert sum(c.usage is not None for c in chunks) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize("shape", ["details", "think", "mirror", "orphan"])
async def test_reasoning_separated_in_every_shape_not_streamed(
    shape: str, fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    fake[0].script = lambda _s: Answer(shape=shape)
    reply = await client.chat.completions.create(model="minimax-m2.7", messages=HI)
    message = reply.choices[0].message
    assert message.content == "Hello from MiniMax."
    assert (message.model_extra or {}).get("reasoning_content") == (
        "The user greets me; I greet back."
    )
    assert reply.usage is not None and reply.usage.total_tokens == USAGE["total_tokens"]
    assert "base_resp" not in (reply.model_extra or {})
    assert fake[0].seen[-1].body["model"] == "MiniMax-M2.7"  # the documented spelling


async def test_stream_without_a_final_frame_still_ends_properly(
    fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    fake[0].script = lambda _s: Answer(final_frame=False)
    chunks = await streamed(client)
    assert texts(chunks)[1] == "Hello from MiniMax."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


WEATHER = [{"id": "call_function_abc_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": CITY}}
]


async def test_tool_turn_replays_reasoning_even_when_the_client_drops_it(
    fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    def script(seen: Seen) -> Answer:
        if any(m.get("role") == "tool" for m in seen.body["messages"]):
            return Answer(content="It is sunny in Paris.")
        return Answer(content="", tool_calls=WEATHER, reasoning="I need the weather tool.")

    fake[0].script = script
    chunks = await streamed(
        client, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False, max_tokens=300,
        temperature=0, reasoning_effort="high",
    )  # fmt: skip
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "call_function_abc_1" and calls[0].function is not None
    arguments = "".join(t.function.arguments or "" for t in calls if t.function)
    assert orjson.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The next turn, as most clients send it: the assistant's tool call without its reasoning.
    result = {"role": "tool", "tool_call_id": "call_function_abc_1", "content": "sunny"}
    history = [*HI, {"role": "assistant", "content": None, "tool_calls": WEATHER}, result]
    reply = await client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert reply.choices[0].message.content == "It is sunny in Paris."
    sent = fake[0].seen[-1].body["messages"][1]
    assert sent["reasoning_details"] == [
        {"type": "reasoning.text", "text": "I need the weather tool."}
    ]
    first = fake[0].seen[0].body
    assert first["max_completion_tokens"] == 300 and first["temperature"] == 0.01


async def test_temperature_out_of_range_is_a_clear_400(
    fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=HI, temperature=1.7)
    assert "between 0 and 1" in str(info.value)
    assert fake[0].seen == []  # never sent


# -- errors inside a 200 ------------------------------------------------------------------


async def two_keys(fake: tuple[FakeMinimax, str], start_keyrail: Start) -> Any:
    fake[0].keys = {"mm-key-1", "mm-key-2"}
    return await start_keyrail(  # no waiting for a cooldown to end: one pass per request
        "api-keys: [client-key]\nrequest-retry: 0\nrouting: {strategy: fill-first}\nminimax:\n"
        f"  - base-url: {fake[1]}/v1\n    api-key: [mm-key-1, mm-key-2]\n    quota: false\n"
    )


def states(kr: Any) -> dict[str, tuple[str, str]]:
    return {v.id: (v.state, v.reason) for v in kr.app[SCHEDULER].credential_views()}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("code", "state"),
    [(1039, ("cooling_down", "quota")), (1041, ("cooling_down", "quota")),
     (2045, ("cooling_down", "quota")), (2056, ("cooling_down", "quota")),
     (2049, ("disabled", "unauthorized"))],
)  # fmt: skip
async def test_200_with_error_cools_or_disables_and_fails_over(
    code: int,
    state: tuple[str, str],
    stream: bool,
    fake: tuple[FakeMinimax, str],
    start_keyrail: Start,
) -> None:
    fake[0].script = lambda s: Answer(error=code) if s.key == "mm-key-1" else Answer()
    kr = await two_keys(fake, start_keyrail)
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        if stream:
            assert texts(await streamed(c))[1] == "Hello from MiniMax."
        else:
            reply = await c.chat.completions.create(model=MODEL, messages=HI)
            assert reply.choices[0].message.content == "Hello from MiniMax."
    assert [s.key for s in fake[0].seen] == ["mm-key-1", "mm-key-2"]
    first, second = sorted(states(kr).items(), key=lambda kv: kv[0] != _id(kr, "mm-key-1"))
    assert first[1] == state and second[1] == ("ready", "")


def _id(kr: Any, key: str) -> str:
    import hashlib

    return f"minimax/{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("code", [1026, 1027, 1042])
async def test_content_errors_are_400_and_cool_nothing(
    code: int, stream: bool, fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    fake[0].script = lambda _s: Answer(error=code)
    kr = await two_keys(fake, start_keyrail)
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            if stream:
                await streamed(c)
            else:
                await c.chat.completions.create(model=MODEL, messages=HI)
    assert str(code) in str(info.value)
    assert len(fake[0].seen) == 1  # not rotated
    assert all(s == ("ready", "") for s in states(kr).values())


async def test_error_envelope_on_http_400_is_the_clients(
    fake: tuple[FakeMinimax, str], client: openai.AsyncOpenAI
) -> None:
    fake[0].script = lambda _s: Answer(http=400, http_code=2013)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=HI)
    assert "2013" in str(info.value)


async def test_every_key_failing_is_never_a_success(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    fake[0].script = lambda _s: Answer(error=1041)
    kr = await two_keys(fake, start_keyrail)
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        with pytest.raises(openai.RateLimitError):
            await streamed(c)
        with pytest.raises(openai.RateLimitError):  # both cooling now: nothing is tried
            await c.chat.completions.create(model=MODEL, messages=HI)
    assert len(fake[0].seen) == 2


async def test_an_error_after_content_ends_the_stream_and_still_cools(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    kr = await keyrail_for(start_keyrail, fake[1])
    client = openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)
    seen_content = asyncio.Event()
    fake[0].script = lambda _s: Answer(
        error=1039, error_after_content=True, shape="none", release=seen_content
    )
    stream = await client.chat.completions.create(model=MODEL, messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if text:
                seen_content.set()
    assert "1039" in str(info.value) and text.startswith("Hello")
    assert len(fake[0].seen) == 1
    await client.close()
    # decided when the relay ends, which may be just after the client read the error event
    await wait_for(lambda: list(states(kr).values()) == [("cooling_down", "quota")])


async def test_bad_key_is_upstream_auth_failed(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    """MiniMax refusing keyrail's key is not the app's 401: 502 upstream_auth_failed."""
    fake[0].keys = {"another"}
    kr = await keyrail_for(start_keyrail, fake[1])
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model=MODEL, messages=HI)
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_failed"


# -- quota --------------------------------------------------------------------------------


def remains(remaining: int, ends_in: float) -> list[dict[str, Any]]:
    now = time.time()
    start, end = int((now - 60) * 1000), int((now + ends_in) * 1000)
    return [{"model_name": "MiniMax-M2", "current_interval_total_count": 1500,
             "current_interval_usage_count": remaining, "start_time": start, "end_time": end,
             "remains_time": int(ends_in * 1000)}]  # fmt: skip


async def wait_for(condition: Callable[[], bool]) -> None:
    """Let the loop run what is ready (a handler finishing, a reading landing), bounded."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def reading(kr: Any, credential_id: str) -> quota.Reading:
    quotas = kr.app[QUOTAS]
    async with asyncio.timeout(10):
        while (found := quotas.get(credential_id)) is None:
            quotas.changed.clear()
            await quotas.changed.wait()
    return found  # type: ignore[no-any-return]


async def test_quota_in_metrics_and_a_spent_credential_skipped_until_reset(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    mm, url = fake
    mm.keys = {"mm-key-1", "mm-key-2"}
    mm.quotas = {"mm-key-1": remains(0, 7200), "mm-key-2": remains(900, 3600)}
    kr = await start_keyrail(
        "api-keys: [client-key]\nrouting: {strategy: fill-first}\nminimax:\n"
        f"  - base-url: {url}/v1\n    api-key: [mm-key-1, mm-key-2]\n"
    )
    spent, fine = _id(kr, "mm-key-1"), _id(kr, "mm-key-2")
    assert (await reading(kr, spent)).quota.spent  # type: ignore[union-attr]
    await reading(kr, fine)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{kr.url}/v1/metrics/providers") as r:
            shown = (await r.json())["minimax"]["quota"]
        async with http.get(f"{kr.url}/metrics") as r:
            prometheus = await r.text()
    assert shown[spent]["remaining"] == 0 and shown[spent]["limit"] == 1500
    assert shown[fine]["used"] == 600 and shown[fine]["remaining"] == 900  # the count quirk
    assert shown[fine]["unit"] == "prompts" and shown[fine]["resets_at"] is not None
    assert f'keyrail_quota_limit{{credential="{spent}",provider="minimax"}} 1500.0' in prometheus
    view = {v.id: v for v in kr.app[SCHEDULER].credential_views()}[spent]
    assert view.state == "disabled" and view.reason == "quota"
    assert view.until is not None and abs(view.until - (time.time() + 7200)) < 60
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        await c.chat.completions.create(model=MODEL, messages=HI)
    assert [s.key for s in mm.seen] == ["mm-key-2"]  # the spent key is not even tried
    # at most one reading per interval per credential
    assert await quota.read_due(kr.app[LIVE].current, kr.app[QUOTAS], kr.app[SCHEDULER]) == 0
    assert sorted(mm.quota_calls) == ["mm-key-1", "mm-key-2"]


async def test_2056_cools_until_the_window_the_last_reading_knows(
    fake: tuple[FakeMinimax, str], start_keyrail: Start
) -> None:
    mm, url = fake
    mm.keys = {"mm-key-1", "mm-key-2"}
    mm.quotas = {"mm-key-1": remains(5, 3000), "mm-key-2": remains(900, 3600)}
    mm.script = lambda s: Answer(error=2056) if s.key == "mm-key-1" else Answer()
    kr = await start_keyrail(
        "api-keys: [client-key]\nrouting: {strategy: fill-first}\nmax-cooldown-seconds: 7200\n"
        f"minimax:\n  - base-url: {url}/v1\n    api-key: [mm-key-1, mm-key-2]\n"
    )
    await reading(kr, _id(kr, "mm-key-1"))  # not spent yet: 5 left
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        reply = await c.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from MiniMax."
    assert [s.key for s in mm.seen] == ["mm-key-1", "mm-key-2"]
    view = {v.id: v for v in kr.app[SCHEDULER].credential_views()}[_id(kr, "mm-key-1")]
    assert (view.state, view.reason) == ("cooling_down", "quota")
    assert view.until is not None and abs(view.until - (time.time() + 3000)) < 60


# -- OAuth token file ---------------------------------------------------------------------


async def test_token_file_refreshed_through_the_token_store(
    fake: tuple[FakeMinimax, str], start_keyrail: Start, tmp_path: Path
) -> None:
    mm, url = fake
    path = tmp_path / "oauth-token.json"
    path.write_bytes(orjson.dumps({"access_token": "mm-old", "refresh_token": "mm-refresh-0",
                                   "expires_at": format_expiry(time.time() - 60),
                                   "region": "global"}))  # fmt: skip
    path.chmod(0o600)
    kr = await start_keyrail(
        "api-keys: [client-key]\nminimax:\n"
        f"  - base-url: {url}/v1\n    refresh-url: {url}\n    token-file: {path}\n"
        "    quota: false\n"
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        reply = await c.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from MiniMax."
    assert mm.refreshes[0]["refresh_token"] == "mm-refresh-0"
    assert mm.seen[-1].key == "mm-oauth-1"
    saved = orjson.loads(path.read_bytes())
    assert saved["access_token"] == "mm-oauth-1" and saved["refresh_token"] == "mm-refresh-1"
    assert path.stat().st_mode & 0o777 == 0o600


async def test_api_key_file_as_cliproxyapi_writes_it(
    fake: tuple[FakeMinimax, str], start_keyrail: Start, tmp_path: Path
) -> None:
    mm, url = fake
    path = tmp_path / "minimax-api-key.json"
    path.write_bytes(orjson.dumps({"api_key": "mm-key-1"}))
    path.chmod(0o600)
    kr = await start_keyrail(
        f"minimax:\n  - base-url: {url}/v1\n    token-file: {path}\n    quota: false\n"
    )
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="unused", max_retries=0) as c:
        reply = await c.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == "Hello from MiniMax."
    assert mm.seen[-1].key == "mm-key-1" and mm.refreshes == []
