"""A fake Cursor on 127.0.0.1: the auth host, the control plane and the agent service.

Two listeners: an aiohttp app (HTTP/1.1) with `/auth/exchange_user_api_key`, `/auth/poll`,
`GetServerConfig`, `GetUsableModels`, `RunSSE` and `BidiAppend`; and an h2c server (the `h2`
library, server side) for `Run`. Both run the same scripted turn over real Connect envelopes
and protobuf bytes, some frames gzip-compressed. Every turn first asks the client for the
system prompt by its blob id, for the tool list (request context) and to run a built-in
`read` tool, and checks the answers; then the user's text picks the scenario:

    "weather"  text, then an MCP tool call; waits for the tool result on the same stream
    "think"    thinking deltas, then text
    "quota"    end-of-stream resource_exhausted (compressed) for keys in `exhausted_keys`
    "pause"    text, heartbeats only for `pause_seconds`, then more text
    "hang"     text, then waits until the client resets / disconnects
    otherwise  "Hello from Cursor." in three deltas, token deltas, turn_ended

Violations of what Cursor is known to insist on go to `problems`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import orjson
from aiohttp import web

from drivers.cursor.connect import Decoder, end_of_stream, envelope
from drivers.cursor.wire import Fields, decode_value, encode_value, message

REQUIRED_HEADERS = {
    "connect-protocol-version": "1",
    "x-ghost-mode": "true",
    "x-cursor-client-type": "cli",
}


def jwt(exp: float, sub: str = "auth0|user_fake", kind: str = "api_key_token") -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part({'exp': exp, 'sub': sub, 'type': kind})}.sig"


def update(field_number: int, inner: bytes) -> bytes:
    """AgentServerMessage{interaction_update{field: inner}}."""
    return message((1, message((field_number, inner))))


def text(value: str) -> bytes:
    return update(1, message((1, value)))


def thinking(value: str) -> bytes:
    return update(4, message((1, value)))


def tokens(count: int) -> bytes:
    return update(8, message((1, count)))


HEARTBEAT = update(13, b"")
TURN_ENDED = update(14, b"")


@dataclass
class Run:
    """What one turn's run request said."""

    transport: str
    headers: dict[str, str]
    model: str = ""
    text: str = ""
    conversation_id: str = ""
    tools: list[str] = field(default_factory=list)
    tool_schemas: list[Any] = field(default_factory=list)
    images: int = 0
    thinking: bool = False
    replies: list[str] = field(default_factory=list)

    @property
    def bearer(self) -> str:
        return self.headers.get("authorization", "").removeprefix("Bearer ")


class TurnIO:
    """One turn's duplex: client messages in (decoded payloads), server envelopes out."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._send = send
        self.gone = asyncio.Event()  # the client reset the stream or disconnected
        self.heartbeats = 0

    async def send(self, payload: bytes, *, compress: bool = False) -> None:
        if compress:
            await self._send(envelope(gzip.compress(payload), 0x01))
        else:
            await self._send(envelope(payload))

    async def recv(self) -> Fields | None:
        """The next client message that is not a heartbeat (None: the client ended)."""
        while True:
            payload = await self.inbox.get()
            if payload is None:
                return None
            if payload == b"\x3a\x00":
                self.heartbeats += 1
                continue
            return Fields(payload)


class FakeCursor:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.runs: list[Run] = []
        self.api_keys: set[str] = set()
        self.exhausted_keys: set[str] = set()
        self.valid: dict[str, str] = {}  # issued access token → api key (or refresh token)
        self.refresh_tokens: dict[str, str] = {}  # refresh token → login
        self.exchanges = 0
        self.exchange_arrivals = 0  # counted before `exchange_gate` holds them
        self.exchange_gate: asyncio.Event | None = None
        self.token_seconds = 3600.0
        self.resets = 0
        self.reset_seen = asyncio.Event()
        self.heartbeats = 0
        self.pause_seconds = 0.5
        self.http1 = False
        self.agent_url = ""
        self.models = ["claude-4.5-sonnet", "gpt-5.5", "gpt-5.5-high", "gpt-5.5-high-fast"]
        self.polls = 0
        self.poll_pending = 2
        self.client_version_floor = ""
        self.reject_once: set[str] = set()  # access tokens refused once with unauthenticated
        self.h2_window = 65535
        self.h2_connections = 0
        self.h2_client_settings: dict[int, int] = {}
        self.h2_connection_window_bonus = 0
        self.rst_before_data = False
        self.goaway_before_data = False
        self.models_enveloped = False  # a unary answer wrapped in an envelope anyway
        self.turn_done = asyncio.Event()
        self._serial = itertools.count(1)
        self._sse: dict[str, tuple[TurnIO, list[int]]] = {}
        self.app = web.Application()
        r = self.app.router
        r.add_post("/auth/exchange_user_api_key", self.exchange)
        r.add_get("/auth/poll", self.poll)
        r.add_post("/aiserver.v1.ServerConfigService/GetServerConfig", self.server_config)
        r.add_post("/agent.v1.AgentService/GetUsableModels", self.usable_models)
        r.add_post("/{prefix:.*}agent.v1.AgentService/RunSSE", self.run_sse)
        r.add_post("/{prefix:.*}aiserver.v1.BidiService/BidiAppend", self.bidi_append)

    # -- auth -------------------------------------------------------------------------------------

    def add_key(self, key: str) -> str:
        self.api_keys.add(key)
        return key

    def issue_login(self, name: str = "login") -> tuple[str, str]:
        access = jwt(time.time() + self.token_seconds, kind="session") + f"{next(self._serial)}"
        refresh = f"rt-{name}-{next(self._serial)}"
        self.valid[access] = refresh
        self.refresh_tokens[refresh] = name
        return access, refresh

    async def exchange(self, request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if await request.read() != b"{}":
            self.problems.append("exchange body is not {}")
        self.exchange_arrivals += 1
        if self.exchange_gate is not None:
            await self.exchange_gate.wait()
        if bearer in self.api_keys:
            self.exchanges += 1
            access = jwt(time.time() + self.token_seconds) + f"{next(self._serial)}"
            self.valid[access] = bearer
            return web.json_response({"accessToken": access, "refreshToken": access})
        if bearer in self.refresh_tokens:
            self.exchanges += 1
            access, refresh = self.issue_login(self.refresh_tokens.pop(bearer))
            return web.json_response({"accessToken": access, "refreshToken": refresh})
        return web.json_response({"error": "invalid key"}, status=401)

    async def poll(self, request: web.Request) -> web.Response:
        self.polls += 1
        if not request.query.get("uuid") or not request.query.get("verifier"):
            self.problems.append("poll without uuid/verifier")
        if self.polls <= self.poll_pending:
            return web.Response(status=404)
        access, refresh = self.issue_login("pkce")
        return web.json_response({"accessToken": access, "refreshToken": refresh})

    def _authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization", "").removeprefix("Bearer ") in self.valid

    # -- control plane ----------------------------------------------------------------------------

    async def server_config(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not self._authorized(headers):
            return web.json_response({"code": "unauthenticated"}, status=401)
        body = message((2, "https://telemetry.example"), (3, self.agent_url), (7, int(self.http1)))
        return web.Response(body=body, content_type="application/proto")

    async def usable_models(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("content-type") != "application/proto":
            self.problems.append("GetUsableModels without application/proto")
        if not self._authorized(headers):
            return web.json_response({"code": "unauthenticated", "message": "no"}, status=401)
        details = [message((1, m), (2, b"" if "sonnet" in m else None)) for m in self.models]
        body = message(*((1, d) for d in details))
        if self.models_enveloped:
            body = envelope(body)
        return web.Response(body=body, content_type="application/proto")

    # -- HTTP/1.1: RunSSE + BidiAppend ----------------------------------------------------------

    async def run_sse(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        [payload] = Decoder().feed(await request.read())
        request_id = Fields(payload).text(1)
        response = web.StreamResponse(headers={"Content-Type": "application/connect+proto"})
        await response.prepare(request)

        async def send(data: bytes) -> None:
            await response.write(data)

        io = TurnIO(send)
        self._sse[request_id] = (io, [])
        try:
            await self.turn(io, Run("sse", headers))
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self._gone(io)
        finally:
            self._sse.pop(request_id, None)
        return response

    async def bidi_append(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        request_id = body["requestId"]["requestId"]
        for _ in range(200):  # the append may race the RunSSE that opens the stream
            if request_id in self._sse:
                break
            await asyncio.sleep(0.005)
        entry = self._sse.get(request_id)
        if entry is None:
            return web.json_response({"code": "not_found"}, status=404)
        io, seen = entry
        seqno = int(body["appendSeqno"])
        if seqno != len(seen):
            self.problems.append(f"BidiAppend seqno {seqno}, expected {len(seen)}")
        seen.append(seqno)
        io.inbox.put_nowait(bytes.fromhex(body["data"]))
        return web.json_response({})

    def _gone(self, io: TurnIO) -> None:
        if not io.gone.is_set():
            io.gone.set()
            self.resets += 1
            self.reset_seen.set()
        io.inbox.put_nowait(None)

    # -- HTTP/2: Run ---------------------------------------------------------------------------

    async def start_h2(self) -> tuple[asyncio.Server, str]:
        server = await asyncio.start_server(self._h2_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return server, f"http://127.0.0.1:{port}"

    async def _h2_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.h2_connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.h2_window},
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[TurnIO, Decoder]] = {}
        windows: dict[int, asyncio.Event] = {}
        tasks: set[asyncio.Task[None]] = set()

        def flush() -> None:
            data = conn.data_to_send()
            if data and not writer.is_closing():
                writer.write(data)

        async def send_on(stream_id: int, data: bytes) -> None:
            while data:
                if stream_id not in streams:
                    raise ConnectionError("stream gone")
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if size <= 0:
                    event = windows.setdefault(stream_id, asyncio.Event())
                    event.clear()
                    await event.wait()
                    continue
                conn.send_data(stream_id, data[:size])
                data = data[size:]
                flush()
            await writer.drain()

        async def serve(stream_id: int, headers: dict[str, str], io: TurnIO) -> None:
            try:
                if self.goaway_before_data:
                    conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                    flush()
                    writer.close()
                    return
                if self.rst_before_data:
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    streams.pop(stream_id, None)
                    flush()
                    return
                conn.send_headers(
                    stream_id, [(":status", "200"), ("content-type", "application/connect+proto")]
                )
                flush()
                await self.turn(io, Run("h2", headers))
                if stream_id in streams:
                    conn.end_stream(stream_id)
                    flush()
            except (ConnectionError, h2.exceptions.ProtocolError):
                self._gone(io)

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    sid = getattr(event, "stream_id", 0)
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {str(k): str(v) for k, v in event.headers or ()}
                        io = TurnIO(lambda d, sid=sid: send_on(sid, d))
                        streams[sid] = (io, Decoder())
                        if not headers.get(":path", "").endswith("/agent.v1.AgentService/Run"):
                            self.problems.append(f"h2 path {headers.get(':path')}")
                        task = asyncio.ensure_future(serve(sid, headers, io))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(event, h2.events.DataReceived) and sid in streams:
                        io, decoder = streams[sid]
                        for payload in decoder.feed(event.data or b""):
                            io.inbox.put_nowait(payload)
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                    elif isinstance(event, h2.events.StreamEnded) and sid in streams:
                        streams[sid][0].inbox.put_nowait(None)
                    elif isinstance(event, h2.events.StreamReset) and sid in streams:
                        io, _ = streams.pop(sid)
                        self._gone(io)
                        windows.get(sid, asyncio.Event()).set()
                    elif isinstance(
                        event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged
                    ):
                        if isinstance(event, h2.events.RemoteSettingsChanged):
                            for code, change in event.changed_settings.items():
                                self.h2_client_settings[int(code)] = change.new_value
                        elif sid == 0:
                            self.h2_connection_window_bonus += event.delta or 0
                        for w in windows.values():
                            w.set()
                flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            for io, _ in streams.values():
                self._gone(io)
            for task in tasks:
                task.cancel()
            writer.close()

    # -- the turn -----------------------------------------------------------------------------

    async def turn(self, io: TurnIO, run: Run) -> None:
        try:
            await self._turn(io, run)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in the fake or bytes it cannot read: say so, end
            self.problems.append(f"fake failed: {exc!r}")
            with contextlib.suppress(Exception):
                await io._send(end_of_stream({"code": "internal", "message": repr(exc)}))
        finally:
            while not io.inbox.empty():  # heartbeats that came while the script did not read
                io.heartbeats += io.inbox.get_nowait() == b"\x3a\x00"
            self.heartbeats += io.heartbeats
            self.turn_done.set()

    async def _turn(self, io: TurnIO, run: Run) -> None:
        for name, value in REQUIRED_HEADERS.items():
            if run.headers.get(name) != value:
                self.problems.append(f"header {name}={run.headers.get(name)!r}")
        if not run.headers.get("x-cursor-client-version", "").startswith("cli-"):
            self.problems.append("no x-cursor-client-version")
        if run.headers.get("content-type") != "application/connect+proto":
            self.problems.append(f"content-type {run.headers.get('content-type')!r}")
        if run.transport == "h2" and run.headers.get("te") != "trailers":
            self.problems.append("h2 Run without te: trailers")
        if len(run.headers.get("x-request-id", "")) != 36:
            self.problems.append("x-request-id is not a UUID")
        if "x-cursor-checksum" in run.headers:
            self.problems.append("x-cursor-checksum sent (the agent API needs none)")
        first = await io.recv()
        if first is None or 1 not in first:
            self.problems.append("first message is not a run_request")
            return
        self._read_run(first.sub(1), run)
        self.runs.append(run)
        if run.bearer in self.reject_once:
            self.reject_once.discard(run.bearer)
            self.valid.pop(run.bearer, None)
        if not self._authorized(run.headers):
            await io._send(end_of_stream({"code": "unauthenticated", "message": "bad token"}))
            return
        if self.client_version_floor and run.headers["x-cursor-client-version"] < (
            self.client_version_floor
        ):
            error = {"code": "failed_precondition", "message": "Outdated client version"}
            await io._send(end_of_stream(error))
            return
        if "quota" in run.text and self.valid.get(run.bearer) in self.exhausted_keys:
            error = {
                "code": "resource_exhausted",
                "message": "quota",
                "metadata": {"retry-after": ["7"]},
            }
            await io._send(envelope(gzip.compress(orjson.dumps({"error": error})), 0x03))
            return
        if not await self._prelude(io, run):
            return
        await self._scenario(io, run)

    def _read_run(self, request: Fields, run: Run) -> None:
        details = request.sub(3)
        run.model = details.text(1)
        run.thinking = 2 in details
        if details.text(3) != run.model:
            self.problems.append("display_model_id differs from model_id")
        user = request.sub(2).sub(1).sub(1)
        run.text = user.text(1)
        run.images = len(user.sub(3).all_raw(1))
        if not user.text(2):
            self.problems.append("user message without message_id")
        run.conversation_id = request.text(5)
        for raw in request.sub(4).all_raw(1):
            tool = Fields(raw)
            run.tools.append(tool.text(1))
            run.tool_schemas.append(decode_value(tool.raw(3)))
            if tool.text(4) != "proxy" or tool.text(5) != tool.text(1):
                self.problems.append("tool definition without provider/tool_name")
        state = request.sub(1)
        run.replies.append(state.raw(1).hex())  # the system blob id, checked in the prelude

    async def _prelude(self, io: TurnIO, run: Run) -> bool:
        """Ask for the system prompt, the tool list and a built-in tool; check the answers."""
        blob_id = bytes.fromhex(run.replies[0])
        await io.send(message((4, message((1, 7), (2, message((1, blob_id)))))), compress=True)
        reply = await io.recv()
        if reply is None:
            return False
        kv = reply.sub(3)
        data = kv.sub(2).raw(1)
        if kv.uint(1) != 7 or hashlib.sha256(data).digest() != blob_id:
            self.problems.append("get_blob answer does not match the blob id")
        system = orjson.loads(data) if data else {}
        if system.get("role") != "system" or not system.get("content"):
            self.problems.append(f"system blob is not a system message: {data[:80]!r}")
        run.replies.append(str(system.get("content")))
        stored = b"server-side state"
        stored_id = hashlib.sha256(stored).digest()
        await io.send(message((4, message((1, 5), (3, message((1, stored_id), (2, stored)))))))
        reply = await io.recv()
        if reply is None:
            return False
        if reply.sub(3).uint(1) != 5 or 3 not in reply.sub(3):
            self.problems.append("set_blob was not acknowledged")
        await io.send(message((4, message((1, 6), (2, message((1, stored_id)))))))
        reply = await io.recv()
        if reply is None:
            return False
        if reply.sub(3).sub(2).raw(1) != stored:
            self.problems.append("a blob the server stored did not come back")
        await io.send(message((2, message((1, 8), (10, b""), (15, "ctx-1")))))
        reply = await io.recv()
        if reply is None:
            return False
        ctx = reply.sub(2)
        if ctx.uint(1) != 8 or ctx.text(15) != "ctx-1":
            self.problems.append("request_context reply without its ids")
        context = ctx.sub(10).sub(1).sub(1)
        names = [Fields(t).text(1) for t in context.all_raw(7)]
        if names != run.tools:
            self.problems.append(f"request context tools {names} != run tools {run.tools}")
        read = message((1, "/etc/passwd"))
        await io.send(message((2, message((1, 9), (7, read), (15, "read-1")))), compress=True)
        reply = await io.recv()
        if reply is None:
            return False
        refused = reply.sub(2)
        rejected = refused.sub(7).sub(3)
        if refused.uint(1) != 9 or rejected.text(1) != "/etc/passwd" or not rejected.text(2):
            self.problems.append("built-in read was not refused")
        return True

    async def _scenario(self, io: TurnIO, run: Run) -> None:
        current = run.text.rsplit("Current request: ", 1)[-1]
        if "weather" in current:
            await io.send(text("Let me check."))
            entry = message((1, "city"), (2, encode_value("Paris")))  # one map entry
            call_id = f"call_{next(self._serial)}"
            mcp = message((1, "get_weather"), (2, entry), (3, call_id), (5, "get_weather"))
            await io.send(message((2, message((1, 11), (11, mcp), (15, "exec-mcp")))))
            await io.send(HEARTBEAT)
            reply = await io.recv()
            if reply is None:
                return
            result = reply.sub(2)
            if result.uint(1) != 11 or result.text(15) != "exec-mcp":
                self.problems.append("mcp_result without the exec ids")
            content = result.sub(11).sub(1).sub(1).sub(1).text(1)  # success.content[0].text.text
            await io.send(text(f"Result: {content}."), compress=True)
        elif "think" in current:
            await io.send(thinking("Let me"), compress=True)
            await io.send(thinking(" think."))
            await io.send(update(5, message((1, 12))))
            await io.send(text("Thought."))
        elif "pause" in current:
            await io.send(text("before"))
            deadline = asyncio.get_running_loop().time() + self.pause_seconds
            while asyncio.get_running_loop().time() < deadline:
                await io.send(HEARTBEAT, compress=True)
                await asyncio.sleep(0.05)
            await io.send(text(" after"))
        elif "withdraw" in current:
            # a client tool call Cursor withdraws (exec_server_control_message{abort{id}})
            # before the client answers it: the turn goes on without it, and the client's
            # result must not be passed on (checked until the client closes the stream)
            mcp = message((1, "get_weather"), (3, "call_withdrawn"), (5, "get_weather"))
            await io.send(text("Let me check.") + message((2, message((1, 12), (11, mcp)))))
            await io.send(message((5, message((1, message((1, 12)))))))
            await io.send(text("Never mind the tool."))
            await io.send(tokens(2) + TURN_ENDED)
            await io._send(end_of_stream())
            while (late := await io.recv()) is not None:
                if 2 in late:
                    self.problems.append("a result for a withdrawn exec was sent")
            return
        elif "query" in current:
            # an interaction_query (a web search the model wants) sharing one message with a
            # text update: the notes' clients ignore the query; the text must still arrive
            query = message((7, message((1, 1), (2, message((1, "keyrail release date"))))))
            await io.send(query + text("No search,"))
            await io.send(text(" answered anyway."), compress=True)
        elif "hang" in current:
            await io.send(text("start"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await io.gone.wait()
            return
        else:
            for i, part in enumerate(("Hello", " from", " Cursor.")):
                await io.send(text(part), compress=i == 1)
        await io.send(tokens(3) + tokens(4))
        await io.send(TURN_ENDED)
        await io._send(end_of_stream())


# -- for tests: the fake's two listeners, and config blocks pointing at them -------------------


@dataclass
class Env:
    fake: FakeCursor
    http: str  # the aiohttp listener (auth, control plane, RunSSE)
    h2: str  # the h2c listener (Run)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Env]:
    """The fake on two ports of 127.0.0.1; fails the test if it saw a protocol problem."""
    from aiohttp.test_utils import TestServer

    fake = FakeCursor()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    h2_server, h2_url = await fake.start_h2()
    http = str(server.make_url("")).rstrip("/")
    fake.agent_url = h2_url + "/agent"
    try:
        yield Env(fake, http, h2_url)
    finally:
        h2_server.close()
        await server.close()
    assert fake.problems == []


def block(env: Env, transport: str, keys: list[str], extra: str = "") -> str:
    """One `cursor:` item: the keys, the fake's hosts, a short heartbeat."""
    agent = env.h2 if transport == "h2" else env.http
    return (
        f"  - name: cursor\n    api-key: [{', '.join(keys)}]\n    base-url: {env.http}\n"
        f"    agent-url: {agent}\n    transport: {transport}\n    heartbeat-seconds: 0.1\n"
        f"{extra}"
    )


def new_key(fake: FakeCursor, name: str = "a") -> str:
    """A fresh user API key the fake accepts (fresh per test: exchanged tokens are cached
    process-wide by key)."""
    return fake.add_key(f"crsr_{name}_{os.urandom(6).hex()}")
