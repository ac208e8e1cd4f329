"""The assembler: neutral events in, a client dialect's bytes out.

Owns: the `StreamEncoder` and `Codec` interfaces every dialect module implements, and the two
byte streams the core builds from a driver's neutral events: `EncodedStream` (the client's SSE,
one encoder call per event) and `RenderedBody` (every event summed into a `Completion`, then
one JSON body). Both are `ByteStream`s, so the failover loop, the stream head and the relay
treat a translated answer exactly like a passthrough one: nothing reaches the client before the
first event, and an error before it still fails over.
Does not own: any dialect's wire format (chat.py, messages.py, responses.py), deciding when to
translate (bridge.py).

Nothing is yielded before the driver's first event arrives, and an exception from the events
(an `UpstreamError`) passes through unchanged: the core ends the stream with the encoder's
`fail()` bytes, in the client's dialect.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any, Protocol

from proxy.dialects.neutral import (
    Completion,
    Event,
    Failure,
    Finish,
    Heartbeat,
    Request,
    UsageUpdate,
    merge_usage,
)
from proxy.errors import ProxyError


class EventStream(Protocol):
    """An async iterator of neutral events; `aclose()` releases the upstream (idempotent)."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class StreamEncoder(abc.ABC):
    """Turns one answer's neutral events into one dialect's SSE bytes, in its event grammar."""

    #: what the relay sends after `keepalive-seconds` of silence
    keepalive: bytes = b": keepalive\n\n"
    #: the usage and finish noted so far, for the closing events
    usage: UsageUpdate
    finish: Finish | None

    def note(self, event: Event) -> bytes:
        """Note a usage update or the finish (the closing events say them); sends nothing."""
        if isinstance(event, UsageUpdate):
            merge_usage(self.usage, event)
        elif isinstance(event, Finish):
            self.finish = event
        return b""

    @abc.abstractmethod
    def event(self, event: Event) -> bytes:
        """The bytes this event adds to the stream (often b"": some events are only noted)."""

    @abc.abstractmethod
    def end(self) -> bytes:
        """The closing events, after the last one."""

    @abc.abstractmethod
    def fail(self, error: ProxyError) -> bytes:
        """An in-band error that ends a stream which already started."""


class Codec(abc.ABC):
    """One client dialect: its request decoder, its stream encoder, its rendered body, its
    error body. One instance per dialect (`proxy.dialects.codec(name)`)."""

    name: str
    #: the SSE keepalive of streams in this dialect
    keepalive: bytes = b": keepalive\n\n"

    @abc.abstractmethod
    def decode_request(self, body: dict[str, Any]) -> Request:
        """The client's body as a neutral request; `InvalidRequest` (400) when it is wrong."""

    @abc.abstractmethod
    def encoder(self, model: str, request: Request) -> StreamEncoder:
        """A fresh encoder for one streamed answer."""

    @abc.abstractmethod
    def render(self, completion: Completion, model: str, request: Request) -> bytes:
        """A whole, non-streamed answer."""

    @abc.abstractmethod
    def error(self, error: ProxyError) -> tuple[int, bytes]:
        """The status and body a client of this dialect gets for `error` (before the stream)."""

    def stream_error(self, error: ProxyError) -> bytes:
        """An in-band error for a stream this codec did not encode (a passthrough one)."""
        return b"data: " + self.error(error)[1] + b"\n\n"


class EncodedStream:
    """`ByteStream` of a dialect's SSE over a driver's neutral events."""

    __slots__ = ("encoder", "events")

    def __init__(self, events: EventStream, encoder: StreamEncoder) -> None:
        self.events = events
        self.encoder = encoder

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        encode = self.encoder.event
        async for event in self.events:
            if isinstance(event, Failure):
                raise event.error
            if isinstance(event, Heartbeat):
                yield self.encoder.keepalive  # the upstream is alive: feeds the idle watchdog
                continue
            data = encode(event)
            if data:
                yield data
        yield self.encoder.end()

    async def aclose(self) -> None:
        await self.events.aclose()


class EncodedBatches(EncodedStream):
    """`EncodedStream` over batches of events (a list per upstream read, as a chat upstream's
    decoder gives them): one write per read instead of one per event."""

    __slots__ = ("batches",)

    def __init__(self, batches: AsyncIterator[list[Event]], close: Any, encoder: StreamEncoder):
        super().__init__(IteratorEvents(_flatten(batches), close), encoder)
        self.batches = batches

    async def _iterate(self) -> AsyncIterator[bytes]:
        encode = self.encoder.event
        async for batch in self.batches:
            data = b"".join([encode(event) for event in batch])
            if data:
                yield data
        yield self.encoder.end()

    async def aclose(self) -> None:
        aclose = getattr(self.batches, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.events.aclose()  # the upstream body


async def _flatten(batches: AsyncIterator[list[Event]]) -> AsyncIterator[Event]:
    async for batch in batches:
        for event in batch:
            yield event


class RenderedBody:
    """`ByteStream` of one rendered answer: every event read, then one body."""

    __slots__ = ("codec", "events", "model", "request")

    def __init__(self, events: EventStream, codec: Codec, model: str, request: Request) -> None:
        self.events = events
        self.codec = codec
        self.model = model
        self.request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        completion = await collect(self.events)
        yield self.codec.render(completion, self.model, self.request)

    async def aclose(self) -> None:
        await self.events.aclose()


async def collect(events: EventStream) -> Completion:
    """Every event of an answer summed up (a `Failure` raises its error)."""
    completion = Completion()
    try:
        async for event in events:
            completion.add(event)
    finally:
        await events.aclose()
    return completion


class IteratorEvents:
    """`EventStream` over an async iterator (e.g. an async generator) and a close callback."""

    __slots__ = ("_close", "_iterator")

    def __init__(self, iterator: AsyncIterator[Event], close: Any = None) -> None:
        self._iterator = iterator
        self._close = close

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterator

    async def aclose(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._close is not None:
            result = self._close()
            if hasattr(result, "__await__"):
                await result
