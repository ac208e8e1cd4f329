"""The bridge: for one client request, whether each attempt passes through or is translated.

Owns: the decision per attempt (the client's dialect is one the driver speaks natively →
passthrough, the body untouched but `model`; else the request decoded once into the neutral
model and handed over as a chat body or a neutral `call.request`), and turning the driver's
answer into the client's dialect (a chat upstream's bytes decoded into events, a translating
driver's events taken as they are; then encoded by the client's codec).
Does not own: the codecs (chat.py, messages.py, responses.py), the assembler's byte streams
(assembler.py), the failover loop that calls this (failover.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from proxy.dialects import chat
from proxy.dialects.assembler import (
    Codec,
    EncodedBatches,
    EncodedStream,
    EventStream,
    IteratorEvents,
    RenderedBody,
)
from proxy.dialects.neutral import Event, Request
from proxy.driver import CHAT, Call, Driver, Reply


class Bridge:
    """One client request in `codec`'s dialect, addressed to `endpoint` (e.g. "messages")."""

    __slots__ = ("_neutral", "body", "codec", "dialect", "endpoint", "stream")

    def __init__(self, codec: Codec, endpoint: str, body: dict[str, Any], stream: bool) -> None:
        self.codec = codec
        self.dialect = codec.name
        self.endpoint = endpoint
        self.body = body
        self.stream = stream
        self._neutral: Request | None = None

    def neutral(self) -> Request:
        """The client's request in the neutral model, decoded on first use (400 if wrong)."""
        if self._neutral is None:
            self._neutral = self.codec.decode_request(self.body)
        return self._neutral

    def native(self, driver: Driver) -> bool:
        """Whether the driver's upstream speaks the client's dialect at this endpoint."""
        return self.dialect in driver.dialects and self.endpoint in driver.endpoints

    def serves(self, driver: Driver) -> bool:
        """Whether the driver can answer this request, natively or translated."""
        if self.native(driver):
            return True
        return CHAT in driver.endpoints and (not driver.dialects or "chat" in driver.dialects)

    def call(self, driver: Driver, model: str, headers: Mapping[str, str], request_id: str) -> Call:
        if self.dialect in driver.dialects and self.endpoint in driver.endpoints:  # passthrough
            return Call(self.endpoint, model, {**self.body, "model": model}, self.stream,
                        headers, request_id, self.dialect)  # fmt: skip
        request = replace(self.neutral(), model=model, stream=self.stream)
        if driver.dialects:  # a byte driver speaking chat: a chat body made from the request
            body = chat.encode_request(request)
            return Call(CHAT, model, body, self.stream, headers, request_id, self.dialect, request)
        body = {**self.body, "model": model}
        return Call(self.endpoint, model, body, self.stream, headers, request_id, self.dialect,
                    request)  # fmt: skip

    def reply(self, call: Call, reply: Reply, provider: str) -> Reply:
        """The driver's answer as bytes in the client's dialect."""
        request = call.request
        if request is None:
            return reply  # passthrough
        events = reply.events
        if events is None:  # a chat upstream's bytes
            body = reply.body
            if self.stream:
                batches = chat.decode_stream(body, provider)
                encoder = self.codec.encoder(call.model, request)
                out = Reply(200, {}, EncodedBatches(batches, body.aclose, encoder))
                out.host, out.hosts_failed = reply.host, reply.hosts_failed
                return out
            events = IteratorEvents(_completion_events(reply), body.aclose)
        out = translated(self.codec, events, call.model, request, self.stream)
        out.host, out.hosts_failed = reply.host, reply.hosts_failed  # for the access line
        return out


def translated(
    codec: Codec, events: EventStream, model: str, request: Request, stream: bool
) -> Reply:
    """A `Reply` whose body is `events` encoded by `codec` (SSE, or one rendered body)."""
    if stream:
        encoder = codec.encoder(model, request)
        return Reply(200, {}, EncodedStream(events, encoder))
    return Reply(200, {}, RenderedBody(events, codec, model, request))


async def _completion_events(reply: Reply) -> AsyncIterator[Event]:
    for event in chat.decode_completion(await reply.read()):
        yield event
