"""The two ways to hold one Cursor agent turn open: HTTP/2 `Run`, or HTTP/1.1 `RunSSE` +
`BidiAppend`. Both give the session a `Channel`: send a client message, receive raw bytes,
close (done) or reset (the client left).

Owns:
- `H2Transport`: one HTTP/2 connection per (credential, agent host) carrying concurrent `Run`
  streams, with the `h2` library on asyncio (TLS with ALPN `h2`, or h2c prior knowledge for an
  `http://` agent URL, which is what tests use). The settings Cursor's CLI sends (4 MiB stream
  window, 100 streams, +3 MiB connection window); flow control both ways: DATA is sent only
  within the peer's windows (waiting for WINDOW_UPDATE), and received DATA is acknowledged when
  the session has consumed it, so a slow reader slows the server instead of growing a buffer.
  PINGs are answered by h2. A reset stream, a GOAWAY or a dead socket fails the streams on it.
- `SSETransport`: `POST /agent.v1.AgentService/RunSSE` whose body is only a request id and whose
  answer streams the server's envelopes; every client message goes as its own unary
  `POST /aiserver.v1.BidiService/BidiAppend` (JSON: request id, sequence number, hex data),
  in order, over aiohttp.
Does not own: what the messages mean (session.py), framing of received bytes (connect.py),
headers and hosts (driver.py).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Mapping

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson
from h2.errors import ErrorCodes
from yarl import URL

from drivers.cursor.connect import ConnectError, envelope, parse_error
from drivers.cursor.messages import bidi_request_id
from proxy.driver import describe_failure

log = logging.getLogger("keyrail.cursor")

RUN_PATH = "/agent.v1.AgentService/Run"
RUN_SSE_PATH = "/agent.v1.AgentService/RunSSE"
BIDI_APPEND_PATH = "/aiserver.v1.BidiService/BidiAppend"
_ERROR_LIMIT = 64 * 1024
_STREAM_WINDOW = 4 * 1024 * 1024
_CONNECTION_WINDOW_BONUS = 3 * 1024 * 1024


class TransportFailed(Exception):
    """The connection or the stream broke (reset, GOAWAY, socket closed, HTTP error)."""


class HTTPStatusError(TransportFailed):
    """The agent host answered the call itself with a non-200 status."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body

    def connect_error(self) -> ConnectError:
        default = {401: "unauthenticated", 403: "permission_denied", 429: "resource_exhausted"}
        code = default.get(self.status, "invalid_argument" if self.status == 400 else "unknown")
        error = parse_error(self.body, default_code=code)
        if "retry-after" in {k.lower() for k in self.headers}:
            retry = next(v for k, v in self.headers.items() if k.lower() == "retry-after")
            error.metadata.setdefault("retry-after", retry)
        return error


class Channel(abc.ABC):
    """One open turn. `receive()` returns b'' once the server ended the stream."""

    @abc.abstractmethod
    async def send(self, message: bytes) -> None:
        """Send one AgentClientMessage (its serialized bytes)."""

    @abc.abstractmethod
    async def receive(self) -> bytes: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """The turn is over: release the stream."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Abort at once (synchronous, so a cancelled task can still do it)."""


class Transport(abc.ABC):
    @abc.abstractmethod
    async def open(
        self, agent_url: str, headers: Mapping[str, str], first: bytes, *, pool_key: str
    ) -> Channel:
        """Start a turn whose first client message is `first`. Raises `HTTPStatusError` for a
        non-200 answer, `TransportFailed` when the host cannot be reached."""

    async def aclose(self) -> None:
        return None


# -- HTTP/2 ----------------------------------------------------------------------------------


class _H2Stream(Channel):
    def __init__(self, connection: _H2Connection, stream_id: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.response: asyncio.Future[dict[str, str]] = connection.loop.create_future()
        self.inbox: asyncio.Queue[tuple[bytes, int] | BaseException | None] = asyncio.Queue()
        self.window = asyncio.Event()
        self.closed = False

    async def send(self, message: bytes) -> None:
        await self.connection.send_data(self, envelope(message))

    async def receive(self) -> bytes:
        if self.closed and self.inbox.empty():
            return b""
        item = await self.inbox.get()
        if item is None:
            self.closed = True
            return b""
        if isinstance(item, BaseException):
            self.closed = True
            raise item
        data, flow = item
        self.connection.consumed(self, flow)
        return data

    async def close(self) -> None:
        self.connection.finish(self)

    def reset(self) -> None:
        self.connection.reset(self)


class _H2Connection:
    """One HTTP/2 connection and the streams on it; a reader task dispatches h2's events."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.loop = asyncio.get_running_loop()
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _H2Stream] = {}
        self.dead: BaseException | None = None
        self.slot_free = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, connect_seconds: float) -> None:
        context: ssl.SSLContext | None = None
        if self.url.scheme == "https":
            context = ssl.create_default_context()
            context.set_alpn_protocols(["h2"])
        host, port = self.url.host or "", self.url.port or (443 if context else 80)
        async with asyncio.timeout(connect_seconds):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
        if context is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                writer.close()
                raise TransportFailed(f"{host} did not negotiate HTTP/2")
        self._writer = writer
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW_BONUS)
        self.flush()
        self._reader_task = self.loop.create_task(self._read(reader))

    @property
    def usable(self) -> bool:
        return self.dead is None and self._writer is not None

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                self._fail(TransportFailed(f"connection lost: {type(exc).__name__}"))

    async def open_stream(self, headers: list[tuple[str, str]], first: bytes) -> _H2Stream:
        while True:
            if self.dead is not None:
                raise TransportFailed(str(self.dead))
            limit = self.h2.remote_settings.max_concurrent_streams
            if self.h2.open_outbound_streams < limit:
                break
            self.slot_free.clear()
            await self.slot_free.wait()
        stream_id = self.h2.get_next_available_stream_id()
        stream = _H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, headers)
        self.flush()
        await stream.send(first)
        return stream

    async def send_data(self, stream: _H2Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.dead is not None or stream.closed:
                raise TransportFailed("stream closed while sending")
            try:
                window = self.h2.local_flow_control_window(stream.id)
            except h2.exceptions.StreamClosedError:
                raise TransportFailed("stream closed while sending") from None
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0:
                stream.window.clear()
                await stream.window.wait()  # a WINDOW_UPDATE or new SETTINGS wakes us
                continue
            try:
                self.h2.send_data(stream.id, bytes(view[:size]))
            except h2.exceptions.ProtocolError:  # the server closed or reset it meanwhile
                raise TransportFailed("stream closed while sending") from None
            view = view[size:]
            self.flush()
        await self.drain()

    def consumed(self, stream: _H2Stream, flow: int) -> None:
        if flow and self.dead is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(flow, stream.id)
                self.flush()

    def finish(self, stream: _H2Stream) -> None:
        """Our side is done; reset if the server has not ended its side either."""
        if stream.id in self.streams and self.dead is None:
            self.reset(stream, ErrorCodes.NO_ERROR)

    def reset(self, stream: _H2Stream, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        if self.streams.pop(stream.id, None) is None or self.dead is not None:
            return
        stream.closed = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream.id, code)
            self.flush()
        self.slot_free.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise TransportFailed("the agent host closed the connection")
                for event in self.h2.receive_data(data):
                    self._dispatch(event)
                self.flush()
        except (TransportFailed, h2.exceptions.ProtocolError, ConnectionError, OSError) as exc:
            self._fail(exc if isinstance(exc, TransportFailed) else TransportFailed(repr(exc)))

    def _dispatch(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", 0) or 0
        stream = self.streams.get(stream_id)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            headers = {str(k): str(v) for k, v in event.headers or ()}
            if not stream.response.done():
                stream.response.set_result(headers)
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.inbox.put_nowait((event.data or b"", event.flow_controlled_length or 0))
        elif isinstance(event, h2.events.DataReceived):
            # data for a stream we already let go: give the window back at once
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.inbox.put_nowait(None)
            self._forget(stream)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            error = TransportFailed(f"stream reset by the agent host (code {event.error_code})")
            if not stream.response.done():
                stream.response.set_exception(error)
            stream.inbox.put_nowait(error)
            self._forget(stream)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            targets = self.streams.values() if not stream_id else [stream] if stream else []
            for target in targets:
                target.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(TransportFailed(f"GOAWAY from the agent host (code {event.error_code})"))

    def _forget(self, stream: _H2Stream) -> None:
        self.streams.pop(stream.id, None)
        self.slot_free.set()

    def _fail(self, error: TransportFailed) -> None:
        if self.dead is not None:
            return
        self.dead = error
        for stream in list(self.streams.values()):
            if not stream.response.done():
                stream.response.set_exception(error)
            stream.inbox.put_nowait(error)
            stream.window.set()
        self.streams.clear()
        self.slot_free.set()
        if self._writer is not None:
            self._writer.close()

    async def aclose(self) -> None:
        self._fail(TransportFailed("connection closed by keyrail"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


class H2Transport(Transport):
    """`Run` over HTTP/2: one connection per credential and agent host, many streams on it."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self._connections: dict[tuple[str, str], _H2Connection] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._connect_timeout = connect_timeout

    async def _connection(self, agent_url: str, pool_key: str) -> _H2Connection:
        key = (pool_key, agent_url)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            connection = self._connections.get(key)
            if connection is None or not connection.usable:
                connection = _H2Connection(URL(agent_url))
                try:
                    await connection.connect(self._connect_timeout)
                except (OSError, TimeoutError) as exc:
                    raise TransportFailed(f"cannot connect: {describe_failure(exc)}") from None
                self._connections[key] = connection
            return connection

    async def open(
        self, agent_url: str, headers: Mapping[str, str], first: bytes, *, pool_key: str
    ) -> Channel:
        connection = await self._connection(agent_url, pool_key)
        url = URL(agent_url)
        authority = url.host or ""
        if url.port and not url.is_default_port():
            authority = f"{authority}:{url.port}"
        request = [
            (":method", "POST"),
            (":scheme", url.scheme),
            (":authority", authority),
            (":path", url.path.rstrip("/") + RUN_PATH),
            *((k.lower(), v) for k, v in headers.items()),
        ]
        stream = await connection.open_stream(request, first)
        try:
            response = await stream.response
            status = int(response.get(":status", "0"))
            if status != 200:
                body = await _drain_h2(stream)
                raise HTTPStatusError(status, response, body)
        except BaseException:
            stream.reset()
            raise
        return stream

    def connections(self) -> int:
        """How many live connections the pool holds (for tests and `/health`)."""
        return sum(1 for c in self._connections.values() if c.usable)

    async def aclose(self) -> None:
        for connection in self._connections.values():
            await connection.aclose()
        self._connections.clear()


async def _drain_h2(stream: _H2Stream) -> bytes:
    out = bytearray()
    with contextlib.suppress(TransportFailed):
        while len(out) < _ERROR_LIMIT:
            chunk = await stream.receive()
            if not chunk:
                break
            out += chunk
    return bytes(out[:_ERROR_LIMIT])


# -- HTTP/1.1 --------------------------------------------------------------------------------


class _SSEChannel(Channel):
    def __init__(
        self,
        session: aiohttp.ClientSession,
        agent_url: str,
        headers: Mapping[str, str],
        request_id: str,
        proxy: str | None,
    ) -> None:
        self._session = session
        self._append_url = agent_url.rstrip("/") + BIDI_APPEND_PATH
        self._headers = {
            k: v for k, v in headers.items() if k.lower() not in ("content-type", "te")
        } | {"Content-Type": "application/json"}
        self._request_id = request_id
        self._proxy = proxy
        self._seqno = 0
        self._lock = asyncio.Lock()
        self.response: aiohttp.ClientResponse | None = None

    async def send(self, message: bytes) -> None:
        async with self._lock:  # BidiAppend calls carry a sequence: one at a time, in order
            body = {
                "requestId": {"requestId": self._request_id},
                "appendSeqno": self._seqno,
                "data": message.hex(),
            }
            self._seqno += 1
            try:
                async with self._session.post(
                    self._append_url,
                    data=orjson.dumps(body),
                    headers=self._headers,
                    proxy=self._proxy,
                    allow_redirects=False,
                ) as answer:
                    if answer.status != 200:
                        data = await answer.content.read(_ERROR_LIMIT)
                        raise HTTPStatusError(answer.status, answer.headers, data)
                    await answer.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportFailed(f"BidiAppend failed: {describe_failure(exc)}") from None

    async def receive(self) -> bytes:
        assert self.response is not None
        try:
            return await self.response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailed(f"RunSSE broke: {describe_failure(exc)}") from None

    async def close(self) -> None:
        self.reset()

    def reset(self) -> None:
        if self.response is not None:
            self.response.close()  # drops the connection: the server sees the stream end


class SSETransport(Transport):
    """`RunSSE` + `BidiAppend` over the block's aiohttp session (HTTP/1.1)."""

    def __init__(self, session: aiohttp.ClientSession, proxy: str | None = None) -> None:
        self._session = session
        self._proxy = proxy
        # Answers are read without a per-chunk timer: heartbeats and the relay's idle watchdog
        # decide when a quiet stream is dead.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=session.timeout.sock_connect, sock_read=None
        )

    async def open(
        self, agent_url: str, headers: Mapping[str, str], first: bytes, *, pool_key: str
    ) -> Channel:
        request_id = str(uuid.uuid4())
        channel = _SSEChannel(self._session, agent_url, headers, request_id, self._proxy)
        sse_headers = {k: v for k, v in headers.items() if k.lower() != "te"}
        opening = asyncio.ensure_future(
            self._session.post(
                agent_url.rstrip("/") + RUN_SSE_PATH,
                data=envelope(bidi_request_id(request_id)),
                headers=sse_headers,
                proxy=self._proxy,
                allow_redirects=False,
                timeout=self._timeout,
            )
        )
        try:
            # The run request is appended while the stream opens: the server may hold the
            # stream's headers until it has something to say.
            await channel.send(first)
            response = await opening
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailed(f"RunSSE failed: {describe_failure(exc)}") from None
        except BaseException:
            opening.cancel()
            with contextlib.suppress(BaseException):
                (await opening).close()
            raise
        if response.status != 200:
            data = await response.content.read(_ERROR_LIMIT)
            response.close()
            raise HTTPStatusError(response.status, response.headers, data)
        channel.response = response
        return channel
