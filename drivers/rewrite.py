"""An OpenAI SSE stream from an upstream, some of its events rewritten by a driver.

Owns: cutting the upstream's bytes into events (proxy.streaming's parser), handing each data
payload to the driver's `Rewriter`, reading up to the first payload that goes out before the
driver returns (so an error the upstream hides in a 200 stream still fails over and cools
the credential), framing what comes out as SSE, and ending with `data: [DONE]`.
Does not own: what is rewritten (each driver's rewriter), relaying to the client
(proxy/streaming.py), or the decision an error makes (the exception's class).

Used by the drivers whose upstream is OpenAI-compatible but deviates (minimax, roo): the
request and the connection are the openai-compatibility driver's; only the events they must
touch are parsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from proxy.driver import ByteStream
from proxy.errors import StreamInterrupted, UpstreamError, UpstreamUnavailable
from proxy.sse import SSEParser, data_event, event_data
from proxy.streaming import DONE


class Rewriter(Protocol):
    """Turns one upstream data payload into the payloads to send (raising for an error)."""

    def feed(self, payload: bytes) -> list[bytes]: ...

    def end(self) -> list[bytes]: ...


#: Turns what a rewriter raised (not an `UpstreamError`) into the decision to take.
Convert = Callable[[Exception], Awaitable[UpstreamError]]


class RewrittenStream:
    """`ByteStream` of rewritten SSE. Call `open()` before returning it in a `Reply`."""

    def __init__(
        self, upstream: ByteStream, rewriter: Rewriter, provider: str, convert: Convert
    ) -> None:
        self._upstream = upstream
        self._chunks = aiter(upstream)
        self._rewriter = rewriter
        self._provider = provider
        self._convert = convert
        self._parser = SSEParser()
        self._head: list[bytes] = []
        self._ended = False

    async def open(self) -> None:
        """Read until a payload goes out. An error (in-band or not) raises; nothing was sent."""
        try:
            while not self._head and not self._ended:
                self._head = await self._step()
        except StreamInterrupted as exc:
            raise UpstreamUnavailable(exc.message, status=502, provider=self._provider) from exc
        except BaseException:
            await self._upstream.aclose()
            raise
        if not self._head:
            await self._upstream.aclose()
            raise UpstreamUnavailable(
                f"upstream {self._provider} ended the stream before any data",
                status=502,
                provider=self._provider,
            )

    async def _next(self) -> list[bytes]:
        """The payloads the next upstream read completes (maybe none); at the end, the tail."""
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            tail = self._parser.flush()
            out = self._feed([tail] if tail else [])
            return out + self._rewriter.end()
        return self._feed(self._parser.feed(chunk))

    def _feed(self, events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            data = event_data(event)
            if data is not None:
                out.extend(self._rewriter.feed(data))
        return out

    async def _step(self) -> list[bytes]:
        try:
            return await self._next()
        except UpstreamError:
            raise
        except Exception as exc:  # the rewriter's own failure type: the driver decides
            raise await self._convert(exc) from None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        head, self._head = self._head, []
        yield b"".join(data_event(p) for p in head)
        while not self._ended:
            payloads = await self._step()
            if payloads:
                yield b"".join(data_event(p) for p in payloads)
        yield DONE

    async def aclose(self) -> None:
        await self._upstream.aclose()
