"""The relay's passthrough fast path gives the same bytes as the event-by-event path."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.driver import BytesStream, Reply
from proxy.streaming import RelayOptions, StreamHead, _plain_events, relay

CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


async def _relay(chunks: list[bytes], options: RelayOptions) -> tuple[bytes, object]:
    seen: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        head = StreamHead(Reply(200, {}, BytesStream(*chunks)), "p")
        await head.open()
        response, result = await relay(request, head, options, 0.0)
        seen.append(result)
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/")
        body = await resp.read()
    return body, seen[0]


def test_plain_events_detection() -> None:
    assert _plain_events(CONTENT * 3)
    assert not _plain_events(CONTENT[:10])  # cut
    assert not _plain_events(CONTENT.replace(b"\n", b"\r\n"))
    assert not _plain_events(b": comment\n\n" + CONTENT)
    assert not _plain_events(CONTENT + USAGE)
    assert not _plain_events(CONTENT + DONE)


async def test_fast_and_slow_paths_agree() -> None:
    whole = CONTENT * 4 + USAGE + DONE
    cut = [whole[i : i + 7] for i in range(0, len(whole), 7)]  # every chunk takes the parser
    events = [CONTENT] * 4 + [USAGE, DONE]  # content chunks take the fast path
    for wants_usage in (True, False):
        options = RelayOptions(keepalive_seconds=0, client_wants_usage=wants_usage)
        slow, slow_result = await _relay(cut, options)
        fast, fast_result = await _relay(events, options)
        assert slow == fast
        assert (USAGE in fast) is wants_usage
        assert fast.endswith(DONE) and fast.count(b"content") == 4
        assert slow_result.usage == fast_result.usage  # type: ignore[attr-defined]
        assert fast_result.usage.completion_tokens == 2  # type: ignore[attr-defined]


async def test_fast_path_renames_and_adds_done() -> None:
    chunk = b'data: {"model":"up","choices":[]}\n\n'
    options = RelayOptions(keepalive_seconds=0, rename_model=("up", "alias"))
    body, _ = await _relay([chunk, chunk], options)
    assert body == b'data: {"model":"alias","choices":[]}\n\n' * 2 + DONE
