"""What Cursor's server does mid-turn beyond text and tool calls, against the fake Cursor over
both transports: an `interaction_query` (ignored, as the notes' clients do, even when it shares
one message with a text update) and a stream that goes silent (no frame at all, not even a
heartbeat) for the silence limit: the turn is aborted and the stream reset; a client tool call
Cursor withdraws (`exec_server_control_message` abort) is not answered when the client's
result comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from tests.fake_cursor import Env, block, new_key, running

Start = Callable[..., Awaitable[Any]]
TRANSPORTS = pytest.mark.parametrize("transport", ["h2", "sse"])
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running() as started:
        yield started


async def client_for(start_keyrail: Start, blocks: str) -> openai.AsyncOpenAI:
    kr = await start_keyrail(f"api-keys: [client-key]\ncursor:\n{blocks}")
    return openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)


@TRANSPORTS
async def test_interaction_query_is_ignored_and_the_text_beside_it_kept(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    client = await client_for(start_keyrail, block(env, transport, [new_key(env.fake)]))
    answer = await client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "query the web"}]
    )
    assert answer.choices[0].message.content == "No search, answered anyway."
    assert answer.choices[0].finish_reason == "stop"
    await client.close()


@TRANSPORTS
async def test_a_silent_stream_is_aborted_after_the_silence_limit(
    env: Env, start_keyrail: Start, transport: str
) -> None:
    blocks = block(env, transport, [new_key(env.fake)], "    silence-seconds: 0.3\n")
    client = await client_for(start_keyrail, blocks)
    stream = await client.chat.completions.create(
        model="gpt-5.5", messages=[{"role": "user", "content": "hang"}], stream=True
    )
    seen = ""
    with pytest.raises(openai.APIError):  # the stream ends in an error event, not a stop
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += chunk.choices[0].delta.content
    assert seen == "start"
    async with asyncio.timeout(5):  # the fake holds the stream open for 10 s otherwise
        await env.fake.reset_seen.wait()
    assert env.fake.resets == 1
    await client.close()


async def test_a_withdrawn_tool_call_is_not_answered(env: Env, start_keyrail: Start) -> None:
    client = await client_for(start_keyrail, block(env, "h2", [new_key(env.fake)]))
    messages: list[Any] = [{"role": "user", "content": "withdraw it"}]
    first = await client.chat.completions.create(
        model="gpt-5.5", messages=messages, tools=[WEATHER_TOOL]
    )
    calls = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls" and calls[0].id == "call_withdrawn"
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_withdrawn", "content": "sunny"},
    ]
    second = await client.chat.completions.create(
        model="gpt-5.5", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "Never mind the tool."
    assert len(env.fake.runs) == 1  # the parked turn went on; no new turn was opened
    async with asyncio.timeout(5):  # the fake reads the stream until the driver closes it
        await env.fake.turn_done.wait()
    await client.close()
