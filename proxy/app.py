"""The app factory: keyrail is this list of components.

`create_app(settings)` wires them; each has its own module and `setup`, and what every request
goes through around its handler, in order, is the pipeline (http/pipeline.py).
Does not own anything else: no behaviour lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from proxy import logs, metrics, quota, reload, runtime, shutdown
from proxy.clients.affinity import Conversations
from proxy.clients.limits import Limits
from proxy.clients.usage import ClientUsage
from proxy.config import Settings
from proxy.deadlines import Deadlines
from proxy.http import handlers, management, pipeline
from proxy.keys import (
    CLIENT_USAGE,
    CONVERSATIONS,
    DEADLINES,
    LIMITS,
    LIVE,
    METRICS,
    QUOTAS,
    RECENT_ERRORS,
    REGISTRY,
    SCHEDULER,
    STATE,
    WAITS,
)
from proxy.logs import install_redaction
from proxy.metrics import ProviderMetrics
from proxy.redact import secrets_of
from proxy.registry import Registry
from proxy.scheduler import Scheduler
from proxy.state.shared import open_state
from proxy.status import routes as status
from proxy.status.recent import RecentErrors
from proxy.waits import RecoveryWaits


def create_app(
    settings: Settings, registry: Registry | None = None, *, config_path: Path | None = None
) -> web.Application:
    """Build the aiohttp application for these settings (the runtime starts with the app).

    `config_path` is the file to watch and reload (None: no hot reload).
    """
    registry = registry or Registry.discover()
    install_redaction(secrets_of(settings))  # no configured secret in any log record
    live = runtime.Live()  # the current config's drivers and catalog, swapped on reload
    drain = shutdown.Drain()  # requests in flight, drained on shutdown
    app = web.Application(
        client_max_size=int(settings.request_body_limit_mb * 1024 * 1024),
        handler_args={"max_field_size": 16 * 1024},
    )
    # Every route's handler runs inside it: drain, access line, error bodies, runtime, client keys.
    recent_errors = RecentErrors()  # the last error answers, for the status page
    app[CLIENT_USAGE] = ClientUsage()  # what each named client did; outlives reloads
    wrap = pipeline.Pipeline(drain, live, recent_errors, app[CLIENT_USAGE]).wrap
    app[REGISTRY] = registry
    app[SCHEDULER] = Scheduler(  # credential state; outlives config reloads
        strategy=settings.routing_strategy,
        transient_cooldown=settings.transient_error_cooldown_seconds,
        max_cooldown=settings.max_cooldown_seconds,
        disable_cooling=settings.disable_cooling,
    )
    app[WAITS] = RecoveryWaits()  # requests waiting for credentials to recover, in turn
    app[METRICS] = ProviderMetrics(window_seconds=settings.metrics_window_seconds)
    # what workers and instances share (cooldowns, metrics): nothing, or Redis (`state:`)
    app[STATE] = open_state(settings.state)
    # Client limits' counters, from the state backend (in memory, or Redis shared by every
    # instance); they outlive reloads: a key that stays keeps its counts.
    app[LIMITS] = Limits(app[STATE].limits)
    app[CONVERSATIONS] = Conversations(  # sticky sessions' bindings; outlive reloads
        settings.session_ttl_seconds, settings.session_max_bindings
    )
    app[DEADLINES] = Deadlines()  # first-byte limits of the attempts in flight, on one timer
    app[LIVE] = live
    app[QUOTAS] = quota.Quotas()  # each credential's last quota reading (drivers that tell)
    app[RECENT_ERRORS] = recent_errors
    shutdown.setup(app, drain, lambda: live.current.settings.shutdown_drain_seconds)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        # drivers, pooled upstream sessions and the model catalog, built from the config
        live.current = await runtime.build(settings, registry)
        reload.apply_to_scheduler(app[SCHEDULER], live.current)
        yield
        await live.current.aclose()
        app[DEADLINES].close()

    app.cleanup_ctx.append(logs.flush_ctx)  # buffered log lines reach stderr promptly
    app.cleanup_ctx.append(runtime_ctx)
    quota.setup(app, app[QUOTAS])  # read quotas as they fall due; cool the spent

    async def state_ctx(app: web.Application) -> AsyncIterator[None]:
        # after the runtime: the credentials are registered before others' cooldowns merge
        app[STATE].attach(app[SCHEDULER], app[METRICS])
        app[STATE].share("clients", app[CLIENT_USAGE].export)  # /v1/metrics/clients for all
        app[STATE].attach_bindings(app[CONVERSATIONS])  # a conversation's credential, for all
        await app[STATE].start()
        yield
        await app[STATE].aclose()

    app.cleanup_ctx.append(state_ctx)
    reload.setup(app, config_path)  # watch config.yaml; swap the runtime when it changes
    handlers.setup(app, wrap)  # /health, /v1/models, POST /v1/* endpoints
    management.setup(app, wrap)  # /v0/management/*, behind remote-management.secret-key
    metrics.setup(app, wrap)  # /v1/metrics/providers, /metrics (Prometheus)
    status.setup(app, wrap)  # /status: the live page, and /v1/status, its data
    pipeline.add_unrouted(app.router, wrap)  # last: 404 and 405 as OpenAI errors
    return app
