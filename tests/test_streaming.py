"""Streaming relay: SSE parsed at the byte level, errors before and after the first byte,
keepalives, and a client that leaves cancelling the upstream at once."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import openai
import orjson
import pytest

from proxy.sse import SSEParser, event_data
from proxy.streaming import usage_in
from tests.fakes import Script, chunk

CONFIG = """
openai-compatibility:
  - name: fakeco
    base-url: {url}
    models:
      - {{name: gpt-4o-mini, alias: fast}}
      - {{name: gpt-4o-mini, alias: mapped, force-mapping: true}}
streaming: {{keepalive-seconds: {keepalive}}}
"""
BODY = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def setup(start_upstream, start_keyrail):
    async def make(keepalive: float = 15):
        fake, url = await start_upstream()
        kr = await start_keyrail(CONFIG.format(url=url, keepalive=keepalive))
        return fake, kr

    return make


async def _stream_text(kr, model="fast") -> tuple[str, list]:
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [ch async for ch in stream]
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), chunks


def test_parser_handles_any_split_and_line_endings():
    events = [
        b'data: {"a": 1}\n\n',
        b": comment\n\n",
        b"event: ping\ndata: {}\n\n",
        b"data: [DONE]\n\n",
    ]
    whole = b"".join(events)
    rng = random.Random(7)
    for ending in (b"\n", b"\r\n", b"\r"):
        data = whole.replace(b"\n", ending)
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
            parser = SSEParser()
            got = []
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                got.extend(parser.feed(data[a:b]))
            tail = parser.flush()  # a lone CR at the very end may still be half a CRLF
            assert ([*got, tail] if tail else got) == events, (ending, cuts)
    assert event_data(b"event: x\ndata: line1\ndata: line2\n\n") == b"line1\nline2"
    assert event_data(b": just a comment\n\n") is None


@pytest.mark.parametrize("split", [1, 3, 7, 64])
async def test_stream_split_at_arbitrary_boundaries(setup, split):
    fake, kr = await setup()
    fake.script = lambda seen: Script(split=split)
    text, _ = await _stream_text(kr)
    assert text.strip() == "Hello from the fake upstream."


async def test_crlf_comments_and_event_lines(setup):
    fake, kr = await setup()
    model = "gpt-4o-mini"
    chunks = [
        b": OPENROUTER PROCESSING\n\n",
        chunk(model, {"role": "assistant", "content": ""}),
        b": still processing\n\n",
        b"event: message\n" + chunk(model, {"content": "one "}),
        chunk(model, {"content": "two"}),
        chunk(model, {}, "stop"),
        b"data: [DONE]\n\n",
    ]
    fake.script = lambda seen: Script(chunks=chunks, crlf=True, split=5)
    text, _ = await _stream_text(kr)
    assert text == "one two"


async def test_force_mapping_rewrites_model_in_stream_and_body(setup):
    _fake, kr = await setup()
    _, chunks = await _stream_text(kr, model="mapped")
    assert {ch.model for ch in chunks} == {"mapped"}
    async with openai.AsyncOpenAI(base_url=kr.v1, api_key="x", max_retries=0) as c:
        reply = await c.chat.completions.create(model="mapped", messages=[])
        assert reply.model == "mapped"
        plain = await c.chat.completions.create(model="fast", messages=[])
        assert plain.model == "gpt-4o-mini"  # without force-mapping: the upstream's name


async def test_error_before_first_byte_is_a_plain_json_error(setup):
    fake, kr = await setup()
    fake.script = lambda seen: Script(status=503)
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=BODY) as r:
        assert r.status == 503
        assert r.content_type == "application/json"
        assert "error" in orjson.loads(await r.read())


async def test_in_band_error_before_first_data_fails_over_not_through(setup):
    fake, kr = await setup()
    fake.script = lambda seen: Script(
        chunks=[b'data: {"error": {"message": "overloaded", "code": 503}}\n\n']
    )
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=BODY) as r:
        assert r.status == 503


async def test_failure_after_first_byte_ends_with_error_event(setup):
    fake, kr = await setup()
    fake.script = lambda seen: Script(break_after=3)
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=BODY) as r:
        assert r.status == 200
        assert r.headers["X-Accel-Buffering"] == "no"
        raw = await r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    last = orjson.loads(events[-1][len(b"data: ") :])
    assert "error" in last
    assert b"[DONE]" not in raw  # a broken stream never looks finished
    assert len(fake.seen) == 1  # and is never replayed


async def test_keepalive_comments_during_silence(setup):
    fake, kr = await setup(keepalive=0.05)
    fake.script = lambda seen: Script(stall_after=2)
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=BODY) as r:
        seen = b""
        async with asyncio.timeout(5):
            while b": keepalive" not in seen:
                seen += await r.content.readany()


@pytest.mark.parametrize("phase", ["before_first_byte", "while_silent"])
async def test_client_disconnect_cancels_upstream_fast(setup, phase):
    fake, kr = await setup()
    if phase == "before_first_byte":
        fake.script = lambda seen: Script(delay=3600)
    else:
        fake.script = lambda seen: Script(stall_after=2)
    session = aiohttp.ClientSession()
    response_task = asyncio.create_task(session.post(kr.v1 + "/chat/completions", json=BODY))
    await asyncio.wait_for(fake.request_started.wait(), 5)
    if phase == "while_silent":
        response = await asyncio.wait_for(response_task, 5)
        await response.content.readany()
        response.close()  # the client goes away mid-stream, while the upstream is silent
    else:
        response_task.cancel()
    await session.close()
    loop = asyncio.get_running_loop()
    gone = loop.time()
    await asyncio.wait_for(fake.disconnected.wait(), 1.0)
    assert loop.time() - gone < 0.1


@pytest.mark.parametrize(
    ("payload", "usage"),
    [
        (
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
            {"prompt_tokens": 3, "completion_tokens": 4},
        ),
        (
            b'{"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}}',
            {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}},
        ),
        (b'{"choices":[{"delta":{"content":"say \\"usage\\": {}"}}],"usage":null}', None),
        (b'{"choices":[{"delta":{"content":"\\"usage\\": {\\"prompt_tokens\\": 9}"}}]}', None),
        (
            b'{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}',
            {"input_tokens": 5, "output_tokens": 6},
        ),
        (
            b'{"usage":{"note":"a } inside","prompt_tokens":2}}',
            {"note": "a } inside", "prompt_tokens": 2},
        ),
        (b'{"usage":{"a":{"b":{"prompt_tokens":7}}}}', {"a": {"b": {"prompt_tokens": 7}}}),
        (b'not json "usage"', None),
        (b'{"usage" : {"prompt_tokens": 3}, "choices": [{"text": "}{"}]}', {"prompt_tokens": 3}),
        (b'{"meta":{"usage":{"x":1}},"usage":{"prompt_tokens":4}}', {"prompt_tokens": 4}),
    ],
)
def test_usage_is_found_wherever_it_is_and_only_there(payload, usage):
    """Top-level or inside a responses-API `response`; never a quoted "usage" in content."""
    assert usage_in(payload) == usage
