"""The cursor driver through keyrail with the official `anthropic` SDK (`/v1/messages`),
against the fake Cursor over both transports; every stream the SDK read is checked against
the Messages event grammar."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import pytest

from drivers.cursor import auth
from proxy.testing.grammar import Recorder
from tests.fake_cursor import Env, block, new_key, running
from tests.test_messages_kiro import checked  # each stream read, checked against the grammar

Start = Callable[..., Awaitable[Any]]
KEY = "client-key"
MODEL = "claude-4.5-sonnet"
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TRANSPORTS = pytest.mark.parametrize("transport", ["h2", "sse"])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running() as started:
        yield started


async def client_for(
    start_keyrail: Start, blocks: str, recorder: Recorder, top: str = ""
) -> anthropic.AsyncAnthropic:
    kr = await start_keyrail(f"api-keys: [{KEY}]\n{top}cursor:\n{blocks}")
    return anthropic.AsyncAnthropic(
        base_url=kr.url, api_key=KEY, max_retries=0, http_client=recorder.client()
    )


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@TRANSPORTS
async def test_text_streamed_and_not(env: Env, start_keyrail: Start, transport: str) -> None:
    recorder = Recorder()
    c = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), recorder)
    reply = await c.messages.create(model=MODEL, max_tokens=50, system="Be brief.",
                                    messages=user("hi"))  # fmt: skip
    assert reply.content[0].type == "text" and reply.content[0].text == "Hello from Cursor."
    assert reply.stop_reason == "end_turn" and reply.usage.output_tokens == 7
    async with c.messages.stream(model=MODEL, max_tokens=50, messages=user("hi")) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello from Cursor." and final.content[0].type == "text"
    assert len(checked(recorder)) == 1
    assert env.fake.runs[0].replies[1] == "Be brief."
    await c.close()


@TRANSPORTS
async def test_reasoning_as_thinking_blocks(env: Env, start_keyrail: Start, transport: str) -> None:
    recorder = Recorder()
    c = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), recorder)
    async with c.messages.stream(model=MODEL, max_tokens=50, messages=user("think")) as stream:
        final = await stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    assert final.content[1].text == "Thought."  # type: ignore[union-attr]
    [events] = checked(recorder)
    assert any(data.get("delta", {}).get("type") == "thinking_delta" for _, data in events)
    await c.close()


@TRANSPORTS
async def test_tool_use_round_trip_on_the_same_stream(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    recorder = Recorder()
    c = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), recorder)
    messages = user("weather in Paris?")
    async with c.messages.stream(
        model=MODEL, max_tokens=50, messages=messages, tools=[TOOL]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    messages = [
        *messages,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]  # fmt: skip
    reply = await c.messages.create(model=MODEL, max_tokens=50, messages=messages, tools=[TOOL])
    assert reply.content[0].text == "Result: sunny."  # type: ignore[union-attr]
    assert len(env.fake.runs) == 1  # the parked stream went on
    assert env.fake.runs[0].tools == ["get_weather"]
    checked(recorder)
    await c.close()


@TRANSPORTS
async def test_heartbeat_only_pause_longer_than_idle_timeout(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    env.fake.pause_seconds = 1.0
    recorder = Recorder()
    top = "timeouts:\n  idle-seconds: 0.4\n"
    c = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), recorder, top)
    async with c.messages.stream(model=MODEL, max_tokens=50, messages=user("pause")) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "before after"
    [events] = checked(recorder)
    assert ("ping", {"type": "ping"}) in events  # Cursor's heartbeats, as Messages pings
    await c.close()


@TRANSPORTS
async def test_resource_exhausted_moves_to_the_second_credential(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    first, second = new_key(env.fake, "a"), new_key(env.fake, "b")
    env.fake.exhausted_keys.add(first)
    recorder = Recorder()
    top = "max-retry-interval: 1\n"
    c = await client_for(start_keyrail, block(env, transport, [first, second]), recorder, top)
    for _ in range(2):
        reply = await c.messages.create(model=MODEL, max_tokens=50, messages=user("quota"))
        assert reply.content[0].text == "Hello from Cursor."  # type: ignore[union-attr]
    served = [env.fake.valid[r.bearer] for r in env.fake.runs]
    assert served.count(second) == 2 and served.count(first) == 1
    env.fake.exhausted_keys.add(second)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await c.messages.create(model=MODEL, max_tokens=50, messages=user("quota"))
    assert int(caught.value.response.headers["retry-after"]) >= 1
    await c.close()


async def test_expired_token_is_exchanged_once_for_20_concurrent_requests(
    env: Env, start_keyrail: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    c = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]), recorder)
    await c.messages.create(model=MODEL, max_tokens=50, messages=user("hi"))
    later = time.time() + 3600
    monkeypatch.setattr(auth.key_tokens(), "clock", lambda: later)
    env.fake.exchange_gate = asyncio.Event()
    calls = [
        asyncio.ensure_future(c.messages.create(model=MODEL, max_tokens=50, messages=user("hi")))
        for _ in range(20)
    ]
    for _ in range(200):
        if env.fake.exchange_arrivals == 2:
            break
        await asyncio.sleep(0.01)  # bounded wait for the exchange to arrive
    env.fake.exchange_gate.set()
    replies = await asyncio.gather(*calls)
    assert all(r.content[0].text == "Hello from Cursor." for r in replies)  # type: ignore[union-attr]
    assert env.fake.exchanges == 2
    assert len({r.bearer for r in env.fake.runs[1:]}) == 1
    await c.close()


@TRANSPORTS
async def test_client_disconnect_resets_the_stream(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    recorder = Recorder()
    c = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]), recorder)
    async with c.messages.stream(model=MODEL, max_tokens=50, messages=user("hang")) as stream:
        async for text in stream.text_stream:
            if text:
                break  # leaving the block closes the response mid-turn
    async with asyncio.timeout(5):
        await env.fake.reset_seen.wait()
    assert env.fake.resets == 1
    await c.close()
