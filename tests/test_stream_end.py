"""Where a stream ends: at its terminal event, not at the upstream's end of body.

A stream whose terminal event (`data: [DONE]`, `response.completed`...) was relayed is a
success with its TTFT and tokens, even when the client leaves at once (the openai SDK closes
right after `[DONE]`). A stream the upstream ends without it, or in the middle of an event,
ends the client's stream with an error event, never a `[DONE]`, and is a failure.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from proxy.streaming import DONE_END, RESPONSES_END
from tests.fakes import chunk
from tests.ops_helpers import wait_for

CONFIG = """
openai-compatibility:
  - name: split
    base-url: {url}
    models: [{{name: gpt-4o-mini, alias: fast}}]
"""
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
BODY = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _events(model: str) -> list[bytes]:
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
             "choices": [], "usage": USAGE}  # fmt: skip
    return [
        chunk(model, {"role": "assistant", "content": ""}),
        chunk(model, {"content": "Hello"}),
        chunk(model, {}, "stop"),
        b"data: " + orjson.dumps(usage) + b"\n\n",
    ]


def upstream(tail: list[bytes], end_gap: float = 0.3) -> web.Application:
    """An OpenAI stream whose last pieces are `tail`, each its own write; the end of body
    (the chunked terminator) is a write of its own `end_gap` later, as over a slow network:
    longer than the openai SDK waits for an end of body after `[DONE]` (0.1 s) before it
    closes the connection."""

    async def post(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(_events(body["model"])))
        for piece in tail:
            await response.write(piece)
        await asyncio.sleep(end_gap)  # network delay before the end of body, not a sync
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", post)
    return app


@pytest.fixture
async def keyrail_on(start_upstream_app, start_keyrail):
    async def start(tail: list[bytes]):
        url = await start_upstream_app(upstream(tail))
        return await start_keyrail(CONFIG.format(url=url + "/v1"))

    return start


async def _provider(kr) -> dict:
    async with aiohttp.ClientSession() as s, s.get(kr.url + "/v1/metrics/providers") as r:
        return (await r.json())["split"]


async def test_sdk_streams_ending_with_done_are_successes(keyrail_on, log_text):
    kr = await keyrail_on([b"data: [DONE]\n\n"])
    gate = asyncio.Semaphore(50)

    async def one(client: openai.AsyncOpenAI) -> str:
        async with gate:
            stream = await client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return "".join(parts)

    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as client:
        texts = await asyncio.gather(*(one(client) for _ in range(100)))
    assert texts == ["Hello"] * 100

    def lines() -> list[str]:
        return [ln for ln in log_text().splitlines() if "path=/v1/chat/completions" in ln]

    # A handler may finish just after its client (it waits a moment for the upstream's end).
    await wait_for(lambda: len(lines()) >= 100, 10, "100 access lines")
    provider = await _provider(kr)
    assert provider["success_count"] == 100 and provider["failure_count"] == 0
    assert provider["ttft_p50_ms"] is not None
    assert provider["prompt_tokens"] == 100 * 11 and provider["completion_tokens"] == 100 * 7
    assert len(lines()) == 100
    for line in lines():
        assert " status=200 " in line, line
        assert re.search(r" ttft_ms=\d", line), line
        assert " total_tokens=18" in line, line


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        ([b'data: {"choices":[{"delta":{"cutoff'], "in the middle of an event"),
        ([b'data: {"choices":[]}\n'], "in the middle of an event"),
        ([], "without the end event"),
    ],
)
async def test_cut_stream_ends_with_an_error_event_not_done(keyrail_on, log_text, tail, why):
    kr = await keyrail_on(tail)
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=BODY) as r:
        assert r.status == 200
        raw = await r.read()
    assert b"[DONE]" not in raw
    events = [e for e in raw.split(b"\n\n") if e]
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert why in error["message"] and "split" in error["message"]
    assert b"cutoff" not in raw  # the half event is not relayed
    provider = await _provider(kr)
    assert provider["failure_count"] == 1 and provider["success_count"] == 0
    assert why in provider["last_error"]["message"]
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(**BODY)
        with pytest.raises(openai.APIError, match=why):
            async for _ in stream:
                pass


def test_terminal_events_of_each_dialect():
    assert DONE_END.is_terminal(b"data: [DONE]\n\n")
    assert not DONE_END.is_terminal(b'data: {"content":"data: [DONE]"}\n\n')
    for kind in ("response.completed", "response.failed", "response.incomplete"):
        data = orjson.dumps({"type": kind, "response": {}})
        assert RESPONSES_END.is_terminal(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
        assert RESPONSES_END.is_terminal(b"data: " + data + b"\n\n")  # without `event:` lines
    delta = orjson.dumps({"type": "response.output_text.delta", "delta": "response.completed"})
    assert not RESPONSES_END.is_terminal(b"event: response.output_text.delta\ndata: " + delta)


@pytest.mark.parametrize("complete", [True, False])
async def test_a_translated_messages_stream_ends_truthfully(keyrail_on, complete):
    """/v1/messages over a chat upstream: message_stop only when the upstream's [DONE] came;
    a cut one ends with Anthropic's error event instead."""
    kr = await keyrail_on([b"data: [DONE]\n\n"] if complete else [b'data: {"choi'])
    body = {"model": "fast", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/messages", json=body) as r:
        assert r.status == 200
        raw = await r.read()
    assert (b"event: message_stop" in raw) is complete, raw[-300:]
    assert (b"event: error" in raw) is not complete, raw[-300:]
    provider = await _provider(kr)
    assert (provider["success_count"], provider["failure_count"]) == (
        (1, 0) if complete else (0, 1)
    )
