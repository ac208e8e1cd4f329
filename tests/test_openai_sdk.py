"""The official `openai` package, pointed at keyrail, works as against OpenAI."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes import Script

CONFIG = """
api-keys: [client-key-1]
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries:
      - api-key: upstream-secret-1
    models:
      - name: gpt-4o-mini
        alias: fast
"""


@pytest.fixture
async def client(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(url=url))
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key-1", max_retries=0) as c:
        yield c, fake


async def test_chat_non_streaming(client):
    c, fake = client
    reply = await c.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert reply.usage is not None and reply.usage.total_tokens == 18
    # model rewritten to the upstream name; client key replaced by the upstream key
    assert fake.seen[-1].body["model"] == "gpt-4o-mini"
    assert fake.seen[-1].headers["Authorization"] == "Bearer upstream-secret-1"


async def test_chat_streaming_text(client):
    c, fake = client
    stream = await c.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text.strip() == "Hello from the fake upstream."
    # usage was requested upstream (to count tokens) but hidden from this client
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}


async def test_streaming_usage_kept_when_asked(client):
    c, _ = client
    stream = await c.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [ch async for ch in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    },
    {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
    },
]


async def test_tool_calls_streamed_and_not(client):
    c, fake = client
    fake.script = lambda seen: Script(tool_calls=TOOL_CALLS)
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    reply = await c.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "weather?"}], tools=tools
    )
    calls = reply.choices[0].message.tool_calls
    assert [tc.function.name for tc in calls] == ["get_weather", "get_time"]
    assert fake.seen[-1].body["tools"] == tools  # passed through untouched

    stream = await c.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    async for ch in stream:
        for choice in ch.choices:
            for tc in choice.delta.tool_calls or []:
                args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
                if tc.function.name:
                    names[tc.index] = tc.function.name
            finish = choice.finish_reason or finish
    assert names == {0: "get_weather", 1: "get_time"}
    assert json.loads(args[0]) == {"city": "Paris"} and json.loads(args[1]) == {"tz": "CET"}
    assert finish == "tool_calls"


async def test_models_listed(client):
    c, _ = client
    models = [m.id async for m in c.models.list()]
    assert models == ["fast"]
    one = await c.models.retrieve("fast")
    assert one.owned_by == "fakeco"


async def test_typed_exceptions(client, start_keyrail):
    c, fake = client
    with pytest.raises(openai.NotFoundError) as nf:
        await c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.create(model="", messages=[])
    bad = openai.AsyncOpenAI(base_url=str(c.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ae:
        await bad.models.list()
    assert ae.value.code == "invalid_api_key"
    await bad.close()
    fake.script = lambda seen: Script(status=429, headers={"Retry-After": "120"})
    with pytest.raises(openai.RateLimitError) as rl:
        await c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    assert int(rl.value.response.headers["Retry-After"]) >= 1


async def test_embeddings(client):
    c, _ = client
    out = await c.embeddings.create(model="fast", input="hello")
    assert out.data[0].embedding == [0.1, 0.2, 0.3]
