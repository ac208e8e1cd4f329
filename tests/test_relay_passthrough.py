"""The relay's passthrough fast path gives the same bytes as the event-by-event path."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.driver import BytesStream, Reply
from proxy.streaming import RelayOptions, StreamHead, _plain_events, relay

CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


async def _relay(upstream: list[bytes] | object, options: RelayOptions) -> tuple[bytes, object]:
    """Relay `upstream` (chunks, or a body stream) to a real client: its bytes and the result."""
    seen: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    body = BytesStream(*upstream) if isinstance(upstream, list) else upstream

    async def handler(request: web.Request) -> web.StreamResponse:
        head = StreamHead(Reply(200, {}, body), "p")  # type: ignore[arg-type]
        await head.open()
        response, result = await relay(request, head, options, 0.0)
        seen.set_result(result)
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/")
        body = await resp.read()
        result = await asyncio.wait_for(seen, 5)  # the relay may end just after the client
    return body, result


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


async def test_fast_path_renames_and_never_adds_done() -> None:
    chunk = b'data: {"model":"up","choices":[]}\n\n'
    options = RelayOptions(keepalive_seconds=0, rename_model=("up", "alias"))
    body, result = await _relay([chunk, chunk, DONE], options)
    assert body == b'data: {"model":"alias","choices":[]}\n\n' * 2 + DONE
    assert result.completed  # type: ignore[attr-defined]
    body, result = await _relay([chunk, chunk], options)  # no [DONE] from the upstream
    assert body.startswith(b'data: {"model":"alias","choices":[]}\n\n' * 2)
    assert b"[DONE]" not in body and b"without the end event" in body
    assert not result.completed and result.error.status == 502  # type: ignore[attr-defined]


async def test_nothing_after_the_terminal_event_is_relayed_or_waited_for() -> None:
    after = _Stalling(first=DONE + CONTENT)  # [DONE], an event after it, then silence
    options = RelayOptions(keepalive_seconds=0, drain_seconds=0.05)
    body, result = await _relay(after, options)
    assert body == DONE
    assert result.completed and result.error is None  # type: ignore[attr-defined]
    assert after.closed


class _Stalling:
    """A byte stream that sends one event, then nothing (but stays open)."""

    def __init__(self, first: bytes = CONTENT) -> None:
        self.closed = False
        self.first = first

    def __aiter__(self) -> _Stalling:
        self.sent = False
        return self

    async def __anext__(self) -> bytes:
        if not self.sent:
            self.sent = True
            return self.first
        await asyncio.sleep(3600)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def test_idle_upstream_ends_the_stream_with_an_error_event() -> None:
    stalling = _Stalling()
    options = RelayOptions(keepalive_seconds=0.05, idle_seconds=0.3)
    started = asyncio.get_running_loop().time()
    body, result = await _relay(stalling, options)
    took = asyncio.get_running_loop().time() - started
    assert body.startswith(CONTENT)
    assert b": keepalive" in body  # keepalives went out while waiting
    assert body.rstrip().endswith(b"}") and b"sent nothing for 0.3 s" in body
    assert result.error.status == 504  # type: ignore[attr-defined]
    assert stalling.closed and 0.25 < took < 3
