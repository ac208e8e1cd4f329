"""Anthropic Messages through the kiro driver (a translating driver: neutral request in,
neutral events out), with the official `anthropic` package against the fake Kiro; and Claude
Code's captured requests replayed byte for byte against Kiro and an OpenAI-chat upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp.test_utils import TestServer

from drivers.kiro import eventstream, models
from proxy.testing.grammar import Recorder, check_messages, sse_events
from tests.fake_kiro import Answer, FakeKiro, text_frames, tool_frames
from tests.test_kiro import block, write_token

CAPTURES = Path(__file__).parent / "captures"
CLIENT_KEY = "kr-client-key-0123456789"  # the (made-up) key the captures were recorded with
MODEL = "claude-opus-4-7"


@pytest.fixture
async def kiro(tmp_path: Path, start_keyrail: Any) -> AsyncIterator[tuple[Any, FakeKiro, Recorder]]:
    fake = FakeKiro()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    path = write_token(tmp_path / "kiro-auth-token.json", *fake.issue("one"))
    models = (
        "    models: [{name: claude-opus-4.6, alias: claude-opus-4-7},"
        " {name: claude-sonnet-4.5, alias: claude-sonnet-4-5}]\n"
    )
    kr = await start_keyrail(f"api-keys: [{CLIENT_KEY}]\nkiro:\n{block('kiro', path, url, models)}")
    recorder = Recorder()
    yield kr, fake, recorder
    await server.close()
    assert fake.problems == []


def client(kr: Any, recorder: Recorder) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=kr.url, api_key=CLIENT_KEY, max_retries=0, http_client=recorder.client()
    )


def checked(recorder: Recorder) -> list[list[tuple[str, Any]]]:
    out = []
    for raw in recorder.take():
        events = sse_events(raw)
        check_messages(events)
        out.append(events)
    return out


async def test_text_streamed_and_not(kiro):
    kr, fake, recorder = kiro
    async with client(kr, recorder) as c:
        reply = await c.messages.create(
            model=MODEL, max_tokens=50, system="Be brief.",
            messages=[{"role": "user", "content": "hi"}],
        )  # fmt: skip
        assert reply.content[0].text == "Hello from Kiro." and reply.stop_reason == "end_turn"
        # Kiro's estimate: 12.5 % (the fake's contextUsagePercentage) of the model's window
        assert reply.usage.input_tokens == models.context_window("claude-opus-4.6") // 8
        async with c.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "Hello from Kiro." and final.content[0].text == text
    assert len(checked(recorder)) == 1
    current = fake.chats[0].current
    assert current["modelId"] == "claude-opus-4.6"
    assert "Be brief." in current["content"]


async def test_tool_use_round_trip(kiro):
    kr, fake, recorder = kiro
    fake.script = lambda seen: Answer(
        frames=[
            *text_frames("Checking."),
            *tool_frames("tu-1", "get_weather", ['{"city"', ': "Paris"}']),
        ]
    )
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"name": "get_weather", "description": "Weather.", "input_schema": schema}]
    async with client(kr, recorder) as c:
        async with c.messages.stream(
            model=MODEL, max_tokens=50, tools=tools,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        ) as stream:  # fmt: skip
            final = await stream.get_final_message()
        [_events] = checked(recorder)
        assert [b.type for b in final.content] == ["text", "tool_use"]
        use = final.content[1]
        assert use.input == {"city": "Paris"} and final.stop_reason == "tool_use"
        fake.script = lambda seen: Answer()
        await c.messages.create(
            model=MODEL, max_tokens=50, tools=tools,
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [b.model_dump() for b in final.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "boom", "is_error": True}]},
            ],
        )  # fmt: skip
    seen = fake.chats[-1]
    assert seen.history[1]["assistantResponseMessage"]["toolUses"][0]["input"] == {"city": "Paris"}
    result = seen.current["userInputMessageContext"]["toolResults"][0]
    assert result == {"toolUseId": "tu-1", "content": [{"text": "boom"}], "status": "error"}


async def test_thinking_with_signature(kiro):
    kr, fake, recorder = kiro
    frames = [
        eventstream.event("reasoningContentEvent", b'{"text":"Hmm, "}'),
        eventstream.event("reasoningContentEvent", b'{"text":"six times seven."}'),
        eventstream.event("reasoningContentEvent", b'{"signature":"sig-abc"}'),
        *text_frames("42"),
    ]
    fake.script = lambda seen: Answer(frames=frames)
    async with client(kr, recorder) as c, c.messages.stream(
        model=MODEL, max_tokens=5000, thinking={"type": "enabled", "budget_tokens": 4000},
        messages=[{"role": "user", "content": "6*7?"}],
    ) as stream:  # fmt: skip
        final = await stream.get_final_message()
    [events] = checked(recorder)
    deltas = [d["delta"]["type"] for e, d in events if e == "content_block_delta"]
    assert deltas == ["thinking_delta", "thinking_delta", "signature_delta", "text_delta"]
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Hmm, six times seven."
    assert thinking.signature == "sig-abc" and final.content[1].text == "42"


async def test_images_reach_kiro(kiro):
    kr, fake, recorder = kiro
    async with client(kr, recorder) as c:
        await c.messages.create(
            model=MODEL, max_tokens=50,
            messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                             "data": "AAAA"}},
                {"type": "text", "text": "What is it?"},
            ]}],
        )  # fmt: skip
    current = fake.chats[-1].current
    assert current["images"] == [{"format": "jpeg", "source": {"bytes": "AAAA"}}]
    assert current["content"] == "What is it?"


async def test_count_tokens_and_errors(kiro):
    kr, fake, recorder = kiro
    async with client(kr, recorder) as c:
        count = await c.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "x" * 40}]
        )
        assert count.input_tokens == 10
        fake.script = lambda seen: Answer(status=429, json={"message": "Too many requests"})
        with pytest.raises(anthropic.RateLimitError) as rl:
            await c.messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert int(rl.value.response.headers["retry-after"]) >= 1
        fake.script = lambda seen: Answer(
            status=400, json={"message": "Improperly formed request."}
        )
        with pytest.raises(anthropic.BadRequestError):
            await c.messages.create(
                model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )


def _capture(name: str) -> dict[str, Any]:
    return dict(orjson.loads((CAPTURES / name).read_bytes()))


async def _replay(kr: Any, capture: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    headers = {k: v for k, v in capture["headers"].items() if k.lower() != "accept-encoding"}
    url = f"{kr.url}{capture['path']}?{capture['query']}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=orjson.dumps(capture["body"]), headers=headers) as r,
    ):
        return r.status, sse_events(await r.read())


@pytest.mark.parametrize(
    "name",
    [
        "claude-code-2.1.332-text/001-POST-v1_messages.json",
        "claude-code-2.1.332-tool/001-POST-v1_messages.json",
        "claude-code-2.1.332-tool/002-POST-v1_messages.json",
    ],
)
async def test_claude_code_captures_against_kiro(kiro, name):
    kr, fake, _ = kiro
    capture = _capture(name)
    if "tool/001" in name:
        fake.script = lambda seen: Answer(
            frames=tool_frames("toolu_01", "Bash", ['{"command": "echo keyrail-probe",',
                                                    ' "description": "Print a probe"}'])
        )  # fmt: skip
    status, events = await _replay(kr, capture)
    assert status == 200, events
    check_messages(events)
    seen = fake.chats[-1]
    specs = seen.current["userInputMessageContext"]["tools"]
    assert len(specs) == len(capture["body"]["tools"]) == 12
    assert "You are a Claude agent" in seen.current["content"]  # the system blocks, joined
    if "tool/001" in name:
        delta = next(d for e, d in events if e == "message_delta")
        assert delta["delta"]["stop_reason"] == "tool_use"
        pieces = [d["delta"]["partial_json"] for e, d in events if e == "content_block_delta"]
        assert json.loads("".join(pieces))["command"] == "echo keyrail-probe"
    if "tool/002" in name:
        result = seen.current["userInputMessageContext"]["toolResults"][0]
        assert result["toolUseId"] == "toolu_01" and result["status"] == "success"


@pytest.mark.parametrize(
    "name",
    [
        "claude-code-2.1.332-text/001-POST-v1_messages.json",
        "claude-code-2.1.332-tool/002-POST-v1_messages.json",
    ],
)
async def test_claude_code_captures_against_a_chat_upstream(start_upstream, start_keyrail, name):
    fake, url = await start_upstream()
    kr = await start_keyrail(
        f"api-keys: [{CLIENT_KEY}]\nopenai-compatibility:\n  - name: up\n    base-url: {url}\n"
        "    models: [{name: gpt-4o-mini, alias: claude-opus-4-7},"
        " {name: gpt-4o-mini, alias: claude-sonnet-4-5}]\n"
    )
    capture = _capture(name)
    status, events = await _replay(kr, capture)
    assert status == 200, events
    check_messages(events)
    body = fake.seen[-1].body
    assert body["model"] == "gpt-4o-mini" and body["stream"] is True
    assert body["messages"][0]["role"] == "system" and len(body["tools"]) == 12
    # opus: adaptive thinking with output_config.effort xhigh; sonnet: budget_tokens 31999
    assert body["reasoning_effort"] == ("xhigh" if "opus" in capture["body"]["model"] else "high")
    if "tool/002" in name:
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_01",
                                        "content": "<text: 101 chars>"}  # fmt: skip
