"""Streaming: SSE at the byte level, and the relay of an upstream stream to the client.

Owns: the head of a stream (everything up to the first data event, read before any byte goes to the
client so that failover is still possible), the relay (keepalive comments after silence,
`X-Accel-Buffering: no`, usage recorded and hidden from clients that did not ask for it,
`force-mapping` of `model`, an in-band error event when the stream breaks), where a stream
ends (`StreamEnd`: its terminal event, not the upstream's end of body), and formatting SSE.
Does not own: splitting bytes into SSE events and its size limits (sse.py), choosing or
retrying credentials (failover.py), HTTP routing (http/handlers.py).

Passthrough costs one `find` per chunk and one slice per event; JSON is parsed only for the
one event that carries usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy import shutdown
from proxy.driver import BODY_LIMIT, Reply, inflated_within
from proxy.errors import ProxyError, StreamInterrupted, UpstreamError, UpstreamUnavailable
from proxy.redact import REDACTOR, StreamMask
from proxy.sse import SSEParser as SSEParser  # re-exported: its home was this module
from proxy.sse import data_event as data_event
from proxy.sse import event_data as event_data

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def error_event(exc: ProxyError) -> bytes:
    return data_event(exc.body())


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_from(self, usage: Any) -> None:
        if isinstance(usage, dict):
            # chat/completions spell it prompt/completion; /v1/responses input/output.
            self.prompt_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            self.completion_tokens = int(
                usage.get("completion_tokens") or usage.get("output_tokens") or 0
            )


def usage_in(payload: bytes) -> Any:
    """The `usage` object of a JSON payload (chat chunk, response, responses event), or None."""
    if b'"usage"' not in payload:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):  # responses API events
        usage = data["response"].get("usage")
    return usage


def _is_usage_only(payload: bytes) -> bool:
    return b'"choices":[]' in payload or b'"choices": []' in payload


class StreamHead:
    """An upstream stream opened as far as its first data event.

    Reading the head is part of the attempt: an error or an empty stream before it is an
    `UpstreamError` that still allows failover, because nothing has reached the client.
    """

    def __init__(
        self,
        reply: Reply,
        provider: str,
        parser: SSEParser | None = None,
        body_limit: int = BODY_LIMIT,
        secret: str = "",
    ) -> None:
        self.reply = reply
        self.provider = provider
        self.parser = parser or SSEParser()
        self.events: list[bytes] = []
        self._chunks: AsyncIterator[bytes] = aiter(reply.body)
        if "Content-Encoding" in reply.headers:
            # A compressed stream inflates without network waits: counted and shared (an
            # uncompressed one is bounded by the parser's limits and paced by the network).
            self._chunks = inflated_within(self._chunks, body_limit, provider)
        if StreamMask.wanted(secret):
            # An upstream may echo the key it was sent ("key pk-… exhausted") in its events.
            self._chunks = _masked(self._chunks, StreamMask(secret))

    async def open(self) -> None:
        while True:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                tail = self.parser.flush()
                if tail:
                    self.events.append(tail)
                if any(event_data(e) is not None for e in self.events):
                    return
                raise UpstreamUnavailable(
                    f"upstream {self.provider} ended the stream before any data",
                    status=502,
                    provider=self.provider,
                ) from None
            except StreamInterrupted as exc:
                # Nothing reached the client yet, so this is an ordinary failover-able failure.
                raise UpstreamUnavailable(exc.message, status=502, provider=self.provider) from exc
            events = self.feed(chunk)
            for i, event in enumerate(events):
                data = event_data(event)
                if data is None:
                    continue  # upstream comments ("processing") before the first data
                if data.startswith(b'{"error"'):
                    raise _in_band_error(data, self.provider)
                self.events.extend(events[i:])  # the rest of this chunk goes out with it
                return

    def feed(self, chunk: bytes) -> list[bytes]:
        """The parser's events; an event past its limits is this provider's failure."""
        try:
            return self.parser.feed(chunk)
        except StreamInterrupted as exc:  # past the parser's limits
            message = exc.message.replace("upstream sent", f"upstream {self.provider} sent", 1)
            raise UpstreamUnavailable(message, status=502, provider=self.provider) from None

    def rest(self) -> AsyncIterator[bytes]:
        return self._chunks


async def _masked(chunks: AsyncIterator[bytes], mask: StreamMask) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk := mask.feed(chunk):
            yield chunk
    if tail := mask.flush():
        yield tail


def _in_band_error(data: bytes, provider: str) -> UpstreamError:
    """An `{"error": ...}` first event in a 200 stream (vLLM, sglang): a failed attempt."""
    from proxy.errors import classify_upstream

    status = 502
    try:
        err = orjson.loads(data).get("error")
        code = err.get("code") if isinstance(err, dict) else None
        if isinstance(code, int) and 400 <= code < 600:
            status = code
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return classify_upstream(status, {}, data, provider=provider)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a dialect's stream says it is finished: its terminal event.

    `markers`: byte strings one of which any terminal event contains; a chunk holding none of
    them is not looked at event by event (the relay's fast path). `is_terminal(event)` then
    decides exactly, on one whole event (LF-framed, as the parser gives it).

    A stream is complete once its terminal event has been relayed, whatever the client or
    the upstream do next; a stream whose upstream ends before it is a failure.
    """

    markers: tuple[bytes, ...]
    is_terminal: Callable[[bytes], bool]


def _is_done(event: bytes) -> bool:
    return event_data(event) == b"[DONE]"


#: chat/completions and completions: `data: [DONE]`.
DONE_END = StreamEnd((b"[DONE]",), _is_done)


def typed_end(*types: str) -> StreamEnd:
    """The end of a dialect whose events name their type (`event: T`, and `"type": "T"` in the
    data): any of `types` ends the stream."""
    names = frozenset(types)

    def is_terminal(event: bytes) -> bool:
        for line in event.split(b"\n"):
            if line.startswith(b"event:") and line[6:].strip().decode(errors="replace") in names:
                return True
        data = event_data(event)
        if data is None:
            return False
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        return isinstance(payload, dict) and payload.get("type") in names

    return StreamEnd(tuple(name.encode() for name in sorted(names)), is_terminal)


#: What ends a /v1/responses stream (OpenAI's Responses API streaming events).
RESPONSES_END = typed_end("response.completed", "response.failed", "response.incomplete")
#: What ends an Anthropic Messages stream.
MESSAGES_END = typed_end("message_stop")


@dataclass(slots=True)
class RelayResult:
    """What the relay saw, for metrics and the access log. The caller makes it and keeps it:
    it stays true when the client leaves in the middle of the relay (then `completed` says
    whether the answer was already whole)."""

    ttft: float | None = None
    usage: Usage = field(default_factory=Usage)
    error: UpstreamError | None = None
    #: the terminal event (or, without a `StreamEnd`, the end of body) reached the client
    completed: bool = False


@dataclass(slots=True)
class RelayOptions:
    keepalive_seconds: float = 15.0
    #: end the stream with an error event after this long without an upstream byte (0: never).
    #: Watched here, once per interval, instead of by a socket timer reset on every chunk.
    idle_seconds: float = 0.0
    #: the client asked for `stream_options.include_usage`: pass the usage chunk through
    client_wants_usage: bool = True
    #: `force-mapping`: (upstream model, client model) to rewrite in every event
    rename_model: tuple[str, str] | None = None
    #: the stream's terminal event (a dialect's); None: the upstream's end of body ends it
    end: StreamEnd | None = DONE_END
    #: after the terminal event, how long the upstream's end of body is waited for (so that
    #: its connection can be reused; the client's answer is already complete by then)
    drain_seconds: float = 1.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    #: what silence is filled with (the client's dialect: a comment, or Messages' `ping`)
    keepalive: bytes = KEEPALIVE
    #: the in-band error that ends a started stream, in the client's dialect
    error_event: Callable[[ProxyError], bytes] = error_event


async def relay(
    request: web.Request,
    head: StreamHead,
    options: RelayOptions,
    started: float,
    result: RelayResult | None = None,
) -> tuple[web.StreamResponse, RelayResult]:
    """Send the stream to the client: head first, then events as they come, up to the
    terminal event (`options.end`). `started` is the attempt's `time.perf_counter()`; TTFT is
    taken when the first byte goes to the client. Pass `result` to keep what was seen when
    the client leaves in the middle (the relay then ends by `CancelledError`)."""
    loop = asyncio.get_running_loop()
    result = result if result is not None else RelayResult()
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **options.extra_headers})
    await response.prepare(request)
    rename = model_renamer(options.rename_model)
    watch = _Watch(loop.time())
    watchdog = (
        asyncio.create_task(_watchdog(response, options, watch, asyncio.current_task()))
        if options.keepalive_seconds > 0 or options.idle_seconds > 0
        else None
    )
    end = options.end
    markers = end.markers if end is not None else ()
    ended = False  # the terminal event is among the bytes to send (nothing after it is)
    parser = head.parser

    def events_out(events: Iterable[bytes]) -> bytes:
        """The bytes to send for whole events: usage noted (and hidden if not asked for)."""
        nonlocal ended
        out: list[bytes] = []
        for event in events:
            if ended:
                break  # whatever an upstream sends after its terminal event is not relayed
            if event.startswith(b":"):
                continue  # upstream comments: we send our own keepalives
            data = event_data(event)
            if data is None:
                out.append(event)  # e.g. an `event:`/`id:` only event: pass it on
                continue
            if b'"usage"' in data and b'"usage":null' not in data:
                usage = usage_in(data)
                if usage is not None:
                    result.usage.add_from(usage)
                    if not options.client_wants_usage and _is_usage_only(data):
                        continue
            if end is not None and any(m in event for m in markers) and end.is_terminal(event):
                ended = True
            out.append(rename(event) if rename else event)
        return b"".join(out)

    try:
        data = events_out(head.events)
        if data:
            result.ttft = time.perf_counter() - started
            result.completed = ended  # handed to the socket before the write's await
            await response.write(data)
            watch.last_write = loop.time()
        try:
            watch.reading = not ended
            if not ended:
                async for chunk in head.rest():
                    watch.reading = False
                    watch.last_read = loop.time()
                    if not parser.buffered and _plain_events(chunk, markers):
                        # The common case: whole content events, nothing to note or hide. The
                        # bytes go out as they came (renamed if asked), not split into events.
                        data = rename(chunk) if rename else chunk
                    else:
                        data = events_out(head.feed(chunk))
                    if data:
                        if result.ttft is None:
                            result.ttft = time.perf_counter() - started
                        result.completed = ended
                        await response.write(data)
                        watch.last_write = loop.time()
                    if ended:
                        break  # complete: the upstream's end of body is not waited for
                    watch.last_read = watch.last_write if data else watch.last_read
                    watch.reading = True
            watch.reading = False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not watch.idled or task is None or task.uncancel() > 0:
                raise  # the client went away (or both): not ours to swallow
            raise UpstreamUnavailable(
                f"upstream {head.provider} sent nothing for {options.idle_seconds:g} s",
                status=504,
                provider=head.provider,
            ) from None
        if not ended:
            tail = parser.flush()  # an event the upstream did not end with a blank line
            if tail and end is not None and not end.is_terminal(tail):
                raise UpstreamUnavailable(
                    f"upstream {head.provider} cut its stream in the middle of an event",
                    status=502,
                    provider=head.provider,
                )
            data = events_out((tail,)) if tail else b""
            if data:
                if result.ttft is None:
                    result.ttft = time.perf_counter() - started
                await response.write(data)
            if end is not None and not ended:
                raise UpstreamUnavailable(
                    f"upstream {head.provider} ended its stream without the end event",
                    status=502,
                    provider=head.provider,
                )
        result.completed = True
        if ended:
            if watchdog is not None:
                watchdog.cancel()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()  # the answer is whole: the client need not wait
            await _drain(head, options.drain_seconds)
    except UpstreamError as exc:
        # After the first byte there is no retry: tell the client in-band, then end.
        result.error = exc
        await _write_quietly(response, _error_out(options, exc))
    except ConnectionResetError:
        result.completed = False  # the client was gone before the terminal event reached it
        raise
    except asyncio.CancelledError:
        if result.completed or not shutdown.absorb_cut():
            raise  # the client left (after the end, or before it)
        # Shutdown ran out of drain time: end the stream with an error event, not a cut.
        result.error = StreamInterrupted(shutdown.MESSAGE, status=503, provider=head.provider)
        result.error.code = "shutting_down"
        await _write_quietly(response, _error_out(options, result.error))
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await head.reply.body.aclose()
    return response, result


def _error_out(options: RelayOptions, exc: ProxyError) -> bytes:
    """The in-band error event, in the client's dialect, with every known secret masked: its
    message may quote what an upstream said, and upstreams echo keys."""
    return REDACTOR.redact_bytes(options.error_event(exc))


async def _drain(head: StreamHead, seconds: float) -> None:
    """After the terminal event: read what is left of the upstream's body for a moment, so
    that its connection goes back to the pool instead of being dropped. Bounded in time and
    size; whatever it holds is not relayed."""
    if seconds <= 0:
        return
    size = 0
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(seconds):
            async for chunk in head.rest():
                size += len(chunk)
                if size > _DRAIN_LIMIT:
                    return


_DRAIN_LIMIT = 64 * 1024


def _plain_events(chunk: bytes, markers: tuple[bytes, ...] = DONE_END.markers) -> bool:
    """True for a chunk of whole LF-framed events the relay passes on untouched.

    Not plain: a cut event, CR line endings, comments, a leading blank line, the usage event
    and anything that may be the terminal event (`markers`), so each of those takes the
    parser's path.
    """
    return (
        chunk.endswith(b"\n\n")
        and not chunk.startswith((b":", b"\n"))
        and b"\r" not in chunk
        and b"\n:" not in chunk
        and not any(m in chunk for m in markers)
        # OpenAI sends `"usage":null` in every chunk once usage is asked for: still plain.
        and (b'"usage"' not in chunk or chunk.count(b'"usage"') == chunk.count(b'"usage":null'))
    )


class _Watch:
    """What the watchdog of one relay needs to know; set by the relay, read by the watchdog."""

    __slots__ = ("idled", "last_read", "last_write", "reading")

    def __init__(self, now: float) -> None:
        self.last_write = self.last_read = now
        self.reading = False  # the relay is waiting for the upstream (not for the client)
        self.idled = False  # the watchdog stopped the relay: the upstream went quiet


async def _watchdog(
    response: web.StreamResponse, options: RelayOptions, watch: _Watch, relay: Any
) -> None:
    """Keepalive comments after `keepalive_seconds` of silence to the client; the relay
    cancelled after `idle_seconds` of silence from the upstream. Wakes once per interval."""
    loop = asyncio.get_running_loop()
    every, idle = options.keepalive_seconds, options.idle_seconds
    while True:
        now = loop.time()
        waits = []
        if every > 0:
            quiet = now - watch.last_write
            if quiet >= every:
                try:
                    await response.write(options.keepalive)
                except (ConnectionError, RuntimeError):
                    return  # the client is gone; the relay notices on its own next write
                watch.last_write, quiet = now, 0.0
            waits.append(every - quiet)
        if idle > 0:
            # Time spent waiting for the upstream; a slow client's back-pressure is not counted.
            silent = now - watch.last_read if watch.reading else 0.0
            if silent >= idle and relay is not None:
                watch.idled = True
                relay.cancel()
                return
            waits.append(idle - silent)
        await asyncio.sleep(min(waits))


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(data)


def model_renamer(pair: tuple[str, str] | None) -> Callable[[bytes], bytes] | None:
    """For `force-mapping`: a function rewriting `"model": old` to `"model": new` in JSON bytes."""
    if pair is None or pair[0] == pair[1]:
        return None
    old, new = (orjson.dumps(name) for name in pair)
    swaps = [(b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new)]

    def rename(data: bytes) -> bytes:
        for a, b in swaps:
            if a in data:
                data = data.replace(a, b)
        return data

    return rename
