"""A stream that breaks after its first byte ends in the client's own dialect, secrets masked.

Passthrough `/v1/responses` (the upstream serves Responses) ends with `response.failed`, the
event a Responses client reads its stream's end from, not a chat-style `data: {"error"}`; and
an upstream that quotes its key in a mid-stream error never shows that key to a `/v1/messages`
client, whose stream is encoded by keyrail (the in-band error is masked like every error body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from tests.conftest import Keyrail
from tests.fakes import FakeOpenAI, Script

UPSTREAM_KEY = "sk-upstream-echoed-0123456789abcdef"
CONFIG = """
openai-compatibility:
  - name: up
    base-url: {url}
    api-key-entries: [{{api-key: {key}}}]
    models: [{{name: gpt-4o-mini}}]
"""


def sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def post_stream(kr: Keyrail, path: str, body: dict[str, Any]) -> bytes:
    headers = {"anthropic-version": "2023-06-01"} if path.endswith("messages") else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(kr.v1 + path, json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return b"".join([chunk async for chunk in response.content.iter_any()])


async def test_a_broken_passthrough_responses_stream_ends_with_response_failed(
    start_upstream: Callable[..., Awaitable[tuple[FakeOpenAI, str]]],
    start_keyrail: Callable[..., Awaitable[Keyrail]],
) -> None:
    fake, url = await start_upstream()
    created = {"id": "resp_up", "object": "response", "status": "in_progress", "output": []}
    fake.script = lambda seen: Script(
        chunks=[
            sse("response.created", {"type": "response.created", "sequence_number": 0,
                                     "response": created}),
            sse("response.output_text.delta", {"type": "response.output_text.delta",
                                               "sequence_number": 1, "delta": "Hel"}),
            b"never sent",
        ],
        break_after=2,
    )  # fmt: skip
    kr = await start_keyrail(CONFIG.format(url=url, key=UPSTREAM_KEY))
    body = {"model": "gpt-4o-mini", "input": "hi", "stream": True}
    data = await post_stream(kr, "/responses", body)
    assert fake.seen[-1].path == "/v1/responses"  # passed through, not translated
    assert b'"delta":"Hel"' in data
    last = data.rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b"event: response.failed\ndata: ")
    failed = orjson.loads(last.split(b"data: ", 1)[1])
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"]
    assert b'data: {"error"' not in data


async def test_a_key_quoted_in_a_mid_stream_error_is_masked_for_messages_clients(
    start_upstream: Callable[..., Awaitable[tuple[FakeOpenAI, str]]],
    start_keyrail: Callable[..., Awaitable[Keyrail]],
) -> None:
    fake, url = await start_upstream()
    delta = {"role": "assistant", "content": "Hi"}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": delta}]}  # fmt: skip
    error = {"error": {"message": f"key {UPSTREAM_KEY} exhausted", "code": 500}}
    # Paced, so that the error comes in a later read than the text: after the first byte.
    fake.script = lambda seen: Script(chunks=[sse(None, chunk), sse(None, error)], gap=0.2)
    kr = await start_keyrail(CONFIG.format(url=url, key=UPSTREAM_KEY))
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    data = await post_stream(kr, "/messages", body)
    assert b"event: error" in data and b"exhausted" in data  # the error did reach the client
    assert UPSTREAM_KEY.encode() not in data
