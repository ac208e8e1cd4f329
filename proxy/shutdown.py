"""Graceful shutdown: finish what is in flight, then end the rest with an error, never a cut.

Owns: tracking the requests in flight, the drain that runs when the server stops (aiohttp has
already stopped accepting connections by then): wait up to `shutdown.drain-seconds` for them,
then cut the rest (cancel their tasks, marked as cut by the drain). A cut stream ends with an
SSE error event (streaming.py asks `absorb_cut`); a cut request that has sent nothing yet gets
a 503 JSON error (`unavailable`). Requests that arrive while draining get a 503 too: the
pipeline (http/pipeline.py) counts every request in and out and answers these 503s.
Does not own: signals (aiohttp's `run_app` turns SIGTERM/SIGINT into a server stop), the
relay itself (streaming.py).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

from aiohttp import web

from proxy.errors import error_body

log = logging.getLogger("keyrail.shutdown")
MESSAGE = "keyrail is shutting down; the request was ended before it finished"
GRACE_SECONDS = 2.0  # for cut requests to write their error and end
_cut: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()


def absorb_cut() -> bool:
    """True when the current task's cancellation is the drain's cut (it is then undone)."""
    task = asyncio.current_task()
    if task is None or task not in _cut:
        return False
    _cut.discard(task)
    task.uncancel()
    return True


def unavailable() -> web.Response:
    """The 503 for a request refused while draining, or cut before it sent anything."""
    body = error_body(MESSAGE, type="server_error", code="shutting_down")
    return web.Response(
        body=body,
        status=503,
        content_type="application/json",
        headers={"Retry-After": "1", "Connection": "close"},
    )


class Drain:
    """The requests in flight, and the drain that ends them when the server stops."""

    def __init__(self) -> None:
        self.closing = False
        self._tasks: set[asyncio.Task[object]] = set()
        #: set when the last request in flight ends, once a drain has begun (not before: it
        #: would be cleared and set on every request)
        self._drained: asyncio.Event | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def enter(self) -> asyncio.Task[object]:
        """Count the current request in flight (its handler's task, which the drain may cut:
        not `request.task`, the connection's); `leave` it when it ends."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._drained is not None:
            self._drained.set()

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for requests in flight; then cut the rest and let them end."""
        self.closing = True
        drained = self._drained = asyncio.Event()
        if self._tasks:
            log.info("draining %d requests (up to %g s)", len(self._tasks), seconds)
            await _wait(drained, seconds)
        if self._tasks:
            log.warning("ending %d requests still in flight after the drain", len(self._tasks))
            for task in list(self._tasks):
                _cut.add(task)
                task.cancel()
            await _wait(drained, GRACE_SECONDS)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait([waiter], timeout=seconds)
    waiter.cancel()


DRAIN = web.AppKey("drain", Drain)


def setup(app: web.Application, drain: Drain, drain_seconds: Callable[[], float]) -> None:
    """Drain `drain`'s requests (for the live `drain_seconds`) when the app shuts down."""
    app[DRAIN] = drain

    async def on_shutdown(app: web.Application) -> None:
        await drain.drain(drain_seconds())

    app.on_shutdown.append(on_shutdown)
