"""An upstream that misbehaves: bombs, huge events, redirects. keyrail answers a clear 502
naming the provider and the limit (before the first byte), or ends the stream with an error
event (after it), and keeps serving."""

from __future__ import annotations

import functools
import zlib

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.redact import StreamMask

CONFIG = """
openai-compatibility:
  - name: hostile
    base-url: {url}/v1
    api-key-entries: [{{api-key: pk-hostile-0123456789}}]
    models: [{{name: m}}]
"""
MiB = 1024 * 1024


@functools.cache
def gzip_bomb(gib: int = 1) -> bytes:
    """~1 MB of gzip that inflates to `gib` GiB of zeros (the trailer never comes: nobody
    who stops at a limit reads that far)."""
    zeros = bytes(16 * MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes every time now
    return first + unit * (64 * gib - 1)


def hostile_app(behaviour: str) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if behaviour == "redirect":
            raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
        if behaviour == "bomb":
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            if body.get("stream"):
                headers["Content-Type"] = "text/event-stream"
            return web.Response(body=gzip_bomb(), headers=headers)
        if behaviour == "huge-event":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
            await response.write(b'data: {"x":"')
            piece = b"x" * (256 * 1024)
            for _ in range(64 * 4):  # 64 MiB, never terminated
                await response.write(piece)
            await response.write(b'"}\n\n')
            return response
        raise AssertionError(behaviour)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


@pytest.fixture
def start(start_upstream_app, start_keyrail):
    async def make(behaviour: str):
        url = await start_upstream_app(hostile_app(behaviour))
        return await start_keyrail(CONFIG.format(url=url))

    return make


async def _chat(kr, stream: bool) -> tuple[int, bytes]:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(kr.v1 + "/chat/completions", json=body) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("stream", [False, True])
async def test_gzip_bomb_is_a_502_naming_provider_and_limit(start, stream):
    """Finding 1: 1 MB of gzip inflating to 1 GB was inflated whole (the limit was checked
    against the compressed length): 2.1 GB of memory, every client stalled for seconds."""
    kr = await start("bomb")
    status, data = await _chat(kr, stream)
    assert status == 502, data[:300]
    message = orjson.loads(data)["error"]["message"]
    assert "hostile" in message
    limit = "limits.sse-event-mb" if stream else "limits.upstream-body-mb"
    assert limit in message


async def test_gzip_bomb_cools_the_credential_down(start):
    kr = await start("bomb")
    await _chat(kr, False)
    async with aiohttp.ClientSession() as s, s.get(kr.url + "/health") as r:
        assert (await r.json())["providers"]["hostile"] == "down"


async def test_huge_event_after_the_first_byte_ends_the_stream_with_the_limit(start):
    """Finding 2: an unterminated 64 MB event was buffered whole, re-searched on every chunk."""
    kr = await start("huge-event")
    status, data = await _chat(kr, True)
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e]
    assert events[0].startswith(b'data: {"choices"')
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert "hostile" in error["message"]
    assert "limits.sse-event-mb" in error["message"]
    assert b"[DONE]" not in data  # a broken stream does not pretend to have finished


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_redirect_is_a_502_naming_the_provider(start, stream):
    """Finding 6: a 302 reached the client as a bare `302 Found` without its Location."""
    kr = await start("redirect")
    status, data = await _chat(kr, stream)
    assert status == 502
    message = orjson.loads(data)["error"]["message"]
    assert "hostile" in message and "302" in message and "redirect" in message


SECRET = b"pk-hostile-0123456789"


def echo_app(split_at: int | None) -> web.Application:
    """Echoes its key: in an error event of a 200 stream (cut at `split_at`), or a 200 body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key = request.headers["Authorization"].removeprefix("Bearer ").encode()
        assert key == SECRET
        if not body.get("stream"):
            return web.json_response({"choices": [], "note": f"key {key.decode()} exhausted"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
        data = b'data: {"error":{"message":"key ' + key + b' exhausted"}}\n\n'
        cut = split_at if split_at is not None else len(data)
        await response.write(data[:cut])  # two writes: usually two reads at keyrail's end
        await response.write(data[cut:])
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


async def test_echoed_key_is_masked_wherever_the_chunks_are_cut(start_upstream_app, start_keyrail):
    """Finding 5: a provider key echoed inside a 200 stream reached the client unmasked."""
    prefix = len(b'data: {"error":{"message":"key ')
    for split_at in (None, prefix, prefix + 1, prefix + 10, prefix + len(SECRET) - 1):
        url = await start_upstream_app(echo_app(split_at))
        kr = await start_keyrail(CONFIG.format(url=url))
        for stream in (True, False):
            status, data = await _chat(kr, stream)
            assert status == 200
            assert SECRET not in data, (split_at, stream, data)
            assert b"[REDACTED]" in data


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.just(SECRET), st.binary(max_size=30), st.just(SECRET[:7])), max_size=8
    ),
    cuts=st.lists(st.integers(0, 300), max_size=12),
)
def test_stream_mask_masks_a_secret_cut_anywhere(parts, cuts):
    data = b"".join(parts)
    mask = StreamMask(SECRET.decode())
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    out = [mask.feed(data[a:b]) for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    got = b"".join(out) + mask.flush()
    assert got == StreamMask.whole(data, SECRET.decode())
    assert SECRET not in got
