"""The request loop: try the pool's credentials until one answers, before the first byte.

Owns: for one client request, picking targets through the scheduler, calling the driver,
turning each failure into the scheduler's outcome, refreshing an OAuth credential once on a
rejection, moving on at once (no sleeping) to the next credential and block, waiting for a
recovery (in turn, waits.py) only within `max-retry-interval` of the request's start,
fallbacks, and the error the client gets when no attempt succeeds. Every attempt is reported
to the metrics.
Does not own: what an outcome does to a credential (scheduler.py), relaying a successful
answer (streaming.py / http/handlers.py).
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
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.metrics import Attempt, ProviderMetrics
from proxy.redact import StreamMask
from proxy.scheduler import TRANSIENT, UNAUTHORIZED, Recovery, Scheduler
from proxy.sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, SSEParser
from proxy.streaming import StreamHead
from proxy.waits import RecoveryWaits


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
    waits: RecoveryWaits | None = None,
    resolve_fallbacks: Callable[[str], Sequence[Route]] | None = None,
    clock: Callable[[], float] | None = None,
    bridge: Bridge | None = None,
    sticky: Sticky | None = None,
) -> Success:
    """Run the failover loop for one request; return the first success or raise.

    A pass tries every credential of the route's pool, then each fallback's, at most once.
    Credentials that are ready are tried at once, without sleeping; one that is cooling down
    is waited for (in turn with other waiting requests, `waits`) only while its recovery falls
    within `max-retry-interval` of the request's start: that bounds the whole request's
    waiting, not each pass's. A pass ends when every credential was tried (or is out of
    reach); `request-retry` more passes follow, each only if the last one cooled something
    (else it would hot-loop on the same answers).
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
    passes = 0
    cooled: list[Target] = []  # the credentials this pass's failures cooled down
    woken = False  # this request was woken in turn: a success hands the turn on
    deadline = 0.0  # when the wait budget ends (set at the first wait: rarely needed)
    # Shared by the pools (a fallback may reuse a target). A list: it holds one or two
    # targets, and a set would hash a Target (and its Credential) on every request.
    tried: list[Target] = []
    tried_per_pool = [0] * len(pools)
    cap = settings.max_retry_credentials
    while True:
        for i, (current, targets) in enumerate(pools):
            while not (cap and tried_per_pool[i] >= cap):
                target = None
                if sticky is not None and not tried and current is route:
                    target = sticky.first(targets, scheduler)
                if target is None:
                    target = scheduler.pick(current.model, targets, tried)
                    if target is None:
                        break
                tried.append(target)
                tried_per_pool[i] += 1
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
                    if scheduler.recovery((target,)) is not None:
                        cooled.append(target)
                    continue
                scheduler.success(target, scheduled)
                if sticky is not None and current is route:
                    sticky.served(target, targets, scheduler)
                if woken and waits is not None:
                    waits.hand_on(route.model)  # the credential works: the next waiter's turn
                success.started = started
                success.retries = attempts
                return success
        # Nothing is ready that this pass has not tried.
        if not settings.request_retry:
            break  # `request-retry: 0`: one pass over what is ready, no waiting at all
        if not deadline:
            deadline = now() + settings.max_retry_interval
        remaining = deadline - now()
        untried = _soonest(scheduler, pools, tried, tried_per_pool, cap)
        if untried is READY:
            continue  # a cooldown ended since the last pick
        if untried is None or untried.in_seconds > remaining:
            # This pass is over: each credential was tried, or recovers too late to wait for.
            if not tried or not cooled:
                break  # nothing to try at all; or what failed did not cool (cooling off)
            passes += 1
            if passes > settings.request_retry:
                break
            # The next pass begins when one of the credentials this pass cooled recovers.
            untried = scheduler.recovery(cooled)
            tried.clear()
            tried_per_pool = [0] * len(pools)
            cooled = []
            if untried is None:
                continue  # one is ready already
            if untried.in_seconds > remaining:
                break
        woken = await _wait(waits, route.model, scheduler, pools, untried, remaining, woken)
    recovery = _soonest(scheduler, pools, (), [0] * len(pools), 0)
    recovery = None if recovery is READY else recovery
    if last_error is not None:
        raise _for_client(last_error, recovery)
    # Nothing was tried: every credential was already cooling down or disabled.
    soonest = recovery or Recovery(in_seconds=1.0, quota=False, reason=TRANSIENT)
    if soonest.discontinued:  # gone until a reload: say so at once, every time
        raise ProviderDiscontinued(soonest.discontinued, provider=", ".join(route.providers))
    raise _nothing_ready(route, soonest, scheduler)


async def _wait(
    waits: RecoveryWaits | None,
    pool: str,
    scheduler: Scheduler,
    pools: Sequence[tuple[Route, Sequence[Target]]],
    recovery: Recovery,
    remaining: float,
    woken_before: bool,
) -> bool:
    """Wait for the recovery (in turn with other waiting requests when `waits` is given);
    True when woken in turn."""
    if waits is None:
        await asyncio.sleep(recovery.in_seconds)
        return False
    state = _PoolState(scheduler, pools)
    return await waits.wait(pool, state, recovery.in_seconds, remaining, first=woken_before)


class _PoolState:
    """What the waits read of a request's pools (its route's and its fallbacks')."""

    __slots__ = ("_pools", "_scheduler")

    def __init__(
        self, scheduler: Scheduler, pools: Sequence[tuple[Route, Sequence[Target]]]
    ) -> None:
        self._scheduler = scheduler
        self._pools = pools

    def ready(self) -> int:
        return sum(self._scheduler.ready_count(targets) for _route, targets in self._pools)

    def recovery_in(self) -> float | None:
        soonest = _soonest(self._scheduler, self._pools, (), [0] * len(self._pools), 0)
        return None if soonest is None or soonest is READY else soonest.in_seconds


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
    scheduler: Scheduler,
    pools: Sequence[tuple[Route, Sequence[Target]]],
    tried: Sequence[Target],
    tried_per_pool: Sequence[int],
    cap: int,
) -> Recovery | None:
    """The soonest recovery among the pools' untried credentials (a pool that reached the
    `max-retry-credentials` cap has none): `READY` when one of them is ready now, None when
    none is left."""
    soonest: Recovery | None = None
    for (_route, targets), used in zip(pools, tried_per_pool, strict=True):
        if cap and used >= cap:
            continue
        untried = [t for t in targets if t not in tried] if tried else targets
        if not untried:
            continue
        recovery = scheduler.recovery(untried)
        if recovery is None:
            return READY
        if soonest is None or recovery.in_seconds < soonest.in_seconds:
            soonest = recovery
    return soonest


#: `_soonest`'s answer when a credential is ready now.
READY = Recovery(in_seconds=0.0, quota=False)


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


def _nothing_ready(route: Route, soonest: Recovery, scheduler: Scheduler) -> NoCredential:
    """The error when every credential was cooling or disabled before any attempt: it says
    why, from the soonest one's state and last error (never "no credential" for an outage)."""
    providers = ", ".join(route.providers)
    last = scheduler.last_error(soonest.credential_id) if soonest.credential_id else ""
    why = f" (last error: {last})" if last else ""
    seconds = _whole_seconds(soonest.in_seconds)
    if soonest.quota:
        message = (
            f"All credentials for model {route.model} are cooling down via provider {providers}"
        )
        return NoCredential(message, retry_after=seconds, quota=True)
    if soonest.reason == UNAUTHORIZED:
        message = (
            f"keyrail's credentials for provider {providers} are disabled for model "
            f"{route.model}{why}. Your key to keyrail was accepted; keyrail's operator must fix "
            "this provider's key or token"
        )
        error = NoCredential(message, retry_after=seconds, quota=False)
        error.code = "upstream_auth_failed"
        return error
    message = (
        f"provider {providers} is unreachable for model {route.model}{why}; "
        f"keyrail tries it again in {seconds} s"
    )
    return NoCredential(message, retry_after=seconds, quota=False)


def _for_client(error: UpstreamError, recovery: Recovery | None) -> UpstreamError:
    """The last upstream error, saying when to come back and that keyrail already retried.
    A rejected credential is answered as the provider's failure (502 upstream_auth_failed),
    never as the app's wrong key."""
    if isinstance(error, CredentialRejected):
        error = UpstreamAuthFailed(error)
    if error.status == 429:
        seconds = recovery.in_seconds if recovery else (error.retry_after or 1.0)
        error.headers["Retry-After"] = str(_whole_seconds(seconds))
    error.headers["x-should-retry"] = "false"
    return error
