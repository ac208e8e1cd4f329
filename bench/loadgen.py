"""The load generator: a fixed number of aiohttp clients posting for a bounded time.

Owns: building the request body of a scenario, keeping `concurrency` requests in flight until
a deadline (and at most `max_requests`), and recording per request its latency, its time to
the first SSE data event and the gaps between events. SSE is split by keyrail's own
`SSEParser`, so the bench counts events exactly as the proxy sees them.
Does not own: which target is loaded when, CPU accounting (runner.py), statistics (stats.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from proxy.sse import SSEParser, event_data

MODEL = "bench-model"
_MESSAGE_STOP = b'{"type":"message_stop"}'
TIMEOUT = aiohttp.ClientTimeout(total=60)


def request_body(stream: bool, body_bytes: int = 0) -> bytes:
    """A chat request; `body_bytes` pads the user message to about that size. (The same body
    is a valid Anthropic Messages request: model, messages, max_tokens, stream.)"""
    text = "Say hello." if body_bytes <= 0 else "x" * body_bytes
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


@dataclass(slots=True)
class Samples:
    """Everything one slice of load saw. Times are seconds."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    events: int = 0
    errors: int = 0
    wall: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def extend(self, other: Samples) -> None:
        self.latency += other.latency
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.events += other.events
        self.errors += other.errors
        self.wall += other.wall
        for k, v in other.error_kinds.items():
            self.error_kinds[k] = self.error_kinds.get(k, 0) + v

    @property
    def requests(self) -> int:
        return len(self.latency)


class Client:
    """One target's pooled session; `run` loads it for a while and returns the samples."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        self.url = url
        self.headers = {"Content-Type": "application/json", **headers}
        self.concurrency = concurrency
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
            timeout=TIMEOUT,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self.session.close()

    async def run(
        self, body: bytes, stream: bool, seconds: float, max_requests: int = 1_000_000
    ) -> Samples:
        """Keep `concurrency` requests in flight for `seconds`; in-flight ones finish."""
        out = Samples()
        started = time.perf_counter()
        deadline = started + seconds
        budget = [max_requests]

        async def worker() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                await self._one(body, stream, out)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        out.wall = time.perf_counter() - started
        return out

    async def _one(self, body: bytes, stream: bool, out: Samples) -> None:
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    self._error(out, f"http {resp.status}")
                    return
                if not stream:
                    await resp.read()
                    out.latency.append(time.perf_counter() - t0)
                    return
                parser = SSEParser()
                first: float | None = None
                last = 0.0
                done = False
                events = 0
                gaps: list[float] = []
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    for event in parser.feed(chunk):
                        data = event_data(event)
                        if data is None:
                            continue
                        if data == b"[DONE]" or data == _MESSAGE_STOP:  # chat, messages
                            done = True
                            continue
                        events += 1
                        if first is None:
                            first = now
                        else:
                            gaps.append(now - last)
                        last = now
                if not done or first is None:
                    self._error(out, "stream ended without [DONE]")
                    return
                out.latency.append(time.perf_counter() - t0)
                out.ttft.append(first - t0)
                out.gaps += gaps
                out.events += events
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(out, type(exc).__name__)

    @staticmethod
    def _error(out: Samples, kind: str) -> None:
        out.errors += 1
        out.error_kinds[kind] = out.error_kinds.get(kind, 0) + 1
