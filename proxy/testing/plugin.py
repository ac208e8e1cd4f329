"""pytest fixtures of the keyrail test kit. Opt in from a conftest.py:

    pytest_plugins = ["proxy.testing.plugin"]

Owns: `start_upstream_app` (any aiohttp app on 127.0.0.1, e.g. a fake upstream),
`start_keyrail` (keyrail from YAML over real sockets, with handler cancellation on as
`keyrail serve` runs it; drivers from the installed entry points, or a `Registry` that adds
classes not installed yet), and the log guard: `keyrail_logs` collects every secret a started
keyrail was configured with, and `no_secret_logged` fails the test if any of them (or one
added by hand) appears in a log record. Does not own: fakes (upstream.py), the suite
(conformance.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import config
from proxy.app import create_app
from proxy.redact import secrets_of
from proxy.registry import Registry, options_lookup


@dataclass
class Keyrail:
    """A running keyrail: its server, app and settings."""

    server: TestServer
    app: web.Application
    settings: config.Settings

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def v1(self) -> str:
        """The base URL an OpenAI client is given."""
        return self.url + "/v1"


class LogGuard:
    """Everything logged during the test, and the secrets that must not be in it."""

    _format = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.secrets: set[str] = set()
        self.enforced = False

    def add(self, *secrets: str) -> None:
        self.secrets.update(s for s in secrets if s)

    def learn(self, settings: config.Settings, registry: Registry) -> None:
        """The secrets a config holds (as keyrail's redactor finds them) and every credential's."""
        self.add(*secrets_of(settings))
        for block in settings.providers:
            if block.driver in registry:
                self.add(*(c.secret for c in registry.get(block.driver).credentials(block)))

    def records(self) -> list[logging.LogRecord]:
        return [r for when in ("setup", "call", "teardown") for r in self.caplog.get_records(when)]

    def text(self) -> str:
        """Every record rendered (message, then traceback if any), one per line."""
        return "\n".join(self._format.format(r) for r in self.records())

    def leaks(self) -> list[str]:
        """Each record that contains a secret, with the secret masked."""
        found = []
        for record in self.records():
            line = self._format.format(record)
            hits = [s for s in self.secrets if s in line]
            for secret in hits:
                line = line.replace(secret, "<SECRET>")
            if hits:
                found.append(line[:300])
        return found

    def check(self) -> None:
        leaks = self.leaks()
        if leaks:
            pytest.fail("secret in the logs:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def keyrail_logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogGuard]:
    """The log guard; checks at the end of the test when `no_secret_logged` was asked for."""
    guard = LogGuard(caplog)
    yield guard
    if guard.enforced:  # after every keyrail of the test has shut down (they depend on this)
        guard.check()


@pytest.fixture
def no_secret_logged(keyrail_logs: LogGuard) -> LogGuard:
    """Fail the test if a configured secret (or one `add`ed) appears in any log record."""
    keyrail_logs.caplog.set_level(logging.DEBUG)
    keyrail_logs.enforced = True
    return keyrail_logs


StartApp = Callable[..., Awaitable[str]]
StartKeyrail = Callable[..., Awaitable[Keyrail]]


@pytest_asyncio.fixture
async def start_upstream_app() -> AsyncIterator[StartApp]:
    """`await start_upstream_app(app)`: serve an aiohttp app on 127.0.0.1; its base URL."""
    servers: list[TestServer] = []

    async def start(app: web.Application, **kwargs: Any) -> str:
        server = TestServer(app, host="127.0.0.1", **kwargs)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture
async def start_keyrail(keyrail_logs: LogGuard) -> AsyncIterator[StartKeyrail]:
    """`await start_keyrail(yaml_text, registry=None)`: keyrail on 127.0.0.1, as `serve` runs.

    Without `registry`, drivers come from the installed entry points; to test a driver before
    it is installed: `registry=Registry.discover().with_classes({"echo": EchoDriver})`.
    """
    servers: list[TestServer] = []
    untraceable: list[str] = []  # answers that left without an X-Request-Id

    async def start(yaml_text: str, registry: Registry | None = None, **kwargs: Any) -> Keyrail:
        registry = registry or Registry.discover()
        settings = config.parse(yaml_text, options_lookup(registry), source="config.yaml")
        keyrail_logs.learn(settings, registry)
        app = create_app(settings, registry)
        app.on_response_prepare.append(traceable(untraceable))
        server = TestServer(app, host="127.0.0.1", handler_cancellation=True, **kwargs)
        await server.start_server()
        servers.append(server)
        return Keyrail(server, app, settings)

    yield start
    for server in servers:
        await server.close()
    if untraceable:
        pytest.fail("answers without X-Request-Id:\n  " + "\n  ".join(untraceable[:10]))


def traceable(
    untraceable: list[str],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Every answer keyrail gives, error or not, carries `X-Request-Id` (to find its log
    lines); checked on every answer of every keyrail a test starts."""

    async def check(request: web.Request, response: web.StreamResponse) -> None:
        if "X-Request-Id" not in response.headers:
            untraceable.append(f"{request.method} {request.path} -> {response.status}")

    return check
