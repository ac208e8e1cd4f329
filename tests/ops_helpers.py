"""Helpers for the operations tests: keyrail from a real file, bounded waits, SSE clients."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import config
from proxy.app import create_app
from proxy.registry import Registry, options_lookup
from proxy.testing.plugin import traceable
from tests.conftest import Keyrail

#: Answers of a keyrail started by `serve_file` that left without an X-Request-Id.
UNTRACEABLE: list[str] = []


async def wait_for(condition: Callable[[], object], seconds: float, what: str) -> float:
    """Poll `condition` until it is true; fail after `seconds`. Returns the time it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def write_by_rename(path: Path, text: str) -> None:
    """Save as an editor does: write a temporary file beside it, then rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def serve_file(
    path: Path,
    servers: list[TestServer],
    registry: Registry | None = None,
    before_start: Callable[[web.Application], None] | None = None,
) -> Keyrail:
    """keyrail from a config file it watches, on 127.0.0.1, as `keyrail serve -c FILE`."""
    registry = registry or Registry.discover()
    settings = config.load(path, options_lookup(registry))
    app = create_app(settings, registry, config_path=path)
    if before_start is not None:
        before_start(app)
    app.on_response_prepare.append(traceable(UNTRACEABLE))  # checked by `servers`
    server = TestServer(app, host="127.0.0.1", handler_cancellation=True)
    await server.start_server()
    servers.append(server)
    return Keyrail(server, app, settings)


@dataclass
class StreamResult:
    """What one streaming client received."""

    status: int = 0
    raw: bytes = b""
    text: str = ""
    done: bool = False
    error: dict[str, object] | None = None
    broken: str = ""  # the transport failed before the stream ended
    started: asyncio.Event = field(default_factory=asyncio.Event)


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    key: str = "",
    result: StreamResult | None = None,
) -> StreamResult:
    """POST a streamed chat completion and read it to its very end."""
    result = result or StreamResult()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            result.status = resp.status
            async for chunk in resp.content.iter_any():
                result.raw += chunk
                result.started.set()
    except aiohttp.ClientError as exc:
        result.broken = type(exc).__name__
    finally:
        result.started.set()
    for line in result.raw.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            result.done = True
            continue
        event = orjson.loads(data)
        if "error" in event:
            result.error = event["error"]
        for choice in event.get("choices") or []:
            result.text += choice.get("delta", {}).get("content") or ""
    return result
