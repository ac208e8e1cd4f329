"""The fake OpenAI upstream every target talks to: a raw asyncio HTTP/1.1 server on uvloop.

Owns: answering `POST …/chat/completions` (JSON, or SSE when the body says `"stream": true`)
and `GET …/models`, with a configurable delay before a JSON answer, time to first event, event
count and spacing, and re-cutting of the SSE bytes into pieces of a given size; and
`POST /_bench/config`, which the orchestrator uses to set those knobs between scenarios.
Does not own: measuring anything (loadgen.py), starting itself (targets.py).

Not aiohttp on purpose: the upstream shares a core with the load generator, so every
microsecond it spends is one the measurement does not get. A protocol class with a hand
parser costs a fraction of aiohttp's server per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

MODEL = "bench-model"


@dataclass(slots=True)
class Shape:
    """How the upstream answers; set with POST /_bench/config."""

    latency: float = 0.0  # seconds before a JSON answer
    ttft: float = 0.0  # seconds from the response head to the first SSE event
    events: int = 50  # content events per stream (usage event and [DONE] come after)
    gap: float = 0.0  # seconds between events (0: written back to back)
    split: int = 0  # re-cut each event into pieces of this many bytes (0: whole events)
    content: str = "tok "  # the text of each content event


def _completion(shape: Shape) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )


def _events(shape: Shape, usage_null: bool) -> list[bytes]:
    """The stream's events; with `usage_null`, content chunks carry `"usage":null` as OpenAI's
    do once a client asks for `stream_options.include_usage`."""
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": shape.content}, "finish_reason": None}],
    }
    if usage_null:
        chunk["usage"] = None
    contents = []
    for i in range(shape.events):  # each event differs: LiteLLM aborts on 100 repeats
        chunk["choices"] = [
            {"index": 0, "delta": {"content": f"{shape.content}{i}"}, "finish_reason": None}
        ]
        contents.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": shape.events, "total_tokens": 0},
    }
    tail = b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    return [*contents, tail]


def _chunked(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "b"}]}
)


class Upstream:
    """Shared state: the current shape and its pre-built answers."""

    def __init__(self, shape: Shape | None = None) -> None:
        self.set(shape or Shape())

    def set(self, shape: Shape) -> None:
        self.shape = shape
        body = _completion(shape)
        self.json_answer = _JSON_HEAD % len(body) + body
        self.sse_pieces = [self._pieces(shape, False), self._pieces(shape, True)]

    @staticmethod
    def _pieces(shape: Shape, usage_null: bool) -> list[bytes]:
        events = _events(shape, usage_null)
        if shape.split > 0:
            whole = b"".join(events)
            events = [whole[i : i + shape.split] for i in range(0, len(whole), shape.split)]
        return [_chunked(e) for e in events]


class _Conn(asyncio.Protocol):
    """One client connection: parse requests (Content-Length bodies), answer them in order."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if len(self.buf) < end + 4 + length:
            return  # wait for the rest of the body
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        self._answer(method, path, body, close)

    def _answer(self, method: str, path: str, body: bytes, close: bool) -> None:
        t = self.transport
        if t is None:
            return
        if method == "POST" and path == "/_bench/config":
            known = {f.name for f in fields(Shape)}
            self.up.set(Shape(**{k: v for k, v in orjson.loads(body).items() if k in known}))
            t.write(_JSON_HEAD % 2 + b"{}")
        elif method == "GET" and path.endswith("/models"):
            t.write(_JSON_HEAD % len(_MODELS) + _MODELS)
        elif method == "POST" and (b'"stream":true' in body or b'"stream": true' in body):
            self.busy = True
            usage = b'"include_usage":true' in body or b'"include_usage": true' in body
            self.task = asyncio.ensure_future(self._stream(close, usage))
            return
        elif method == "POST":
            if self.up.shape.latency > 0:
                self.busy = True
                self.task = asyncio.ensure_future(self._late_json(close))
                return
            t.write(self.up.json_answer)
        else:
            t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        self._done(close)

    def _done(self, close: bool) -> None:
        self.busy = False
        self.task = None
        if close and self.transport is not None:
            self.transport.close()
        elif self.buf:
            self._next()

    async def _late_json(self, close: bool) -> None:
        await asyncio.sleep(self.up.shape.latency)
        if self.transport is not None:
            self.transport.write(self.up.json_answer)
        self._done(close)

    async def _stream(self, close: bool, usage_null: bool) -> None:
        shape, pieces = self.up.shape, self.up.sse_pieces[usage_null]
        t = self.transport
        if t is None:
            return
        t.write(_SSE_HEAD)
        if shape.ttft > 0:
            await asyncio.sleep(shape.ttft)
        if shape.gap <= 0:
            t.write(b"".join(pieces) + b"0\r\n\r\n")
        else:
            for piece in pieces:
                if self.transport is None:
                    return
                t.write(piece)
                await asyncio.sleep(shape.gap)
            t.write(b"0\r\n\r\n")
        self._done(close)


async def serve(host: str, port: int, shape: Shape | None = None) -> asyncio.Server:
    """Start the upstream on the running loop; returns the listening server."""
    up = Upstream(shape)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Conn(up), host, port, backlog=1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="keyrail bench: fake OpenAI upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    for f in fields(Shape):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    shape = Shape(**{k: getattr(args, k) for k in asdict(Shape())})

    async def run() -> None:
        server = await serve(args.host, args.port, shape)
        print(f"upstream on http://{args.host}:{args.port}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        _run(run())


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a keyrail dependency on POSIX
        asyncio.run(coro)


if __name__ == "__main__":
    main()
