"""The request loop: try the pool's credentials until one answers, before the first byte.

Owns: for one client request, picking targets through the scheduler, calling the driver,
turning each failure into the scheduler's outcome, refreshing an OAuth credential once on a
rejection, moving on at once (no sleeping) to the next credential and block, waiting for a
recovery only within `max-retry-interval`, fallbacks, and the error the client gets when no
attempt succeeds. Every attempt is reported to the metrics.
Does not own: what an outcome does to a credential (scheduler.py), relaying a successful
answer (streaming.py / handlers.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.catalog import Route, Target
from proxy.clients.affinity import Sticky
from proxy.deadlines import Deadlines
from proxy.dialects.bridge import Bridge
from proxy.driver import BODY_LIMIT, Call, Credential, Driver, Reply
from proxy.errors import (
    CredentialRejected,
    DriverError,
    InvalidRequest,
    NoCredential,
    ProviderDiscontinued,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.metrics import Attempt, ProviderMetrics
from proxy.redact import StreamMask
from proxy.scheduler import Recovery, Scheduler
from proxy.sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, SSEParser
from proxy.streaming import StreamHead


@dataclass(slots=True)
class Success:
    """The attempt that worked: its target, the reply, and (for streams) the opened head."""

    target: Target
    reply: Reply
    head: StreamHead | None
    body: bytes | None  # the whole body, for non-streamed calls
    started: float  # time.perf_counter() when the attempt began
    retries: int


@dataclass(frozen=True, slots=True)
class LoopSettings:
    request_retry: int = 3
    max_retry_interval: float = 30.0
    max_retry_credentials: int = 0
    first_byte_timeout: float = 600.0
    #: `limits.upstream-body-mb`, `limits.sse-event-mb`, `limits.sse-line-mb`, in bytes
    body_limit: int = BODY_LIMIT
    sse_event_limit: int = MAX_EVENT_BYTES
    sse_line_limit: int = MAX_LINE_BYTES

    def sse_parser(self) -> SSEParser:
        return SSEParser(self.sse_event_limit, self.sse_line_limit)


async def serve(
    *,
    route: Route,
    endpoint: str,
    body: dict[str, Any],
    stream: bool,
    request_id: str,
    drivers: dict[str, Driver],
    scheduler: Scheduler,
    metrics: ProviderMetrics,
    settings: LoopSettings,
    deadlines: Deadlines,
    resolve_fallbacks: Callable[[str], Sequence[Route]] | None = None,
    clock: Callable[[], float] | None = None,
    bridge: Bridge | None = None,
    sticky: Sticky | None = None,
) -> Success:
    """Run the failover loop for one request; return the first success or raise.

    A pass tries the route's pool, then each fallback's, every credential at most once and
    without sleeping. Only after a whole pass fails does the loop wait, and only for a
    recovery within `max-retry-interval` while `request-retry` passes remain.

    `bridge` (chat dialects): each attempt passes through or is translated (dialects/bridge.py);
    without one (completions, embeddings) the body goes as it is.
    With `sticky` (session affinity), a pass over the route's own pool starts with the
    conversation's credential when it is ready, and a success tells it where it was served.
    """
    now = clock or time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    task = asyncio.current_task()
    assert task is not None, "serve() runs in a task"
    targets = _servable(route, endpoint, drivers, bridge)
    pools = [(route, targets)] if targets else []
    for fallback in resolve_fallbacks(route.model) if resolve_fallbacks else ():
        if fallback_targets := _servable(fallback, endpoint, drivers, bridge):
            pools.append((fallback, fallback_targets))
    if not pools:
        raise DriverError(
            f"model '{route.model}' is served by a driver that does not support /v1/{endpoint}"
        )
    last_error: UpstreamError | None = None
    attempts = 0
    recovery: Recovery | None = None
    for pass_no in range(settings.request_retry + 1):
        attempts_before = attempts
        # Shared by the pools (a fallback may reuse a target). A list: it holds one or two
        # targets, and a set would hash a Target (and its Credential) on every request.
        tried: list[Target] = []
        for current, targets in pools:
            tried_here = 0
            while not (
                settings.max_retry_credentials and tried_here >= settings.max_retry_credentials
            ):
                target = None
                if sticky is not None and not tried and current is route:
                    target = sticky.first(targets, scheduler)
                if target is None:
                    target = scheduler.pick(current.model, targets, tried)
                    if target is None:
                        break
                tried.append(target)
                tried_here += 1
                driver = drivers[target.provider]
                if bridge is not None:
                    call = bridge.call(
                        driver, target.upstream_model, driver.block.headers, request_id
                    )
                else:
                    call = Call(
                        endpoint=endpoint,
                        model=target.upstream_model,
                        body={**body, "model": target.upstream_model},
                        stream=stream,
                        headers=driver.block.headers,
                        request_id=request_id,
                    )
                started, scheduled = now(), scheduler.clock()
                try:
                    success = await _attempt(
                        task, driver, call, target, stream, settings, deadlines, bridge
                    )
                except UpstreamRejected as exc:
                    # About the request itself: another credential would get the same answer.
                    _record(metrics, target, exc, now() - started, bridge)
                    raise
                except UpstreamError as exc:
                    _record(metrics, target, exc, now() - started, bridge)
                    _decide(scheduler, target, exc)
                    last_error = exc
                    attempts += 1
                    continue
                scheduler.success(target, scheduled)
                if sticky is not None and current is route:
                    sticky.served(target, targets, scheduler)
                success.started = started
                success.retries = attempts
                return success
        recovery = _soonest(scheduler, pools)
        if recovery is None:
            if attempts > attempts_before:
                break  # what failed did not cool (cooling off): another pass would hot-loop
            continue  # a cooldown ended between the last pick and now
        if pass_no == settings.request_retry or recovery.in_seconds > settings.max_retry_interval:
            break
        await asyncio.sleep(recovery.in_seconds)
    if last_error is not None:
        raise _for_client(last_error, recovery)
    # Nothing was tried: every credential was already cooling down or disabled.
    soonest = recovery or Recovery(in_seconds=1.0, quota=False)
    if soonest.discontinued:  # gone until a reload: say so at once, every time
        raise ProviderDiscontinued(soonest.discontinued, provider=", ".join(route.providers))
    raise NoCredential(
        _cooling_message(route, soonest.quota),
        retry_after=_whole_seconds(soonest.in_seconds),
        quota=soonest.quota,
    )


def _servable(
    route: Route, endpoint: str, drivers: dict[str, Driver], bridge: Bridge | None
) -> Sequence[Target]:
    """The route's targets whose driver serves `endpoint` (natively, or translated through
    `bridge`); the route's own tuple when all do, so that the scheduler's per-pool layout
    stays cached. (Inline checks first: this runs per provider of the route per request.)"""
    dialect = bridge.dialect if bridge is not None else None
    for provider in route.providers:
        driver = drivers[provider]
        if endpoint in driver.endpoints and (dialect is None or dialect in driver.dialects):
            continue  # natively: the usual case
        if bridge is None or not bridge.serves(driver):
            break
    else:
        return route.targets
    if bridge is None:
        return [t for t in route.targets if endpoint in drivers[t.provider].endpoints]
    return [t for t in route.targets if bridge.serves(drivers[t.provider])]


def _soonest(
    scheduler: Scheduler, pools: Sequence[tuple[Route, Sequence[Target]]]
) -> Recovery | None:
    """The soonest recovery across the pools; None when one of them has a ready target."""
    soonest: Recovery | None = None
    for _route, targets in pools:
        recovery = scheduler.recovery(targets)
        if recovery is None:
            return None
        if soonest is None or recovery.in_seconds < soonest.in_seconds:
            soonest = recovery
    return soonest


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


async def _attempt(
    task: asyncio.Task[Any],
    driver: Driver,
    call: Call,
    target: Target,
    stream: bool,
    settings: LoopSettings,
    deadlines: Deadlines,
    bridge: Bridge | None,
    refreshed: Credential | None = None,
) -> Success:
    """One attempt, up to its first data event (stream) or its whole body (not streamed).

    On a rejected credential: one refresh (OAuth drivers) and one retry with the new one.
    (One coroutine, not three: every level of `await` costs on every resumption.)
    """
    credential = refreshed or target.credential
    try:
        with deadlines.limit(task, settings.first_byte_timeout):
            reply = await driver.send(call, credential)
            if call.request is not None:  # translated: into the client's dialect
                assert bridge is not None
                reply = bridge.reply(call, reply, target.provider)
            if stream:
                parser = settings.sse_parser()
                head = StreamHead(
                    reply, target.provider, parser, settings.body_limit, credential.secret
                )
                try:
                    await head.open()
                except BaseException:
                    await reply.body.aclose()
                    raise
                return Success(target, reply, head, None, 0.0, 0)
            try:
                data = await reply.read(settings.body_limit)
            except UpstreamError as exc:
                message = exc.message
                if not exc.provider:
                    message = f"upstream {target.provider}: {message}"
                raise UpstreamUnavailable(message, status=502, provider=target.provider) from exc
            data = StreamMask.whole(data, credential.secret)  # an upstream may echo the key
            return Success(target, reply, None, data, 0.0, 0)
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" not in str(exc):
            raise  # a driver's own bug
        # orjson reads JSON nested up to 1,024 levels but writes only up to 254.
        raise InvalidRequest(
            "The request body is nested too deeply to forward: keyrail re-serializes JSON "
            "nested at most 254 levels (including what a driver adds)."
        ) from None
    except TimeoutError:
        raise UpstreamUnavailable(
            f"upstream {target.provider} sent nothing for {settings.first_byte_timeout:g} s",
            status=502,
            provider=target.provider,
        ) from None
    except CredentialRejected:
        if refreshed is not None:
            raise  # this was the retry
        refreshed = await _refresh(driver, credential)
        if refreshed is None:
            raise
    return await _attempt(
        task, driver, call, target, stream, settings, deadlines, bridge, refreshed
    )


async def _refresh(driver: Driver, credential: Credential) -> Credential | None:
    try:
        # Shielded: a refresh that writes a token file must not be cut by a client leaving.
        return await asyncio.shield(driver.refresh(credential))
    except ProxyError:
        return None


def _decide(scheduler: Scheduler, target: Target, exc: UpstreamError) -> None:
    error = exc.message[:200]
    if isinstance(exc, ProviderDiscontinued):
        scheduler.discontinued(target, exc.message)
    elif isinstance(exc, RateLimited):
        scheduler.rate_limited(target, exc.retry_after, error)
    elif isinstance(exc, CredentialRejected):
        scheduler.rejected(target, error)
    else:
        scheduler.transient(target, error)


def decide_late(scheduler: Scheduler, target: Target, exc: UpstreamError) -> None:
    """An error inside a stream that had already reached the client (MiniMax's in-band codes):
    the stream is lost, but the credential's state still follows the error's decision. A
    broken connection or an idle upstream decides nothing."""
    if isinstance(exc, RateLimited | CredentialRejected | ProviderDiscontinued):
        _decide(scheduler, target, exc)


def _record(
    metrics: ProviderMetrics,
    target: Target,
    exc: UpstreamError,
    latency: float,
    bridge: Bridge | None,
) -> None:
    metrics.record(
        Attempt(
            provider=target.provider,
            driver=target.driver,
            credential_id=target.credential.id,
            status=exc.status,
            latency=latency,
            error=exc.message[:200],
            dialect=bridge.dialect if bridge is not None else "",
        )
    )


def _cooling_message(route: Route, quota: bool) -> str:
    providers = ", ".join(route.providers)
    if quota:
        return f"All credentials for model {route.model} are cooling down via provider {providers}"
    return f"No credential for model {route.model} is available via provider {providers}"


def _for_client(error: UpstreamError, recovery: Recovery | None) -> UpstreamError:
    """The last upstream error, saying when to come back and that keyrail already retried."""
    if error.status == 429:
        seconds = recovery.in_seconds if recovery else (error.retry_after or 1.0)
        error.headers["Retry-After"] = str(_whole_seconds(seconds))
    error.headers["x-should-retry"] = "false"
    return error
