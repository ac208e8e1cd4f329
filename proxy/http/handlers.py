"""HTTP handlers: the client-facing surface of keyrail.

Owns: the routes (`/health`, `/v1/models`, `POST /v1/{chat/completions,completions,
embeddings,responses,messages}`, `POST /v1/messages/count_tokens`), reading and checking
the client's JSON once, answering a finished request (non-streamed bodies, `force-mapping`,
usage) and filling in its access record.
Does not own: what every request goes through around its handler (pipeline.py: the access
line, error bodies, client keys), the failover loop (failover.py), the SSE relay
(streaming.py), or the metrics endpoints (metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from proxy import failover
from proxy.catalog import excluded_by
from proxy.clients.affinity import Sticky, conversation_of
from proxy.clients.keys import Client
from proxy.clients.limits import Admission, Limits
from proxy.config import Settings
from proxy.dialects import messages
from proxy.dialects.assembler import EncodedStream
from proxy.dialects.bridge import Bridge
from proxy.dialects.routes import CODECS, DIALECT_OF
from proxy.driver import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from proxy.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ProxyError,
    RequestError,
    UpstreamError,
)
from proxy.http import request_shape
from proxy.http.pipeline import ACCESS, JSON, Wrap
from proxy.keys import CONVERSATIONS, DEADLINES, LIMITS, LIVE, METRICS, SCHEDULER, STATE, WAITS
from proxy.metrics import Attempt
from proxy.runtime import RUNTIME
from proxy.scheduler import availability
from proxy.streaming import (
    DONE_END,
    MESSAGES_END,
    RESPONSES_END,
    RelayOptions,
    RelayResult,
    StreamEnd,
    StreamHead,
    model_renamer,
    relay,
    usage_in,
)
from proxy.supervisor import worker_id

log = logging.getLogger("keyrail.handlers")
MESSAGES = "messages"
WORKER = worker_id()
# Upstream response headers worth passing on when `passthrough-headers` is on.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "set-cookie", "content-length", "content-encoding",
     "content-type", "date", "server"}
)  # fmt: skip


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON, headers=headers)


async def health(request: web.Request) -> web.Response:
    """Liveness plus each enabled provider's availability from its credentials' states:
    ok (all ready), degraded (some), down (none, or it serves no model: `reasons` says why).
    Never calls an upstream; never logged."""
    current = request.app[LIVE].current
    views = request.app[SCHEDULER].credential_views()
    providers = availability(current.drivers, views)
    answer: dict[str, object] = {"status": "ok", "providers": providers}
    if current.idle:
        for name in current.idle:
            providers[name] = "down"
        answer["reasons"] = {name: f"serves no model: {why}" for name, why in current.idle.items()}
    if WORKER:  # under `--workers N`: which process answered (supervisor.py)
        answer["worker"] = WORKER
    shared = request.app[STATE]
    if shared.shared:  # still "ok" without Redis: requests are served from local state
        answer["state"] = {"backend": "redis", "connected": shared.healthy}
    return json_response(answer)


async def list_models(request: web.Request) -> web.Response:
    """The catalog's models; for a client key with `models` globs, only those it may call."""
    catalog = request[RUNTIME].catalog
    models = catalog.model_list()
    client = request[ACCESS].client
    if client is not None and client.models:
        models = [m for m in models if client.allows(str(m["id"]))]
    if "anthropic-version" in request.headers:  # the anthropic SDKs and Claude Code
        data = [_anthropic_model(str(m["id"]), catalog.created) for m in models]
        return json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
    return json_response({"object": "list", "data": models})


def _anthropic_model(model: str, created: int) -> dict[str, Any]:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {"type": "model", "id": model, "display_name": model, "created_at": when}


async def get_model(request: web.Request) -> web.Response:
    catalog = request[RUNTIME].catalog
    model = request.match_info["model"]
    _check_scope(request[ACCESS].client, model)
    route = catalog.resolve(model)
    if "anthropic-version" in request.headers:
        return json_response(_anthropic_model(route.model, catalog.created))
    return json_response(
        {
            "id": route.model,
            "object": "model",
            "created": catalog.created,
            "owned_by": route.owned_by,
        }
    )


async def read_json_object(request: web.Request, read_seconds: float) -> dict[str, Any]:
    """The request body as a JSON object, or a clear 400 (413 when over the size limit, 408
    when it has not all arrived `read_seconds` after the headers)."""
    try:
        if request.content.is_eof():  # the usual case: the body came with the headers
            raw = await request.read()  # aiohttp raises 413 past client_max_size
        else:
            raw = await _read_within(request, read_seconds)
    except RequestPayloadError as exc:  # e.g. `Content-Encoding: gzip` on a body that is not
        cause = exc.__cause__ or exc
        detail = getattr(cause, "message", "") or str(cause) or type(cause).__name__
        raise InvalidRequest(f"The request body could not be read: {detail}.") from None
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError) or "utf-8" in str(exc).lower():
            raise InvalidRequest("The request body is not valid UTF-8.") from None
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def _read_within(request: web.Request, seconds: float) -> bytes:
    # aiohttp bounds how long a client may take over its headers (keep-alive timeout) but not
    # over its body: one byte a second would hold a handler and a connection for as long as
    # the client likes.
    try:
        async with asyncio.timeout(seconds):
            return await request.read()  # aiohttp raises 413 past client_max_size
    except TimeoutError:
        raise InvalidRequest(
            f"The request body did not arrive within {seconds:g} s "
            "(timeouts.request-read-seconds).",
            status=408,
            code="request_timeout",
        ) from None


def _check_scope(client: Client | None, model: str) -> None:
    if client is not None and not client.allows(model):
        raise _not_allowed(client, model)


def _not_allowed(client: Client, model: str) -> ModelNotAllowed:
    return ModelNotAllowed(
        f"This API key may not use model '{model}' (client '{client.name}').", param="model"
    )


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not (model := model.strip()):
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


async def count_tokens(request: web.Request) -> web.Response:
    """`POST /v1/messages/count_tokens`: a local estimate (messages.estimate_tokens: characters
    / 4 over system, messages and tools); none of the built-in upstreams can count for us.
    The model must be one keyrail serves (404 otherwise), as Anthropic's API answers."""
    runtime = request[RUNTIME]
    rec = request[ACCESS]
    rec.dialect = "messages"
    body = await read_json_object(request, runtime.settings.request_read_timeout)
    rec.model = _model_of(body)
    runtime.catalog.resolve(rec.model)
    count = messages.estimate_tokens(messages.decode_request(body))
    rec.prompt_tokens = count
    return json_response({"input_tokens": count})


async def proxy_request(request: web.Request) -> web.StreamResponse:
    """Serve one POST: route by model, fail over before the first byte, relay the answer."""
    path = request.path  # one of the routes in `setup`: /v1/{endpoint} or /{endpoint}
    endpoint = path[4:] if path.startswith("/v1/") else path[1:]
    app = request.app
    metrics = app[METRICS]
    rec = request[ACCESS]
    runtime = request[RUNTIME]  # one config for the whole request, even across a reload
    success: failover.Success | None = None
    attempt: Attempt | None = None  # the successful one, until it is recorded
    result: RelayResult | None = None  # what the relay saw, kept if the client leaves
    admission: Admission | None = None  # what a limited client's request took of its limits
    limits: Limits | None = None
    try:
        body = await read_json_object(request, runtime.settings.request_read_timeout)
        rec.model = _model_of(body)
        request_shape.check(body)
        stream = body.get("stream") is True
        if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        client = rec.client
        if client is not None:  # a named client: its scope and limits, before any upstream
            if not client.allows(rec.model):
                raise _not_allowed(client, rec.model)
            if client.limited:
                limits = app[LIMITS]
                admission = await limits.admit(client, request.content_length or 0)
        route = runtime.catalog.resolve(rec.model)
        sticky = None
        if runtime.settings.session_affinity:
            conversation = conversation_of(request.headers, body, runtime.settings.session_sources)
            if conversation is not None:
                sticky = Sticky(app[CONVERSATIONS], route.model, conversation)
        dialect = DIALECT_OF.get(endpoint)
        bridge = Bridge(CODECS[dialect], endpoint, body, stream) if dialect else None
        rec.dialect = dialect or ""
        success = await failover.serve(
            route=route,
            endpoint=endpoint,
            body=body,
            stream=stream,
            request_id=rec.request_id,
            drivers=runtime.drivers,
            scheduler=app[SCHEDULER],
            metrics=metrics,
            settings=runtime.loop_settings,
            deadlines=app[DEADLINES],
            waits=app[WAITS],
            resolve_fallbacks=(
                (lambda model: _fallback_routes(runtime, model))
                if runtime.settings.fallbacks
                else None
            ),
            bridge=bridge,
            sticky=sticky,
        )
        target = success.target
        rec.provider, rec.credential_id = target.provider, target.credential.id
        rec.retries, rec.upstream_status = success.retries, success.reply.status
        rename = (target.upstream_model, rec.model) if target.force_mapping else None
        extra = _passthrough(success.reply.headers) if runtime.settings.passthrough_headers else {}
        extra["X-Keyrail-Provider"] = target.provider  # for canaries: which block answered
        if success.reply.host:  # a driver with several upstream addresses: which one answered
            rec.host = extra["X-Keyrail-Upstream-Host"] = success.reply.host
        if success.reply.hosts_failed:  # and those that did not, before it
            rec.hosts_failed = extra["X-Keyrail-Upstream-Host-Failed"] = "; ".join(
                success.reply.hosts_failed
            )
        attempt = Attempt(target.provider, target.driver, target.credential.id, 200, 0.0)
        attempt.dialect = rec.dialect
        if success.head is not None:
            # A stream sends its headers itself; the pipeline adds the id to any other answer.
            extra["X-Request-Id"] = rec.request_id
            result = RelayResult()
            response = await _relay(request, success.head, body, endpoint, rename, extra,
                                    runtime.settings, success.started, bridge,
                                    result)  # fmt: skip
            _relayed(attempt, rec, result)
            if result.error is not None:
                failover.decide_late(app[SCHEDULER], target, result.error)
        else:
            data = success.body or b""
            if rename is not None and (renamer := model_renamer(rename)) is not None:
                data = renamer(data)
            usage = usage_in(data)
            if isinstance(usage, dict):
                attempt.prompt_tokens = int(
                    usage.get("prompt_tokens") or usage.get("input_tokens") or 0
                )
                attempt.completion_tokens = int(
                    usage.get("completion_tokens") or usage.get("output_tokens") or 0
                )
            extra["Content-Type"] = success.reply.headers.get("Content-Type", JSON)
            response = web.Response(body=data, status=success.reply.status, headers=extra)
            rec.status = success.reply.status
        attempt.latency = time.perf_counter() - success.started
        metrics.record(attempt)
        rec.ttft_ms = None if attempt.ttft is None else attempt.ttft * 1000
        rec.prompt_tokens, rec.completion_tokens = attempt.prompt_tokens, attempt.completion_tokens
        attempt = None
        return response
    except ProxyError as exc:
        rec.status = exc.status
        rec.error = exc.message[:200]
        if isinstance(exc, UpstreamError):
            rec.provider = rec.provider or exc.provider
            rec.upstream_status = exc.status
        raise
    except asyncio.CancelledError:
        # The client went away; the upstream request was closed with it. A stream whose end
        # event had already been relayed is complete: the openai SDK closes right after
        # `[DONE]`, and that is a success, with its TTFT and tokens.
        rec.status = 499
        if success is not None and success.head is not None:
            await success.head.reply.body.aclose()
        if success is not None and attempt is not None:  # served until the client left
            if result is not None:  # TTFT and usage as far as they went
                _relayed(attempt, rec, result)
                if not result.completed:
                    rec.status = 499
            attempt.latency = time.perf_counter() - success.started
            metrics.record(attempt)
            rec.ttft_ms = None if attempt.ttft is None else attempt.ttft * 1000
            rec.prompt_tokens = attempt.prompt_tokens
            rec.completion_tokens = attempt.completion_tokens
        raise
    finally:
        if admission is not None and limits is not None:
            # What the request cost: what the upstream reported (by the time the client left,
            # if it did); None when served without a report (the estimate stands); 0 when
            # nothing was served (the estimate is refunded).
            spent: int | None = 0
            if success is not None:
                counted = attempt if attempt is not None else rec
                spent = (counted.prompt_tokens + counted.completion_tokens) or None
            await limits.settle(admission, spent)


def _relayed(attempt: Attempt, rec: Any, result: RelayResult) -> None:
    """Fill the attempt and the access record from what the relay saw."""
    attempt.ttft = result.ttft
    attempt.prompt_tokens = result.usage.prompt_tokens
    attempt.completion_tokens = result.usage.completion_tokens
    if result.error is not None:
        attempt.status, attempt.error = result.error.status, result.error.message[:200]
        rec.error = attempt.error
        rec.upstream_status = result.error.status
    rec.status = 200


async def _relay(
    request: web.Request,
    head: StreamHead,
    body: dict[str, Any],
    endpoint: str,
    rename: tuple[str, str] | None,
    extra: dict[str, str],
    settings: Settings,
    started: float,
    bridge: Bridge | None,
    result: RelayResult,
) -> web.StreamResponse:
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    relay_options = RelayOptions(
        keepalive_seconds=settings.keepalive_seconds,
        idle_seconds=settings.idle_timeout,
        client_wants_usage=wants_usage or endpoint != CHAT,
        rename_model=rename,
        end=_STREAM_ENDS.get(endpoint),
        extra_headers=extra,
    )
    if bridge is not None and bridge.dialect != "chat":
        relay_options.keepalive = bridge.codec.keepalive
        relay_options.error_event = bridge.codec.stream_error
        relay_options.end = _STREAM_ENDS.get(bridge.dialect)
    translated = head.reply.body
    if isinstance(translated, EncodedStream):  # the encoder knows its stream's state
        relay_options.error_event = translated.encoder.fail
    response, _ = await relay(request, head, relay_options, started, result)
    return response


#: The terminal event of each endpoint's (or client dialect's) stream: a stream is complete
#: once it has been relayed, and one the upstream ends without it is a failure.
_STREAM_ENDS: dict[str, StreamEnd] = {
    CHAT: DONE_END,
    COMPLETIONS: DONE_END,
    RESPONSES: RESPONSES_END,
    MESSAGES: MESSAGES_END,
}


def _fallback_routes(runtime: Any, model: str) -> list[Any]:
    routes = []
    for pattern, targets in runtime.settings.fallbacks.items():
        if excluded_by(model, [pattern]):
            for fallback in targets:
                if fallback == model:
                    continue
                try:
                    routes.append(runtime.catalog.resolve(fallback))
                except RequestError:
                    log.warning("fallback model %s for %s is not in the catalog", fallback, model)
            break
    return routes


def _passthrough(headers: Any) -> dict[str, str]:
    return {
        k: v
        for k, v in headers.items()
        if k.lower() not in _HOP_BY_HOP
        and not k.lower().startswith(
            ("x-litellm-", "helicone-", "x-portkey-", "cf-aig-", "x-kong-")
        )
    }


def setup(app: web.Application, wrap: Wrap) -> None:
    """Register the OpenAI-shaped routes, each handler as `wrap` gives it (the pipeline)."""
    router = app.router
    for path in ("/health", "/healthz"):
        router.add_get(path, wrap(health))  # add_get also answers HEAD
    router.add_get("/v1/models", wrap(list_models))
    router.add_get("/models", wrap(list_models))
    router.add_get("/v1/models/{model:.+}", wrap(get_model))
    serve = wrap(proxy_request)
    for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES):
        router.add_post(f"/v1/{endpoint}", serve)
        router.add_post(f"/{endpoint}", serve)
    router.add_post("/v1/messages/count_tokens", wrap(count_tokens))
