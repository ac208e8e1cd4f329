"""MiniMax and Roo through keyrail's other dialects: the official `anthropic` SDK on
`/v1/messages` (reasoning as `thinking` blocks, usage, typed errors, tool turns) and the
`openai` SDK on `/v1/responses` (reasoning items), streamed and not, against the fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest

from proxy.testing.grammar import Recorder, check_messages, sse_events
from tests.fake_minimax import USAGE, Answer, FakeMinimax, Seen
from tests.fake_roo import FakeRoo

Start = Callable[..., Awaitable[Any]]
HI = [{"role": "user", "content": "hi"}]
MODEL = "MiniMax-M2.7"


@pytest.fixture
async def fake(start_upstream_app: Callable[..., Awaitable[str]]) -> tuple[FakeMinimax, str]:
    mm = FakeMinimax()
    return mm, await start_upstream_app(mm.app)


@pytest.fixture
async def kr(fake: tuple[FakeMinimax, str], start_keyrail: Start) -> AsyncIterator[Any]:
    fake[0].keys = {"mm-key-1", "mm-key-2"}
    yield await start_keyrail(
        "api-keys: [client-key]\nrequest-retry: 0\nrouting: {strategy: fill-first}\nminimax:\n"
        f"  - base-url: {fake[1]}/v1\n    api-key: [mm-key-1, mm-key-2]\n    quota: false\n"
    )
    assert fake[0].problems == []


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def claude(kr: Any, recorder: Recorder) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=kr.url, api_key="client-key", max_retries=0, http_client=recorder.client()
    ) as client:
        yield client


@pytest.mark.parametrize("shape", ["details", "think", "mirror", "orphan"])
async def test_messages_create_has_thinking_text_and_usage(
    shape: str, fake: tuple[FakeMinimax, str], claude: anthropic.AsyncAnthropic
) -> None:
    fake[0].script = lambda _s: Answer(shape=shape)
    message = await claude.messages.create(model=MODEL, max_tokens=200, messages=HI)
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text"]
    assert message.content[0].thinking == "The user greets me; I greet back."  # type: ignore[union-attr]
    assert message.content[1].text == "Hello from MiniMax."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == USAGE["prompt_tokens"]
    assert message.usage.output_tokens == USAGE["completion_tokens"]


@pytest.mark.parametrize("shape", ["details", "think", "orphan"])
async def test_messages_stream_accumulates_thinking_and_text(
    shape: str,
    fake: tuple[FakeMinimax, str],
    claude: anthropic.AsyncAnthropic,
    recorder: Recorder,
) -> None:
    fake[0].script = lambda _s: Answer(shape=shape)
    async with claude.messages.stream(model=MODEL, max_tokens=200, messages=HI) as stream:
        thinking = "".join([e.thinking async for e in stream if e.type == "thinking"])
        final = await stream.get_final_message()
    assert thinking == "The user greets me; I greet back."
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == "Hello from MiniMax."  # type: ignore[union-attr]
    assert final.usage.output_tokens == USAGE["completion_tokens"]
    (raw,) = recorder.take()
    check_messages(sse_events(raw))  # the Messages event grammar, in order


WEATHER = [{"id": "call_function_abc_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip
TOOL = {"name": "get_weather", "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip


async def test_messages_tool_round_trip_replays_thinking_to_minimax(
    fake: tuple[FakeMinimax, str], claude: anthropic.AsyncAnthropic
) -> None:
    def script(seen: Seen) -> Answer:
        if any(m.get("role") == "tool" for m in seen.body["messages"]):
            return Answer(content="Sunny in Paris.")
        return Answer(content="", tool_calls=WEATHER, reasoning="I need the weather tool.")

    fake[0].script = script
    first = await claude.messages.create(model=MODEL, max_tokens=200, messages=HI, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.input == {"city": "Paris"}  # type: ignore[union-attr]
    history = [*HI, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,  # type: ignore[union-attr]
                                             "content": "sunny"}]}]  # fmt: skip
    second = await claude.messages.create(
        model=MODEL, max_tokens=200, messages=history, tools=[TOOL]
    )
    assert second.content[-1].text == "Sunny in Paris."  # type: ignore[union-attr]
    replayed = fake[0].seen[-1].body["messages"][1]
    assert replayed["reasoning_details"][0]["text"] == "I need the weather tool."


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_errors_are_typed(
    stream: bool, fake: tuple[FakeMinimax, str], claude: anthropic.AsyncAnthropic
) -> None:
    fake[0].script = lambda _s: Answer(error=1026)
    with pytest.raises(anthropic.BadRequestError):
        if stream:
            async with claude.messages.stream(model=MODEL, max_tokens=9, messages=HI) as s:
                await s.get_final_message()
        else:
            await claude.messages.create(model=MODEL, max_tokens=9, messages=HI)
    fake[0].script = lambda _s: Answer(error=1041)
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model=MODEL, max_tokens=9, messages=HI)


async def test_roo_sunset_in_the_anthropic_dialect(
    start_upstream_app: Callable[..., Awaitable[str]], start_keyrail: Start
) -> None:
    roo = FakeRoo(sunset=True)
    url = await start_upstream_app(roo.app)
    kr = await start_keyrail(
        f"api-keys: [client-key]\nroo:\n  - base-url: {url}/proxy\n    api-key: roo-a\n"
        "    models: [{name: claude-sonnet-4-5}]\n"
    )
    async with anthropic.AsyncAnthropic(base_url=kr.url, api_key="client-key",
                                        max_retries=0) as claude:  # fmt: skip
        for _ in range(2):
            with pytest.raises(anthropic.APIStatusError) as info:
                await claude.messages.create(model="claude-sonnet-4-5", max_tokens=9,
                                             messages=HI)  # fmt: skip
            assert info.value.status_code == 503
            assert "was shut down" in str(info.value)
    assert len(roo.seen) == 1


# -- OpenAI Responses ---------------------------------------------------------------------


@pytest.fixture
async def codex(kr: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0) as c:
        yield c


@pytest.mark.parametrize("shape", ["details", "think", "orphan"])
async def test_responses_have_a_reasoning_item_and_usage(
    shape: str, fake: tuple[FakeMinimax, str], codex: openai.AsyncOpenAI
) -> None:
    fake[0].script = lambda _s: Answer(shape=shape)
    response = await codex.responses.create(model=MODEL, input="hi", store=False)
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    assert response.output_text == "Hello from MiniMax."
    assert response.usage is not None and response.usage.output_tokens == USAGE["completion_tokens"]
    async with codex.responses.stream(model=MODEL, input="hi", store=False) as stream:
        events = [e.type async for e in stream]
        final = await stream.get_final_response()
    assert "response.completed" in events and final.output_text == "Hello from MiniMax."
    assert [item.type for item in final.output] == ["reasoning", "message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_roo_router_in_the_anthropic_dialect(
    stream: bool, start_upstream_app: Callable[..., Awaitable[str]], start_keyrail: Start
) -> None:
    roo = FakeRoo()
    url = await start_upstream_app(roo.app)
    kr = await start_keyrail(
        f"api-keys: [client-key]\nroo:\n  - base-url: {url}/proxy\n    api-key: roo-token\n"
        "    models: [{name: xai/grok-code-fast-1}]\n"
    )
    async with anthropic.AsyncAnthropic(
        base_url=kr.url, api_key="client-key", max_retries=0
    ) as claude:
        if stream:
            async with claude.messages.stream(
                model="xai/grok-code-fast-1", max_tokens=99, messages=HI
            ) as s:
                message = await s.get_final_message()
        else:
            message = await claude.messages.create(
                model="xai/grok-code-fast-1", max_tokens=99, messages=HI
            )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking."  # type: ignore[union-attr]
    assert message.content[1].text == "Hello from Roo."  # type: ignore[union-attr]
    assert message.usage.output_tokens == 300
    assert roo.problems == []
