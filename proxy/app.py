"""The app factory: keyrail is this list of components.

`create_app(settings)` wires them in request order; each has its own module and `setup`.
Does not own anything else: no behaviour lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy import auth, handlers, metrics, runtime
from proxy.config import Settings
from proxy.keys import LIVE, METRICS, REGISTRY, SCHEDULER
from proxy.logs import install_redaction
from proxy.metrics import ProviderMetrics
from proxy.redact import secrets_of
from proxy.registry import Registry
from proxy.scheduler import Scheduler


def create_app(settings: Settings, registry: Registry | None = None) -> web.Application:
    """Build the aiohttp application for these settings (the runtime starts with the app)."""
    registry = registry or Registry.discover()
    install_redaction(secrets_of(settings))  # no configured secret in any log record
    client_keys = auth.ClientKeys(settings.api_keys)
    app = web.Application(
        middlewares=[
            handlers.access_middleware,  # every request gets an id and (probes aside) a log line
            handlers.errors_middleware,  # every failure leaves as an OpenAI error body
            auth.middleware(  # client keys guard /v1/* (and the metrics, if configured)
                lambda request: client_keys,
                metrics_need_key=lambda request: app[LIVE].current.settings.metrics_require_key,
            ),
        ],
        client_max_size=int(settings.request_body_limit_mb * 1024 * 1024),
        handler_args={"max_field_size": 16 * 1024},
    )
    app[REGISTRY] = registry
    app[SCHEDULER] = Scheduler(  # credential state; outlives config reloads
        strategy=settings.routing_strategy,
        transient_cooldown=settings.transient_error_cooldown_seconds,
        max_cooldown=settings.max_cooldown_seconds,
        disable_cooling=settings.disable_cooling,
    )
    app[METRICS] = ProviderMetrics(window_seconds=settings.metrics_window_seconds)
    app[LIVE] = runtime.Live()  # the current config's drivers and catalog, swapped on reload

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        # drivers, pooled upstream sessions and the model catalog, built from the config
        live = app[LIVE]
        live.current = await runtime.build(settings, registry)
        install_redaction(c.secret for creds in live.current.credentials.values() for c in creds)
        app[SCHEDULER].register(
            (provider, cred.id)
            for provider, creds in live.current.credentials.items()
            for cred in creds
        )
        yield
        await live.current.aclose()

    app.cleanup_ctx.append(runtime_ctx)
    handlers.setup(app)  # /health, /v1/models, POST /v1/* endpoints
    metrics.setup(app)  # /v1/metrics/providers, /metrics (Prometheus)
    return app
