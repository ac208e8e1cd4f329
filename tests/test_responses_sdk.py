"""The official `openai` package's Responses API through keyrail, translated for upstreams
without one: an openai-compatibility block with `dialects: [chat]`, and the kiro driver. Text,
function calls with `function_call_output` on the next turn, reasoning items, usage; Codex
CLI's captured requests replayed; every stream checked against the Responses grammar."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from drivers.kiro import eventstream
from proxy.testing.grammar import Recorder, check_responses, sse_events
from tests.fake_kiro import Answer, FakeKiro, text_frames, tool_frames
from tests.fakes import Script, chunk
from tests.test_kiro import block, write_token

CAPTURES = Path(__file__).parent / "captures"
CLIENT_KEY = "kr-client-key-0123456789"  # the (made-up) key the captures were recorded with
CHAT_ONLY = """
api-keys: [{key}]
openai-compatibility:
  - name: chatonly
    base-url: {url}
    dialects: [chat]
    models:
      - {{name: gpt-4o-mini, alias: gpt-5-codex}}
"""
TOOL = {"type": "function", "name": "exec_command", "description": "Run a command.",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}  # fmt: skip


def checked(recorder: Recorder) -> list[list[tuple[str, Any]]]:
    out = []
    for raw in recorder.take():
        events = sse_events(raw)
        check_responses(events)
        out.append(events)
    return out


@pytest.fixture
async def chat_only(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(CHAT_ONLY.format(key=CLIENT_KEY, url=url))
    recorder = Recorder()
    client = openai.AsyncOpenAI(
        base_url=kr.v1, api_key=CLIENT_KEY, max_retries=0, http_client=recorder.client()
    )
    yield client, fake, recorder, kr
    await client.close()


async def test_text_created_and_streamed(chat_only):
    c, fake, recorder, _ = chat_only
    r = await c.responses.create(model="gpt-5-codex", input="hi", instructions="Be brief.")
    assert r.output_text == "Hello from the fake upstream." and r.status == "completed"
    assert r.usage.input_tokens == 11 and r.usage.output_tokens == 7
    sent = fake.seen[-1]
    assert sent.path == "/v1/chat/completions"  # translated: this upstream has no /responses
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    async with c.responses.stream(model="gpt-5-codex", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello from the fake upstream. "
    assert final.usage.total_tokens == 18
    [events] = checked(recorder)
    assert events[-1][0] == "response.completed"


async def test_function_call_round_trip(chat_only):
    c, fake, recorder, _ = chat_only
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "exec_command", "arguments": '{"cmd": "ls"}'}}]  # fmt: skip
    fake.script = lambda seen: Script(tool_calls=calls)
    async with c.responses.stream(
        model="gpt-5-codex", input="List files.", tools=[TOOL], tool_choice="auto"
    ) as stream:
        final = await stream.get_final_response()
    [events] = checked(recorder)
    assert "response.function_call_arguments.delta" in [e for e, _ in events]
    [call] = final.output
    assert call.type == "function_call" and call.call_id == "call_1"
    assert json.loads(call.arguments) == {"cmd": "ls"}
    sent = fake.seen[-1].body
    assert sent["tools"][0]["function"]["name"] == "exec_command" and sent["tool_choice"] == "auto"

    fake.script = lambda seen: Script(text="Two files.")
    r = await c.responses.create(
        model="gpt-5-codex",
        tools=[TOOL],
        input=[
            {"role": "user", "content": "List files."},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt b.txt"},
        ],
    )
    assert r.output_text == "Two files."
    messages = fake.seen[-1].body["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt b.txt"}


def _reasoning(seen: Any) -> Script:
    m = "gpt-4o-mini"
    return Script(chunks=[
        chunk(m, {"role": "assistant", "content": ""}),
        chunk(m, {"reasoning_content": "Thinking it over."}),
        chunk(m, {"content": "Yes."}),
        chunk(m, {}, "stop"),
        b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42,'
        b'"prompt_tokens_details":{"cached_tokens":10},'
        b'"completion_tokens_details":{"reasoning_tokens":4}}}\n\n',
        b"data: [DONE]\n\n",
    ])  # fmt: skip


async def test_reasoning_items_and_usage(chat_only):
    c, fake, recorder, _ = chat_only
    fake.script = _reasoning
    async with c.responses.stream(
        model="gpt-5-codex", input="Well?", reasoning={"effort": "high", "summary": "auto"}
    ) as stream:
        final = await stream.get_final_response()
    checked(recorder)
    assert fake.seen[-1].body["reasoning_effort"] == "high"
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Thinking it over."
    assert message.content[0].text == "Yes."
    assert final.usage.input_tokens_details.cached_tokens == 10
    assert final.usage.output_tokens_details.reasoning_tokens == 4
    fake.script = lambda seen: Script()
    await c.responses.create(
        model="gpt-5-codex",
        input=[{"role": "user", "content": "Well?"},
               *[item.model_dump(exclude_none=True) for item in final.output],
               {"role": "user", "content": "Sure?"}],
    )  # fmt: skip
    assistant = fake.seen[-1].body["messages"][1]
    assert assistant["reasoning_content"] == "Thinking it over." and assistant["content"] == "Yes."


async def test_previous_response_id_is_a_clear_400(chat_only):
    c, fake, _, _ = chat_only
    with pytest.raises(openai.BadRequestError) as err:
        await c.responses.create(model="gpt-5-codex", input="hi", previous_response_id="resp_1")
    assert "whole conversation" in err.value.message and not fake.seen


async def test_passthrough_where_the_upstream_serves_responses(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(CHAT_ONLY.format(key=CLIENT_KEY, url=url).replace(
        "dialects: [chat]", "dialects: [chat, responses]"))  # fmt: skip
    async with aiohttp.ClientSession() as s, s.post(
        kr.v1 + "/responses", json={"model": "gpt-5-codex", "input": "hi"},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    ) as r:  # fmt: skip
        assert r.status == 200
    assert fake.seen[-1].path == "/v1/responses"
    assert fake.seen[-1].body == {"model": "gpt-4o-mini", "input": "hi"}  # only model rewritten


@pytest.fixture
async def kiro(tmp_path: Path, start_keyrail: Any) -> AsyncIterator[tuple[Any, FakeKiro]]:
    fake = FakeKiro()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    path = write_token(tmp_path / "kiro-auth-token.json", *fake.issue("one"))
    models = "    models: [{name: claude-sonnet-4.5, alias: gpt-5-codex}]\n"
    kr = await start_keyrail(f"api-keys: [{CLIENT_KEY}]\nkiro:\n{block('kiro', path, url, models)}")
    yield kr, fake
    await server.close()
    assert fake.problems == []


async def test_kiro_text_tools_and_reasoning(kiro):
    kr, fake = kiro
    recorder = Recorder()
    frames = [
        eventstream.event("reasoningContentEvent", b'{"text":"Plan."}'),
        eventstream.event("reasoningContentEvent", b'{"signature":"sig-1"}'),
        *text_frames("Running it."),
        *tool_frames("tu-9", "exec_command", ['{"cmd":', ' "ls"}']),
    ]
    fake.script = lambda seen: Answer(frames=frames)
    async with openai.AsyncOpenAI(
        base_url=kr.v1, api_key=CLIENT_KEY, max_retries=0, http_client=recorder.client()
    ) as c:
        async with c.responses.stream(model="gpt-5-codex", input="ls", tools=[TOOL]) as stream:
            final = await stream.get_final_response()
        [_events] = checked(recorder)
        kinds = [item.type for item in final.output]
        assert kinds == ["reasoning", "message", "function_call"]
        assert final.output[0].encrypted_content == "sig-1"  # kept opaque, for the next turn
        assert final.output[2].call_id == "tu-9"
        assert final.usage.input_tokens > 0
        fake.script = lambda seen: Answer()
        r = await c.responses.create(
            model="gpt-5-codex",
            tools=[TOOL],
            input=[{"role": "user", "content": "ls"},
                   *[item.model_dump(exclude_none=True) for item in final.output],
                   {"type": "function_call_output", "call_id": "tu-9", "output": "a.txt"}],
        )  # fmt: skip
    assert r.output_text == "Hello from Kiro."
    current = fake.chats[-1].current
    assert current["userInputMessageContext"]["toolResults"][0]["toolUseId"] == "tu-9"


def _capture(name: str) -> dict[str, Any]:
    return dict(orjson.loads((CAPTURES / name).read_bytes()))


async def _replay(kr: Any, capture: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    headers = {k: v for k, v in capture["headers"].items() if k.lower() != "accept-encoding"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            kr.url + capture["path"], data=orjson.dumps(capture["body"]), headers=headers
        ) as r,
    ):
        return r.status, sse_events(await r.read())


CODEX = ["codex-0.171.0-text/001-POST-v1_responses.json",
         "codex-0.171.0-tool/001-POST-v1_responses.json",
         "codex-0.171.0-tool/002-POST-v1_responses.json"]  # fmt: skip


@pytest.mark.parametrize("name", CODEX)
async def test_codex_captures_against_kiro(kiro, name):
    kr, fake = kiro
    if "tool/001" in name:
        frames = tool_frames("call_1", "exec_command", ['{"cmd": "echo keyrail-probe"}'])
        fake.script = lambda seen: Answer(frames=frames)
    status, events = await _replay(kr, _capture(name))
    assert status == 200, events
    check_responses(events)
    current = fake.chats[-1].current
    names = [t["toolSpecification"]["name"] for t in current["userInputMessageContext"]["tools"]]
    assert "exec_command" in names and "web_search" not in names  # built-ins dropped
    if "tool/002" in name:
        result = current["userInputMessageContext"]["toolResults"][0]
        assert result["toolUseId"] == "call_1"


@pytest.mark.parametrize("name", CODEX)
async def test_codex_captures_against_a_chat_upstream(start_upstream, start_keyrail, name):
    fake, url = await start_upstream()
    kr = await start_keyrail(CHAT_ONLY.format(key=CLIENT_KEY, url=url))
    status, events = await _replay(kr, _capture(name))
    assert status == 200, events
    check_responses(events)
    body = fake.seen[-1].body
    assert body["messages"][0]["role"] == "system"  # Codex's developer messages
    assert all(t["type"] == "function" for t in body["tools"])
    if "tool/002" in name:
        assert body["messages"][-1]["role"] == "tool"
        assert body["messages"][-2]["tool_calls"][0]["id"] == "call_1"
