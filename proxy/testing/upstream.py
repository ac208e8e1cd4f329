"""Fake upstreams the conformance suite can put into standard scenarios.

Owns: the scenario vocabulary (`SCENARIOS`, `Scenario` with the content every fake renders:
`TEXT_PIECES`, `TOOL_CALLS`, usage numbers, a retry hint), `FakeUpstream` (what the suite needs
from any fake: scenarios per credential, the credential each request used, "a request arrived"
and "a request was cancelled" events), `ScriptedUpstream` (the bookkeeping for a fake written
from scratch: it only renders scenarios in its own protocol), and `watch`, which adds the two
events to an existing fake's app. Does not own: any wire format (each fake renders its own,
SSE, NDJSON or binary frames alike), nor starting servers (plugin.py).
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

#: The standard scenarios. A fake renders each in its upstream's own protocol.
SCENARIOS = (
    "text",  # an answer of TEXT_PIECES, streamed piece by piece when asked to stream
    "tool_calls",  # TOOL_CALLS, each call's arguments cut into fragments when streamed
    "usage",  # "text", reporting exactly `prompt_tokens` / `completion_tokens`
    "rate_limited",  # 429 (or the protocol's equivalent) with a hint: retry in `retry_after` s
    "unauthorized",  # the credential is refused (401/403 or equivalent), unrecoverably
    "server_error",  # 5xx (`status`)
    "bad_request",  # 400: the request itself is wrong
    "break_mid_stream",  # the first text piece, then the connection drops
    "silent",  # nothing at all (or, with `after_first_piece`, one text piece) and then silence
)
TEXT_PIECES = ("Hello", " from", " the", " conformance", " suite.")
TEXT = "".join(TEXT_PIECES)
#: Two calls; `arguments` are JSON text, to be streamed in several fragments.
TOOL_CALLS = (
    {"id": "call_kit_1", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
    {"id": "call_kit_2", "name": "get_time", "arguments": '{"zone": "Europe/Paris"}'},
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario and its parameters; every fake reads what its scenario needs."""

    name: str = "text"
    text_pieces: tuple[str, ...] = TEXT_PIECES
    tool_calls: tuple[dict[str, str], ...] = TOOL_CALLS
    prompt_tokens: int = 11
    completion_tokens: int = 7
    retry_after: int = 60  # rate_limited: the hint, whole seconds
    status: int = 0  # the error status; 0: the scenario's usual one (429, 401, 503, 400)
    after_first_piece: bool = False  # silent: send one text piece before the silence

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; one of {', '.join(SCENARIOS)}")

    @property
    def error_status(self) -> int:
        usual = {"rate_limited": 429, "unauthorized": 401, "server_error": 503, "bad_request": 400}
        return self.status or usual.get(self.name, 500)

    @staticmethod
    def fragments(text: str, size: int = 6) -> list[str]:
        """`text` cut into pieces of `size` characters (tool-call arguments, streamed)."""
        return [text[i : i + size] for i in range(0, len(text), size)]


class FakeUpstream(abc.ABC):
    """What the conformance suite needs from a fake upstream.

    Subclasses set `app` (an aiohttp application), say which credential each request used
    (`secrets_seen`), and answer each request as `scenario_for(that credential)` says.
    """

    app: web.Application

    def __init__(self) -> None:
        self._default = Scenario()
        self._by_secret: dict[str, Scenario] = {}
        self.started = asyncio.Event()  # set when a request reaches the fake
        self.cancelled = asyncio.Event()  # set when a request's handler is cancelled
        #: every secret issued, including companions such as refresh tokens (never to be logged)
        self.issued: list[str] = []

    def set_scenario(self, name: str, *, secret: str | None = None, **params: Any) -> None:
        """Answer requests made with `secret` (every request, when None) as `name` says."""
        known = {f.name for f in fields(Scenario)} - {"name"}
        unknown = set(params) - known
        if unknown:
            raise TypeError(f"unknown scenario parameters: {', '.join(sorted(unknown))}")
        scenario = Scenario(name, **params)
        if secret is None:
            self._default, self._by_secret = scenario, {}
        else:
            self._by_secret[secret] = scenario

    def scenario_for(self, secret: str) -> Scenario:
        return self._by_secret.get(secret, self._default)

    def issue_secret(self, index: int) -> str:
        """A credential this upstream accepts (an API key; OAuth fakes issue a token)."""
        secret = f"kit-secret-{index}-{secrets.token_hex(8)}"
        self.issued.append(secret)
        return secret

    @abc.abstractmethod
    def secrets_seen(self) -> list[str]:
        """The credential each request arrived with, in order."""

    async def start(self, start_app: Callable[[web.Application], Awaitable[str]]) -> str:
        """Serve the fake on 127.0.0.1; its base URL. The default serves `app` over HTTP/1.1
        with `start_app`; a fake that is not an aiohttp app (an HTTP/2 server built on `h2`,
        say) overrides this and `close`."""
        return await start_app(self.app)

    async def close(self) -> None:
        """Stop what `start` started itself (servers started with `start_app` stop alone)."""
        return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def watch(app: web.Application, started: asyncio.Event, cancelled: asyncio.Event) -> None:
    """Set `started` when a request arrives at `app`, `cancelled` when its handler is cancelled.

    For adapting an existing fake whose code you do not want to touch. Call before serving.
    """

    @web.middleware
    async def watcher(request: web.Request, handler: Handler) -> web.StreamResponse:
        started.set()
        try:
            return await handler(request)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app.middlewares.append(watcher)


@dataclass(slots=True)
class Seen:
    """One request a `ScriptedUpstream` answered."""

    secret: str
    stream: bool
    body: Any = None
    scenario: Scenario = field(default_factory=Scenario)


class ScriptedUpstream(FakeUpstream):
    """A fake written from scratch: its routes call `answer`, it implements `render`.

    class FakeEcho(ScriptedUpstream):
        def __init__(self):
            super().__init__()
            self.app.router.add_post("/echo", self.handle)

        async def handle(self, request):
            body = await request.json()
            return await self.answer(request, request.headers["X-Key"], body["stream"], body)

        async def render(self, request, seen): ...  # one branch per scenario
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.app = web.Application()

    def secrets_seen(self) -> list[str]:
        return [s.secret for s in self.seen]

    async def answer(
        self, request: web.Request, secret: str, stream: bool, body: Any = None
    ) -> web.StreamResponse:
        """Record the request, then answer it as the scenario for `secret` says."""
        seen = Seen(secret, stream, body, self.scenario_for(secret))
        self.seen.append(seen)
        self.started.set()
        try:
            if seen.scenario.name == "silent" and not seen.scenario.after_first_piece:
                return await self.hang()
            return await self.render(request, seen)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @abc.abstractmethod
    async def render(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        """Answer in this upstream's protocol, as `seen.scenario` says.

        `silent` with `after_first_piece` and `break_mid_stream` send a first piece, then call
        `hang()` or `drop(request, response)`.
        """

    @staticmethod
    async def hang() -> web.StreamResponse:
        """Stay silent until the request is cancelled."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    @staticmethod
    def drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Cut the connection now (a stream that breaks after its first bytes)."""
        assert request.transport is not None
        request.transport.abort()
        return response
