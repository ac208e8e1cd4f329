"""The fault-injecting upstream: an OpenAI-compatible server on 127.0.0.1 whose every answer
is a fault chosen by a plan, recorded with what it saw and when its connection closed.

Faults before the first byte (keyrail may still fail over): 429 with every hint form, 5xx,
a reset before the headers, a stall before the first byte, a redirect, a gzip bomb, an
in-band error as the first event, an empty stream. Faults after it (keyrail must not
replay): a reset, a stall between events, a truncated event, a 64 MiB event, a stream that
echoes the key. And the good ones: a normal answer, and a slow drip of one byte at a time.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

MiB = 1024 * 1024

BEFORE_FIRST_BYTE = (
    "429-retry-after", "429-http-date", "429-retry-after-ms", "429-ratelimit-reset",
    "429-body-hint", "429-no-hint", "500", "503", "reset-before-headers",
    "stall-before-first-byte", "redirect", "gzip-bomb", "error-first-event", "empty-stream",
)  # fmt: skip
AFTER_FIRST_BYTE = (
    "reset-after-first-event", "stall-between-events", "truncated-event", "huge-event",
    "key-echo",
)  # fmt: skip
GOOD = ("ok", "slow-drip", "slow-drip-forever")


def event(content: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content} if content else {},
                     "finish_reason": finish}],
    }  # fmt: skip
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


STREAM = [event("one "), event("two "), event("three"), event("", "stop"), b"data: [DONE]\n\n"]
COMPLETION = {
    "id": "c", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
}  # fmt: skip


@functools.cache
def gzip_bomb(gib: int = 1) -> bytes:
    """~1 MB of gzip inflating to `gib` GiB of zeros (no trailer: a reader that stops at its
    limit never gets there)."""
    zeros = bytes(16 * MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    unit = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes from here on
    return first + unit * (64 * gib - 1)


@dataclass
class Served:
    """One request the upstream got."""

    provider: str
    key: str
    fault: str
    marker: str
    stream: bool
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    cancelled: bool = False  # its connection was closed by keyrail before the answer ended
    done: asyncio.Event = field(default_factory=asyncio.Event)


#: (provider, key, body) -> the fault to inject
Plan = Callable[[str, str, dict[str, object]], str]


class FaultyUpstream:
    def __init__(self, plan: Plan, seed: int = 14) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.served: list[Served] = []
        self._arrivals: dict[str, asyncio.Future[Served]] = {}
        self.open = 0
        self.app = web.Application()
        self.app.router.add_post("/{provider}/v1/chat/completions", self._handle)

    def arrival(self, marker: str) -> asyncio.Future[Served]:
        """Resolves when a request carrying `marker` arrives."""
        if marker not in self._arrivals:
            self._arrivals[marker] = asyncio.get_running_loop().create_future()
        return self._arrivals[marker]

    def faults(self) -> int:
        return sum(1 for s in self.served if s.fault not in GOOD)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        messages = body.get("messages") or [{}]
        marker = str(messages[-1].get("content", ""))
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        provider = request.match_info["provider"]
        fault = self.plan(provider, key, body)
        served = Served(provider, key, fault, marker, body.get("stream") is True)
        self.served.append(served)
        arrival = self._arrivals.get(marker)
        if arrival is not None and not arrival.done():
            arrival.set_result(served)
        self.open += 1
        try:
            return await self._answer(request, served)
        except (asyncio.CancelledError, ConnectionError):
            served.cancelled = True
            raise
        finally:
            served.ended = time.monotonic()
            served.done.set()
            self.open -= 1

    async def _answer(self, request: web.Request, served: Served) -> web.StreamResponse:
        fault = served.fault
        if fault.startswith("429"):
            return _rate_limited(fault)
        if fault in ("500", "503"):
            return web.json_response(
                {"error": {"message": "upstream trouble", "type": "server_error"}},
                status=int(fault),
            )
        if fault == "reset-before-headers":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if fault == "stall-before-first-byte":
            await asyncio.sleep(3600)
        if fault == "redirect":
            raise web.HTTPFound("http://127.0.0.1:9/elsewhere")
        if fault == "gzip-bomb":
            kind = "text/event-stream" if served.stream else "application/json"
            return web.Response(
                body=gzip_bomb(), headers={"Content-Encoding": "gzip", "Content-Type": kind}
            )
        if not served.stream:
            if fault == "key-echo":
                return web.json_response({**COMPLETION, "note": f"key {served.key} exhausted"})
            return web.json_response(COMPLETION)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if fault == "error-first-event":
            await response.write(b'data: {"error":{"message":"overloaded","code":503}}\n\n')
            return response
        if fault == "empty-stream":
            return response
        if fault == "slow-drip":
            for byte in b"".join(STREAM):
                await response.write(bytes([byte]))
                await asyncio.sleep(0)
            return response
        await response.write(STREAM[0])
        if fault == "slow-drip-forever":  # flowing until the other end leaves
            while True:
                await asyncio.sleep(0.02)
                await response.write(event("more "))
        if fault == "reset-after-first-event":
            assert request.transport is not None
            request.transport.abort()
            return response
        if fault == "stall-between-events":
            await asyncio.sleep(3600)
        if fault == "truncated-event":
            await response.write(STREAM[1][:20])
            return response
        if fault == "huge-event":
            await response.write(b'data: {"x":"')
            piece = b"x" * (256 * 1024)
            for _ in range(64 * 4):
                await response.write(piece)
            await response.write(b'"}\n\n')
            return response
        if fault == "key-echo":
            cut = self.rng.randrange(1, len(served.key))
            echo = b'data: {"error":{"message":"key ' + served.key.encode() + b' exhausted"}}\n\n'
            split = echo.index(served.key.encode()) + cut
            await response.write(echo[:split])
            await response.write(echo[split:])
            return response
        for data in STREAM[1:]:
            await response.write(data)
        return response


def _rate_limited(fault: str) -> web.Response:
    headers: dict[str, str] = {}
    message = "rate limited"
    if fault == "429-retry-after":
        headers["Retry-After"] = "1"
    elif fault == "429-http-date":
        headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
    elif fault == "429-retry-after-ms":
        headers["retry-after-ms"] = "500"
    elif fault == "429-ratelimit-reset":
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = "1s"
    elif fault == "429-body-hint":
        message = "Rate limit reached. Please try again after 1s."
    return web.json_response(
        {"error": {"message": message, "type": "rate_limit_error", "code": "rate_limited"}},
        status=429,
        headers=headers,
    )
