"""A fake OpenAI-compatible upstream on 127.0.0.1, scriptable per request.

It speaks the real wire format (JSON bodies, SSE with `data:` lines and `[DONE]`), records
every request it gets, and can be told to answer with errors, split its SSE at chosen byte
boundaries, use CRLF, send comments and `event:` lines, stall, or break mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Seen:
    """One request the fake upstream received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Script:
    """How the fake answers: a status, a body, or a stream of events."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    raw: bytes | None = None
    #: for streams: the SSE bytes to send, as chunks (None: built from `text`)
    chunks: list[bytes] | None = None
    text: str = "Hello from the fake upstream."
    tool_calls: list[dict[str, Any]] | None = None
    delay: float = 0.0  # before answering
    gap: float = 0.0  # between stream chunks
    stall_after: int | None = None  # stop sending (but keep the connection) after N chunks
    break_after: int | None = None  # drop the connection after N chunks
    crlf: bool = False
    split: int | None = None  # re-cut the stream into pieces of this many bytes


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[Script | None]]


class FakeOpenAI:
    """`app` is an aiohttp app; `script` decides each answer (default: a normal completion)."""

    def __init__(self, name: str = "fake", models: tuple[str, ...] = ("gpt-4o-mini",)) -> None:
        self.name = name
        self.models = list(models)
        self.seen: list[Seen] = []
        self.script: Callable[[Seen], Script] = lambda _seen: Script()
        self.disconnected = asyncio.Event()
        self.request_started = asyncio.Event()
        self.active = 0
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self._models)
        for path in ("chat/completions", "completions", "embeddings", "responses"):
            self.app.router.add_post(f"/v1/{path}", self._post)

    async def _models(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.path, dict(request.headers), {}))
        data = [
            {"id": m, "object": "model", "created": 1, "owned_by": self.name} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        seen = Seen(request.path, dict(request.headers), body)
        self.seen.append(seen)
        self.request_started.set()
        self.active += 1
        try:
            script = self.script(seen)
            if script.delay:
                await asyncio.sleep(script.delay)
            if script.status != 200 or script.json is not None or script.raw is not None:
                return _plain(script)
            if request.path.endswith("/embeddings"):
                return web.json_response(_embedding(body))
            if body.get("stream"):
                return await self._stream(request, body, script)
            return web.json_response(_completion(body, script), headers=script.headers)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        finally:
            self.active -= 1

    async def _stream(
        self, request: web.Request, body: dict[str, Any], script: Script
    ) -> web.StreamResponse:
        chunks = script.chunks if script.chunks is not None else sse_chunks(body, script)
        if script.crlf:
            chunks = [c.replace(b"\n", b"\r\n") for c in chunks]
        if script.split:
            whole = b"".join(chunks)
            chunks = [whole[i : i + script.split] for i in range(0, len(whole), script.split)]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            if script.break_after is not None and i == script.break_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if script.stall_after is not None and i == script.stall_after:
                await asyncio.sleep(3600)
            await response.write(chunk)
            if script.gap:
                await asyncio.sleep(script.gap)
        await response.write_eof()
        return response


def _plain(script: Script) -> web.Response:
    if script.raw is not None:
        return web.Response(status=script.status, body=script.raw, headers=script.headers)
    data = script.json
    if data is None:
        data = {"error": {"message": f"fake error {script.status}", "type": "fake", "code": None}}
    return web.Response(
        status=script.status,
        body=orjson.dumps(data),
        headers={"Content-Type": "application/json", **script.headers},
    )


def _completion(body: dict[str, Any], script: Script) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text}
    finish = "stop"
    if script.tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": script.tool_calls}
        finish = "tool_calls"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def _embedding(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": body.get("model"),
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def sse_chunks(body: dict[str, Any], script: Script) -> list[bytes]:
    """A realistic OpenAI stream for the request: role, content words (or tool calls), usage."""
    model = str(body.get("model"))
    out = [chunk(model, {"role": "assistant", "content": ""})]
    if script.tool_calls:
        for i, call in enumerate(script.tool_calls):
            first = {"index": i, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            out.append(chunk(model, {"tool_calls": [first]}))
            args = call["function"]["arguments"]
            for j in range(0, len(args), 5):
                piece = {"index": i, "function": {"arguments": args[j : j + 5]}}
                out.append(chunk(model, {"tool_calls": [piece]}))
        out.append(chunk(model, {}, "tool_calls"))
    else:
        for word in script.text.split(" "):
            out.append(chunk(model, {"content": word + " "}))
        out.append(chunk(model, {}, "stop"))
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                "model": model, "choices": [], "usage": usage}  # fmt: skip
        out.append(b"data: " + orjson.dumps(data) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


class FakeClock:
    """A clock that moves only when told: `Scheduler(clock=...)` or `scheduler.clock = ...`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
