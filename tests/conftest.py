"""Shared fixtures: fake upstreams on 127.0.0.1 and keyrail itself, over real sockets.

`start_keyrail`, `start_upstream_app` and the log guard come from the test kit that plugin
authors use (proxy/testing/plugin.py); this file adds what only keyrail's own tests need.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer

from proxy.testing import Keyrail, LogGuard
from proxy.testing.plugin import StartApp
from tests.fakes import FakeOpenAI

pytest_plugins = ["proxy.testing.plugin", "pytester"]
__all__ = ["Keyrail"]  # tests import it from here


@pytest.fixture
def start_upstream(
    start_upstream_app: StartApp,
) -> Callable[..., Awaitable[tuple[FakeOpenAI, str]]]:
    """Start a FakeOpenAI on 127.0.0.1; returns (fake, base_url ending in /v1)."""

    async def start(
        name: str = "fake", models: tuple[str, ...] = ("gpt-4o-mini",)
    ) -> tuple[FakeOpenAI, str]:
        fake = FakeOpenAI(name, models)
        return fake, await start_upstream_app(fake.app) + "/v1"

    return start


@pytest.fixture
def log_text(keyrail_logs: LogGuard) -> Callable[[], str]:
    """Everything logged during the test, as rendered text."""
    keyrail_logs.caplog.set_level(logging.DEBUG)
    return keyrail_logs.text


@pytest.fixture
async def servers() -> AsyncIterator[list[TestServer]]:
    """Test servers a test started itself; closed when it ends."""
    from tests.ops_helpers import UNTRACEABLE

    started: list[TestServer] = []
    yield started
    for server in started:
        await server.close()
    untraceable, UNTRACEABLE[:] = list(UNTRACEABLE), []
    assert not untraceable, f"answers without X-Request-Id: {untraceable[:10]}"
