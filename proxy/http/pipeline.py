"""The pipeline: what every request goes through around its route's handler, in order.

1. admission: refused with a 503 while the server drains; counted in flight until it ends
   (shutdown.py owns the drain);
2. access: a request id (in every answer's `X-Request-Id`, errors included), the access
   record the handlers fill, and its line at the end, with a line for every upstream attempt
   that failed on the way (logs.py owns the formats);
3. errors: every failure leaves as an error body in the route's dialect (Anthropic's shape on
   `/v1/messages`, OpenAI's elsewhere), redacted (upstreams may echo a key), never as a
   traceback;
4. runtime: the request keeps the config it started with, even across a reload (runtime.py);
5. client keys: `/v1/*` needs one of `api-keys` (auth.py owns the check); a named client's
   request is counted in its usage when it ends (proxy/clients/usage.py).

Owns: that order, and the route that answers unknown paths (404) and methods (405) the same
way. Does not own: any route's own work (handlers.py, management.py, metrics.py).

One wrapper, not five aiohttp middlewares: each middleware is a coroutine level that every
resumption of the handler passes through, and having any at all turns on aiohttp's
per-request middleware machinery. Together that was about 25,000 instructions a request,
3.5 % of keyrail's CPU per request (bench/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy import auth, shutdown
from proxy.clients.usage import ClientUsage
from proxy.dialects.routes import codec_for_path
from proxy.errors import InvalidRequest, ProxyError, error_body
from proxy.logs import RequestRecord, log_failed_attempt, log_request
from proxy.metrics import ATTEMPTS, Attempt
from proxy.redact import REDACTOR
from proxy.runtime import RUNTIME, Live
from proxy.status.recent import RecentErrors

log = logging.getLogger("keyrail.pipeline")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What the routes' `setup`s take: the pipeline's `wrap`, which each handler is registered as.
Wrap = Callable[[Handler], Handler]
JSON = "application/json"
#: The access record of the request being served: handlers fill it, the pipeline logs it.
ACCESS = web.RequestKey("access", RequestRecord)
#: Probes and scrapes are answered but not logged: they would drown the access log.
QUIET_PATHS = frozenset({"/health", "/healthz", "/metrics", "/status", "/v1/status"})
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class Pipeline:
    """`wrap(handler)` gives the handler every route is registered with."""

    def __init__(
        self, drain: shutdown.Drain, live: Live, recent: RecentErrors, usage: ClientUsage
    ) -> None:
        self._drain = drain
        self._live = live
        self._recent = recent
        self._usage = usage

    def wrap(self, handler: Handler) -> Handler:
        drain, live, recent, usage = self._drain, self._live, self._recent, self._usage

        # One coroutine around the handler: every level of `await` costs on every resumption.
        async def through_pipeline(request: web.Request) -> web.StreamResponse:
            if drain.closing:
                refused = shutdown.unavailable()
                refused.headers["X-Request-Id"] = _request_id()
                return refused
            runtime = live.current  # pinned for the whole request, even across a reload
            task = drain.enter()
            runtime.enter()
            rec = RequestRecord(_request_id(), request.method, request.path)
            request[ACCESS] = rec
            request[RUNTIME] = runtime
            started = time.perf_counter()
            trail: list[Attempt] = []
            collecting = ATTEMPTS.set(trail)
            try:
                try:
                    settings = runtime.settings
                    rec.client = auth.check(
                        request, runtime.client_keys, settings.metrics_require_key
                    )
                    response = await handler(request)
                except Exception as exc:  # not CancelledError: that one goes on
                    response = _failure_response(request, rec, exc)
                rec.status = response.status
                if not response.prepared:  # a stream sent its own, with its headers
                    response.headers["X-Request-Id"] = rec.request_id
                return response
            except asyncio.CancelledError:
                # The client went away. A handler that had finished its answer first (a stream
                # relayed to its end event) has said so with its status.
                if rec.status != 200:
                    rec.status = 499
                if request.writer.output_size == 0 and shutdown.absorb_cut():
                    rec.status = 503  # the drain's cut, before anything was sent
                    cut = shutdown.unavailable()
                    cut.headers["X-Request-Id"] = rec.request_id
                    return cut
                raise
            except (
                web.HTTPException
            ) as exc:  # < 400 (a redirect); _failure_response answers the rest
                rec.status = exc.status
                raise
            finally:
                ATTEMPTS.reset(collecting)
                runtime.leave()
                drain.leave(task)
                _log(request, rec, trail, started, recent)
                if rec.client is not None and rec.model:  # an API call, not a listing
                    usage.record(rec.client.name, rec.model, rec.status, rec.prompt_tokens,
                                 rec.completion_tokens)  # fmt: skip

        return through_pipeline


def _request_id() -> str:
    # Unique enough to find a line, and no system call (os.urandom is one per request).
    return f"{random.getrandbits(48):012x}"


def add_unrouted(router: web.UrlDispatcher, wrap: Wrap) -> None:
    """Answer what no route matched (added last, so that every other route comes first):
    404, or 405 with `Allow` when the path has routes for other methods."""
    catch_all = router.add_resource("/{unrouted:.*}")

    async def unrouted(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in router.resources():
            if resource is not catch_all:
                _match, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    catch_all.add_route("*", wrap(unrouted))


def _failure_response(request: web.Request, rec: RequestRecord, exc: Exception) -> web.Response:
    """The error body for a failure, in the route's dialect; re-raises what is not one (a
    redirect, a reset)."""
    if isinstance(exc, ProxyError):
        if not rec.error:
            rec.error = exc.message[:200]
        codec = codec_for_path(request.path)
        status, body = codec.error(exc) if codec is not None else (exc.status, exc.body())
        # Upstream error bodies are relayed, and some echo the key they were sent: redact.
        body = REDACTOR.redact_bytes(body)
        return web.Response(body=body, status=status, content_type=JSON, headers=exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        message = exc.reason
        if exc.status == 404:
            message = f"Unknown endpoint: {request.method} {request.path}"
        elif exc.status == 413:
            message = "Request body too large"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        codec = codec_for_path(request.path)
        code = _STATUS_CODES.get(exc.status, "invalid_request")
        if codec is not None and codec.name != "chat":  # e.g. a body too large for /v1/messages
            status, body = codec.error(InvalidRequest(message, status=exc.status, code=code))
            return web.Response(body=body, status=status, content_type=JSON, headers=headers)
        body = error_body(message, type="invalid_request_error", code=code)
        return web.Response(body=body, status=exc.status, content_type=JSON, headers=headers)
    if isinstance(exc, ConnectionResetError):
        raise exc  # the client is gone: nobody to answer
    # A bug in keyrail (client input never ends here): its traceback, once, with the request id.
    log.exception(
        "unhandled error on %s %s request_id=%s",
        request.method,
        request.path,
        rec.request_id,
        exc_info=exc,
    )
    body = error_body("internal error in keyrail", type="server_error", code="internal_error")
    return web.Response(body=body, status=500, content_type=JSON)


def _log(
    request: web.Request,
    rec: RequestRecord,
    trail: list[Attempt],
    started: float,
    recent: RecentErrors,
) -> None:
    for failed in trail:
        if not 200 <= failed.status < 300:
            log_failed_attempt(rec.request_id, failed)
    if trail and not rec.credential_id:  # no attempt succeeded: name the last one tried
        rec.provider, rec.credential_id = trail[-1].provider, trail[-1].credential_id
        rec.upstream_status, rec.retries = trail[-1].status, len(trail) - 1
    if request.path not in QUIET_PATHS:
        rec.latency_ms = (time.perf_counter() - started) * 1000
        log_request(rec)
        if rec.status >= 400:
            recent.add(rec)  # for the status page
