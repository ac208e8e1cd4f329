"""Shared fixtures: fake upstreams on 127.0.0.1 and keyrail itself, over real sockets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import config
from proxy.app import create_app
from proxy.registry import Registry, options_lookup
from tests.fakes import FakeOpenAI


@dataclass
class Keyrail:
    """A running keyrail: its base URL, app and settings."""

    server: TestServer
    app: web.Application
    settings: config.Settings

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@pytest.fixture
async def start_upstream() -> AsyncIterator[Callable[..., Awaitable[tuple[FakeOpenAI, str]]]]:
    """Start a FakeOpenAI on 127.0.0.1; returns (fake, base_url ending in /v1)."""
    servers: list[TestServer] = []

    async def start(
        name: str = "fake", models: tuple[str, ...] = ("gpt-4o-mini",)
    ) -> tuple[FakeOpenAI, str]:
        fake = FakeOpenAI(name, models)
        server = TestServer(fake.app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return fake, str(server.make_url("/v1"))

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def start_keyrail() -> AsyncIterator[Callable[..., Awaitable[Keyrail]]]:
    """Start keyrail from YAML text on 127.0.0.1 with handler cancellation, as `serve` does."""
    servers: list[TestServer] = []

    async def start(yaml_text: str, registry: Registry | None = None, **kwargs: Any) -> Keyrail:
        registry = registry or Registry.discover()
        settings = config.parse(yaml_text, options_lookup(registry), source="config.yaml")
        app = create_app(settings, registry)
        server = TestServer(app, host="127.0.0.1", handler_cancellation=True, **kwargs)
        await server.start_server()
        servers.append(server)
        return Keyrail(server, app, settings)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def log_text(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything logged during the test, as rendered text."""
    caplog.set_level(logging.DEBUG)
    return lambda: "\n".join(
        logging.Formatter("%(name)s %(levelname)s %(message)s").format(r) for r in caplog.records
    )
