"""`cursor`: Cursor's models through its agent service (native), or a local cursor-api sidecar.

Owns: the block's options and credentials (each `api-key` a credential, each `token-file` a
credential, or the sidecar's one), the hosts (`base-url` for the control plane: server config
and model lists; `refresh-url` for the auth host, default the same; `agent-url`, else the one
`GetServerConfig` names, else `https://agent.cursor.sh`), the headers every call carries, the
transport choice (`transport: h2 | sse | auto`), opening a turn and reading it up to its first
output (so an early error still fails over), resuming a turn parked on a client tool call,
model discovery and `reasoning_effort` → suffixed ids, and mapping failures onto decisions
(Connect codes via connect.py; before the first byte a decision, after it `StreamInterrupted`).
Does not own: the wire (wire.py, connect.py, messages.py), the channel (transport.py), the turn
(session.py), the OpenAI request and answer (request.py, answer.py), tokens (auth.py,
proxy/tokens.py). Sidecar mode is the openai-compatibility driver, reused as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from drivers.cursor import auth, ide, messages, request
from drivers.cursor.answer import Answer
from drivers.cursor.connect import CLIENT_VERSION, ConnectError, FrameError
from drivers.cursor.session import SILENCE_SECONDS, Ended, Parked, ToolCall, Turn
from drivers.cursor.transport import (
    Channel,
    H2Transport,
    HTTPStatusError,
    SSETransport,
    Transport,
    TransportFailed,
)
from drivers.cursor.wire import Fields, WireError
from drivers.openai import OpenAICompatibleDriver
from proxy import tokens
from proxy.config import ProviderBlock
from proxy.dialects import neutral as n
from proxy.driver import NEUTRAL, Call, Credential, Driver, Reply, describe_failure
from proxy.errors import (
    CredentialRejected,
    ProxyError,
    StreamInterrupted,
    UpstreamError,
    UpstreamUnavailable,
)

log = logging.getLogger("keyrail.cursor")

DEFAULT_BASE_URL = "https://api2.cursor.sh"
FALLBACK_AGENT_URL = "https://agent.cursor.sh"
SERVER_CONFIG_PATH = "/aiserver.v1.ServerConfigService/GetServerConfig"
MODELS_PATH = "/agent.v1.AgentService/GetUsableModels"
#: What the community tools serve when the model list cannot be had.
FALLBACK_MODELS = (
    "composer-2",
    "claude-4-sonnet",
    "claude-3.5-sonnet",
    "gpt-4o",
    "cursor-small",
    "gemini-2.5-pro",
    "default",
)
HEARTBEAT_SECONDS = 5.0
TRANSPORTS = ("auto", "h2", "sse")
_KIND = "kind"
_FAILURES = (ConnectError, FrameError, WireError, TransportFailed)
_UNARY_TIMEOUT = aiohttp.ClientTimeout(total=20)


class CursorDriver(Driver):
    options = {
        "api-key": (str, list),
        "token-file": (str, list),
        "cursor-api-url": str,
        "auth-token": str,
        "agent-url": str,
        "transport": str,
        "client-version": str,
        "heartbeat-seconds": (int, float),
        "silence-seconds": (int, float),
    }
    default_base_url = DEFAULT_BASE_URL
    dialects = NEUTRAL  # native mode: the neutral request in, neutral events out

    # -- the block ------------------------------------------------------------------------------

    @staticmethod
    def _sidecar_block(block: ProviderBlock) -> ProviderBlock | None:
        url = str(block.options.get("cursor-api-url") or "").rstrip("/")
        if not url:
            return None
        base = url if url.endswith("/v1") else f"{url}/v1"
        entry = {"api-key": str(block.options.get("auth-token") or "")}
        return dataclasses.replace(
            block, base_url=base, options={"api-key-entries": [entry]}, driver="cursor"
        )

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        sidecar = cls._sidecar_block(block)
        if sidecar is not None:
            return OpenAICompatibleDriver.credentials(sidecar)
        opts = block.options
        transport = str(opts.get("transport") or "auto")
        if transport not in TRANSPORTS:
            raise ProxyError(f"'transport' must be one of {', '.join(TRANSPORTS)}")
        proxy = None if block.proxy_url in ("direct", "none") else block.proxy_url
        out: list[Credential] = []
        for key in _strings(opts.get("api-key")):
            if not key.startswith("crsr_"):
                raise ProxyError("a Cursor 'api-key' starts with crsr_ (cursor.com/dashboard)")
            digest = hashlib.sha256(key.encode()).hexdigest()[:8]
            out.append(
                Credential(
                    id=f"{block.name}/{digest}",
                    provider=block.name,
                    secret=key,
                    proxy_url=proxy,
                    extra={_KIND: "api-key"},
                )
            )
        for name in _strings(opts.get("token-file")):
            path = Path(name).expanduser().absolute()
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
            out.append(
                Credential(
                    id=f"{block.name}/{digest}",
                    provider=block.name,
                    proxy_url=proxy,
                    extra={
                        _KIND: "ide" if ide.is_ide_database(path) else "token-file",
                        "token_file": str(path),
                    },
                )
            )
        if not out:
            raise ProxyError(
                "a 'cursor' block needs 'api-key' (crsr_…), 'token-file' "
                "(from `keyrail login cursor`), or 'cursor-api-url' for a sidecar"
            )
        return out

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        sidecar = self._sidecar_block(block)
        self.sidecar = OpenAICompatibleDriver(sidecar, session) if sidecar else None
        if self.sidecar is not None:  # cursor-api speaks chat: passthrough, as openai-compat
            self.dialects = frozenset({"chat"})
        opts = block.options
        self.tokens = tokens.shared()
        self.key_tokens = auth.key_tokens()
        self.auth_url = (block.refresh_url or self.base_url).rstrip("/")
        self.client_version = str(opts.get("client-version") or CLIENT_VERSION)
        self.heartbeat_seconds = float(opts.get("heartbeat-seconds") or HEARTBEAT_SECONDS)
        self.silence_seconds = float(opts.get("silence-seconds") or SILENCE_SECONDS)
        self.transport_name = str(opts.get("transport") or "auto")
        self._agent_url = str(opts.get("agent-url") or "").rstrip("/")
        self._agent_lock = asyncio.Lock()
        self._h2: H2Transport | None = None
        self._sse: SSETransport | None = None
        self.parked = Parked()
        self.blobs: dict[str, bytes] = {}  # system prompts by hex(SHA-256): shared by turns
        self.known_models: set[str] = {m.name for m in block.models}

    # -- headers, hosts, transports --------------------------------------------------------------

    def _headers(self, token: str, *, content_type: str) -> dict[str, str]:
        request_id = str(uuid.uuid4())
        return {
            "content-type": content_type,
            "connect-protocol-version": "1",
            "te": "trailers",
            "authorization": f"Bearer {token}",
            "x-ghost-mode": "true",
            "x-cursor-client-version": self.client_version,
            "x-cursor-client-type": "cli",
            "x-request-id": request_id,
            "x-original-request-id": request_id,
            "connect-accept-encoding": "gzip",
            "user-agent": "connect-es/1.6.1",
            **{k.lower(): v for k, v in self.block.headers.items()},
        }

    async def agent_url(self, token: str, credential: Credential) -> str:
        """`agent-url`, else `GetServerConfig`'s, else the fallback (asked once per driver)."""
        if self._agent_url:
            return self._agent_url
        async with self._agent_lock:
            if not self._agent_url:
                self._agent_url = await self._server_config(token, credential)
        return self._agent_url

    async def _server_config(self, token: str, credential: Credential) -> str:
        try:
            payload = await self._unary(SERVER_CONFIG_PATH, b"", token, credential)
        except (UpstreamError, ConnectError) as exc:
            log.warning("%s: GetServerConfig failed (%s); using %s", self.block.name, exc,
                        FALLBACK_AGENT_URL)  # fmt: skip
            return FALLBACK_AGENT_URL
        url, http1 = server_config(payload)
        if http1 and self.transport_name == "auto":
            log.info("%s: Cursor asks for HTTP/1.1: using RunSSE + BidiAppend", self.block.name)
            self.transport_name = "sse"
        return url or FALLBACK_AGENT_URL

    def _transport(self, credential: Credential) -> Transport:
        if self.transport_name == "sse":
            if self._sse is None:
                self._sse = SSETransport(self.session, credential.proxy_url)
            return self._sse
        if self._h2 is None:
            connect = self.session.timeout.sock_connect or 10.0
            self._h2 = H2Transport(connect_timeout=connect)
        return self._h2

    async def _unary(self, path: str, body: bytes, token: str, credential: Credential) -> bytes:
        """A unary Connect call (`application/proto`) to the control plane."""
        headers = self._headers(token, content_type="application/proto")
        headers.pop("te")
        try:
            async with self.session.post(
                self.base_url + path, data=body, headers=headers, proxy=credential.proxy_url,
                allow_redirects=False, timeout=_UNARY_TIMEOUT,
            ) as response:  # fmt: skip
                data = await response.content.read(16 * 1024 * 1024)
                if response.status != 200:
                    error = HTTPStatusError(response.status, response.headers, data)
                    raise error.connect_error().decision(self.block.name)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {self.block.name} unreachable: {describe_failure(exc)}",
                status=502,
                provider=self.block.name,
            ) from None
        # Unary Connect has no envelope; strip one if a server sends it anyway.
        if (
            len(data) >= 5
            and data[0] in (0, 1)
            and int.from_bytes(data[1:5], "big") == len(data) - 5
        ):
            data = data[5:]
        return data

    # -- tokens ---------------------------------------------------------------------------------

    def _slot(self, credential: Credential) -> tokens.TokenSlot:
        path = Path(str(credential.extra["token_file"]))
        return self.tokens.slot(label=credential.id, provider=self.block.name, path=path)

    def _ide(self, credential: Credential) -> ide.IdeTokens:
        return ide.ide_tokens(Path(str(credential.extra["token_file"])), self.block.name)

    def _refresher(self, credential: Credential) -> tokens.Refresher:
        async def run(token: tokens.Token) -> Mapping[str, Any]:
            return await auth.refresh_login(
                self.session, token, auth_url=self.auth_url, provider=self.block.name,
                proxy=credential.proxy_url, headers=self._client_headers(),
            )  # fmt: skip

        return run

    def _client_headers(self) -> dict[str, str]:
        return {"x-cursor-client-version": self.client_version, "x-cursor-client-type": "cli"}

    async def access_token(self, credential: Credential) -> tuple[str, Callable[[], None]]:
        """The bearer to use now, and how to report that Cursor refused it."""
        if credential.extra.get(_KIND) == "api-key":
            key, auth_url = credential.secret, self.auth_url

            async def run() -> dict[str, Any]:
                return await auth.exchange(
                    self.session, auth_url, key, provider=self.block.name,
                    proxy=credential.proxy_url, headers=self._client_headers(),
                )  # fmt: skip

            exchanged = await self.key_tokens.get(key, auth_url, run)
            return exchanged, lambda: self.key_tokens.reject(key, auth_url, exchanged)
        if credential.extra.get(_KIND) == "ide":
            held = self._ide(credential)
            token_now = await held.get()
            return token_now, lambda: held.reject(token_now)
        slot = self._slot(credential)
        token = await slot.get(self._refresher(credential))
        return token.access_token, lambda: slot.reject(token)

    async def refresh(self, credential: Credential) -> Credential | None:
        """After `unauthenticated`: a new token (one exchange or refresh, single-flight)."""
        if self.sidecar is not None:
            return None
        if credential.extra.get(_KIND) == "api-key":
            await self.access_token(credential)  # the rejected token was dropped: exchanges
            return credential
        if credential.extra.get(_KIND) == "ide":
            try:
                await self._ide(credential).get()  # only if the IDE has written a new token
            except CredentialRejected:
                return None
            return credential
        token = await self._slot(credential).renew(self._refresher(credential))
        return credential if token is not None else None

    # -- models ---------------------------------------------------------------------------------

    async def list_models(self, credential: Credential) -> Sequence[str]:
        if self.sidecar is not None:
            return await self.sidecar.list_models(credential)
        try:
            token, _ = await self.access_token(credential)
            payload = await self._unary(MODELS_PATH, b"", token, credential)
            models = [model_id for model_id, _thinking in messages.model_list(payload)]
        except (UpstreamError, WireError) as exc:
            log.warning("%s: GetUsableModels failed (%s); serving the fallback list",
                        self.block.name, exc)  # fmt: skip
            models = list(FALLBACK_MODELS)
        self.known_models = set(models) | {m.name for m in self.block.models}
        return models

    # -- the call -------------------------------------------------------------------------------

    async def send(self, call: Call, credential: Credential) -> Reply:
        if self.sidecar is not None:  # a chat body (the bridge made one if the client's is not)
            return await self.sidecar.send(call, credential)
        assert call.request is not None, "keyrail hands a NEUTRAL driver the neutral request"
        turn_input = request.build(call.request)
        turn = self.parked.take(turn_input.tool_results) if turn_input.tool_results else None
        if turn is not None:
            try:
                await turn.answer_tools(turn_input.tool_results)
            except _FAILURES as exc:
                turn.abort()
                log.info("%s: a parked turn broke (%s); starting afresh", self.block.name, exc)
                turn = None
        if turn is None:
            turn = await self._open(call.request, credential, turn_input)
        answer = Answer(request_bytes=len(turn_input.text) + len(turn_input.system_json))
        try:
            head, over = await self._head(turn, answer)
        except _FAILURES as exc:
            turn.abort()
            raise self._decision(exc) from None
        except BaseException:
            turn.abort()  # cancelled (client gone, first-byte timeout): reset the stream
            raise
        return Reply.of_events(_Events(self, turn, answer, head, over))

    async def _open(
        self, neutral: n.Request, credential: Credential, turn_input: request.TurnInput
    ) -> Turn:
        effort = neutral.reasoning.effort if neutral.reasoning else None
        model = request.model_for_effort(neutral.model, effort, self.known_models)
        first = messages.run_request(
            model=model,
            text=turn_input.text,
            message_id=str(uuid.uuid4()),
            conversation_id=turn_input.conversation_id,
            system_blob_id=turn_input.blob_id,
            tools=turn_input.tools,
            images=turn_input.images,
        )
        if len(self.blobs) > 1024:
            self.blobs.clear()
        self.blobs[turn_input.blob_id.hex()] = turn_input.system_json
        token, rejected = await self.access_token(credential)
        agent_url = await self.agent_url(token, credential)
        headers = self._headers(token, content_type="application/connect+proto")
        transport = self._transport(credential)
        try:
            channel: Channel = await transport.open(
                agent_url, headers, first, pool_key=credential.id
            )
        except HTTPStatusError as exc:
            error = exc.connect_error()
            if error.code == "unauthenticated":
                rejected()
            raise self._decision(error) from None
        except TransportFailed as exc:
            raise UpstreamUnavailable(
                f"upstream {self.block.name}: {exc}", status=502, provider=self.block.name
            ) from None
        turn = Turn(
            channel,
            blobs=dict(self.blobs),
            tools=turn_input.tools,
            heartbeat_seconds=self.heartbeat_seconds,
            silence_seconds=self.silence_seconds,
        )
        turn.on_unauthenticated = rejected
        turn.start()
        return turn

    def _decision(self, exc: BaseException) -> UpstreamError:
        name = self.block.name
        if isinstance(exc, ConnectError):
            hint = f"set 'client-version' in the {name} block to the current Cursor CLI version"
            decision = exc.decision(name, client_version_hint=hint)
            if "client version" in decision.message:
                log.error("%s", decision.message)
            return decision
        return UpstreamUnavailable(
            f"upstream {name} stream failed: {exc}", status=502, provider=name
        )

    async def _head(self, turn: Turn, answer: Answer) -> tuple[list[n.Event], bool]:
        """The events up to the first output the client sees, and whether the answer is
        already over (ended, or parked on a tool call). Raises what ended the turn early."""
        head: list[n.Event] = []
        while not head:
            event = await turn.next()
            if isinstance(event, BaseException):
                if isinstance(event, ConnectError) and event.code == "unauthenticated":
                    turn.on_unauthenticated()
                raise event
            if isinstance(event, Ended):
                turn.finish()
                return answer.last(), True
            if isinstance(event, messages.Heartbeat):
                continue  # before the first output the first-byte timeout is the judge
            head.extend(answer.feed(event))
            if isinstance(event, ToolCall):
                head.extend(self.more_tool_calls(turn, answer))
                self.parked.park(turn)
                return [*head, *answer.last()], True
        return head, False

    def more_tool_calls(self, turn: Turn, answer: Answer) -> list[n.Event]:
        """Tool calls already queued right behind the first: one answer carries them all."""
        out: list[n.Event] = []
        while True:
            queued = turn.queued()
            if not isinstance(queued, ToolCall):
                if queued is not None:
                    turn.put_back(queued)  # not ours: the resumed turn reads it first
                return out
            out.extend(answer.feed(queued))

    async def aclose(self) -> None:
        self.parked.close()
        if self._h2 is not None:
            await self._h2.aclose()


def server_config(payload: bytes) -> tuple[str, bool]:
    """(agent URL, HTTP/1.1 asked for) from a GetServerConfig answer.

    Field 7 `http2_config` = 1 forces HTTP/1.1 (LIKELY). The agent URL's field number is not
    known: the first `https://agent…` (or any `http(s)://` URL in a field named like one, at
    most two levels down) is taken (INFERRED)."""
    try:
        top = Fields(payload)
    except WireError:
        return "", False
    http1 = False
    with contextlib.suppress(WireError):
        http1 = top.uint(7) == 1 or Fields(top.raw(7)).uint(1) == 1 if 7 in top else False
    return _find_agent_url(top, 0), http1


def _find_agent_url(fields: Fields, depth: int) -> str:
    for number in fields.numbers():
        for raw in fields.all_raw(number):
            text = raw.decode("utf-8", "ignore")
            if text.startswith(("https://", "http://")) and "agent" in text and " " not in text:
                return text.rstrip("/")
            if depth < 2 and raw:
                try:
                    found = _find_agent_url(Fields(raw), depth + 1)
                except WireError:
                    continue
                if found:
                    return found
    return ""


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list | tuple):  # the config gives lists as tuples
        return [str(v).strip() for v in value if str(v).strip()]
    return []


class _Events:
    """The answer's neutral events (`EventStream`): the head, then the turn's output until it
    ends or parks on a tool call, then usage and finish."""

    def __init__(
        self, driver: CursorDriver, turn: Turn, answer: Answer, head: list[n.Event], over: bool
    ) -> None:
        self._driver = driver
        self._turn = turn
        self._answer = answer
        self._head = head
        self._over = over

    def __aiter__(self) -> AsyncIterator[n.Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[n.Event]:
        turn, answer, driver = self._turn, self._answer, self._driver
        for event in self._head:
            yield event
        if self._over:
            return
        provider = driver.block.name
        while True:
            item = await turn.next()
            if isinstance(item, BaseException):
                self._over = True
                turn.abort()
                raise StreamInterrupted(
                    f"upstream {provider} stream broke: {item}", status=502, provider=provider
                )
            if isinstance(item, Ended):
                self._over = True
                turn.finish()
                break
            for event in answer.feed(item):
                yield event
            if isinstance(item, ToolCall):
                for event in driver.more_tool_calls(turn, answer):
                    yield event
                driver.parked.park(turn)
                self._over = True
                break
        for event in answer.last():
            yield event

    async def aclose(self) -> None:
        if not self._over:
            self._over = True
            self._turn.abort()  # the client left mid-turn: reset the stream
