"""The official `anthropic` package through keyrail's `/v1/messages`, served by an
openai-compatibility upstream (chat on the wire): text, tools, thinking, images, count_tokens,
typed errors; every stream checked against the Messages grammar."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from proxy.testing.grammar import Recorder, check_messages, sse_events
from tests.fakes import Script, chunk

CONFIG = """
api-keys: [client-key-1]
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries:
      - api-key: upstream-secret-1
    models:
      - name: gpt-4o-mini
        alias: claude-sonnet-4-5
"""
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5Er"
    "kJggg=="
)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


class Bench:
    def __init__(self, kr: Any, fake: Any) -> None:
        self.fake = fake
        self.recorder = Recorder()
        self.client = anthropic.AsyncAnthropic(
            base_url=kr.url,
            api_key="client-key-1",
            max_retries=0,
            http_client=self.recorder.client(),
        )
        self.url = kr.url

    def streams(self) -> list[list[tuple[str, Any]]]:
        """Every stream the SDK read since the last call, each checked against the grammar."""
        out = []
        for raw in self.recorder.take():
            events = sse_events(raw)
            check_messages(events)
            out.append(events)
        return out


@pytest.fixture
async def bench(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(url=url))
    b = Bench(kr, fake)
    yield b
    await b.client.close()


async def test_create_text(bench):
    message = await bench.client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)
    sent = bench.fake.seen[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert sent.body["max_tokens"] == 100 and sent.body["stop"] == ["END"]
    assert sent.headers["Authorization"] == "Bearer upstream-secret-1"


async def test_stream_text_with_the_sdk_accumulator(bench):
    async with bench.client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text.strip() == "Hello from the fake upstream."
    assert final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7 and final.usage.input_tokens == 11
    [events] = bench.streams()
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0  # the estimate, before usage
    assert bench.fake.seen[-1].body["stream_options"] == {"include_usage": True}


async def test_tool_use_round_trip(bench):
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip
    bench.fake.script = lambda seen: Script(tool_calls=calls)
    async with bench.client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=100,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    [events] = bench.streams()
    assert [e for e, _ in events if e == "content_block_delta"]  # arguments came in pieces
    use = final.content[0]
    assert use.type == "tool_use" and use.id == "call_1" and use.name == "get_weather"
    assert use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    sent = bench.fake.seen[-1].body
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent["tool_choice"] == "required"

    bench.fake.script = lambda seen: Script(text="It is sunny.")
    reply = await bench.client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny",
                 "is_error": False, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Thanks"},
            ]},
        ],
    )  # fmt: skip
    assert reply.content[0].text == "It is sunny."
    sent = bench.fake.seen[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert sent[3] == {"role": "user", "content": "Thanks"}


def _thinking_stream(seen: Any) -> Script:
    model = "gpt-4o-mini"
    chunks = [
        chunk(model, {"role": "assistant", "content": ""}),
        chunk(model, {"reasoning_content": "Let me "}),
        chunk(model, {"reasoning_content": "think."}),
        chunk(model, {"content": "42"}),
        chunk(model, {}, "stop"),
        b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29,'
        b'"prompt_tokens_details":{"cached_tokens":5}}}\n\n',
        b"data: [DONE]\n\n",
    ]
    return Script(chunks=chunks)


async def test_thinking_both_ways(bench):
    bench.fake.script = _thinking_stream
    async with bench.client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "The answer?"}],
    ) as stream:
        final = await stream.get_final_message()
    [events] = bench.streams()
    kinds = [d["delta"]["type"] for e, d in events if e == "content_block_delta"]
    assert kinds == ["thinking_delta", "thinking_delta", "text_delta"]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think." and final.content[1].text == "42"
    # cached tokens are not input tokens in Anthropic's spelling
    assert final.usage.input_tokens == 15 and final.usage.cache_read_input_tokens == 5
    assert bench.fake.seen[-1].body["reasoning_effort"] == "low"
    # the thinking block goes back as reasoning_content on the next turn
    bench.fake.script = lambda seen: Script()
    await bench.client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "The answer?"},
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {"role": "user", "content": "Why?"},
        ],
    )
    assistant = bench.fake.seen[-1].body["messages"][1]
    assert assistant["reasoning_content"] == "Let me think." and assistant["content"] == "42"


async def test_images(bench):
    await bench.client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "text", "text": "What is this?"},
        ]}],
    )  # fmt: skip
    content = bench.fake.seen[-1].body["messages"][0]["content"]
    assert content[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert content[1] == {"type": "text", "text": "What is this?"}


async def test_count_tokens(bench):
    count = await bench.client.messages.count_tokens(
        model="claude-sonnet-4-5",
        system="Be brief.",
        tools=[WEATHER],
        messages=[{"role": "user", "content": "x" * 400}],
    )
    assert 100 <= count.input_tokens <= 200  # characters / 4
    with pytest.raises(anthropic.NotFoundError):
        await bench.client.messages.count_tokens(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert not bench.fake.seen  # counted locally


async def test_typed_errors(bench):
    c = bench.client
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as nf:
        await c.messages.create(model="nope", max_tokens=10, messages=hi)
    assert nf.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as br:
        await c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages="hi")
    assert br.value.body["error"]["type"] == "invalid_request_error"
    wrong = anthropic.AsyncAnthropic(base_url=bench.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ae:
        await wrong.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=hi)
    await wrong.close()
    assert ae.value.body["error"]["type"] == "authentication_error"
    bench.fake.script = lambda seen: Script(status=429, headers={"Retry-After": "120"})
    with pytest.raises(anthropic.RateLimitError) as rl:
        await c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=hi)
    assert int(rl.value.response.headers["retry-after"]) >= 1
    assert rl.value.body["error"]["type"] == "rate_limit_error"
    # the pool is cooling now: nothing tried, still a typed 429 with retry-after
    with pytest.raises(anthropic.RateLimitError) as cooling:
        await c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=hi)
    assert int(cooling.value.response.headers["retry-after"]) >= 1


async def test_bearer_token_like_claude_code(bench):
    token = anthropic.AsyncAnthropic(
        base_url=bench.url, auth_token="client-key-1", max_retries=0
    )  # what ANTHROPIC_AUTH_TOKEN does: Authorization: Bearer
    reply = await token.messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    await token.close()
    assert reply.content[0].text


async def test_error_mid_stream_is_an_error_event(bench):
    bench.fake.script = lambda seen: Script(break_after=3)
    with pytest.raises(anthropic.APIStatusError):
        async with bench.client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for _ in stream:
                pass
    [events] = bench.streams()
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error")


async def test_models_in_anthropic_shape(bench):
    page = await bench.client.models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-5"]
    assert page.data[0].type == "model"


async def test_ping_events_fill_upstream_silence(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(url=url) + "streaming:\n  keepalive-seconds: 0.05\n")
    fake.script = lambda seen: Script(text="slow words here", gap=0.3)  # the upstream pauses
    recorder = Recorder()
    async with (
        anthropic.AsyncAnthropic(
            base_url=kr.url, api_key="client-key-1", max_retries=0, http_client=recorder.client()
        ) as c,
        c.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.content[0].text.strip() == "slow words here"
    [raw] = recorder.take()
    assert b": keepalive" not in raw  # Messages clients get pings, not SSE comments
    events = sse_events(raw)
    check_messages(events)
    assert "ping" in [name for name, _ in events]


async def test_an_upstream_that_stops_early_is_not_a_finished_message(bench):
    model = "gpt-4o-mini"
    cut = [chunk(model, {"role": "assistant", "content": ""}), chunk(model, {"content": "Hal"})]
    bench.fake.script = lambda seen: Script(chunks=cut)  # no finish reason, no [DONE]
    with pytest.raises(anthropic.APIStatusError):
        async with bench.client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for _ in stream:
                pass
    [events] = bench.streams()
    assert events[-1][0] == "error" and "message_stop" not in [e for e, _ in events]
    assert "without [DONE]" in events[-1][1]["error"]["message"]
