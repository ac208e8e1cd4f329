"""Management endpoints under `/v0/management/`: what operators run during an incident.

Owns: the guard (404 for every route while `remote-management.secret-key` is unset; loopback
clients only unless `remote-management.allow-remote`; the key from `Authorization: Bearer`,
`X-Management-Key` or `X-Management-Secret`, compared in constant time; guessing bounded for
the whole server, whatever the source address: see `Guard`), and the routes: provider and
credential states, cooldowns, recovering a provider or credential now, the named clients
(keys masked) with their limits and usage, the sticky sessions' bindings, refreshing an OAuth
credential now, reloading the config, and the effective config with every secret masked.
Every answer is scrubbed of the secrets the running config knows. Does not own: credential
state (scheduler.py), reloading (reload.py), token refresh itself (each driver's `refresh`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from proxy import redact
from proxy.auth import ClientKeys
from proxy.driver import Credential, Driver
from proxy.errors import ProxyError, error_body
from proxy.http.pipeline import Wrap
from proxy.keys import CLIENT_USAGE, CONVERSATIONS, LIMITS, LIVE, SCHEDULER
from proxy.redact import REDACTOR, is_secret_name
from proxy.reload import RELOADER, Outcome
from proxy.runtime import Runtime
from proxy.scheduler import CredentialView

PREFIX = "/v0/management"
#: Management keys checked at once, server-wide. A wrong key keeps its check busy for
#: FAILURE_DELAY before its 401, so at most CHECKS / FAILURE_DELAY wrong keys are evaluated a
#: second (8 a second), from one address or a thousand.
CHECKS = 8
FAILURE_DELAY = 1.0
MASK = redact.MASK  # one mask everywhere: logs, errors and management answers
#: option or header names whose values are secrets (matched case-insensitively, as substrings)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ManagementError(ProxyError):
    """An error of the management API, in the OpenAI error shape."""

    def __init__(self, status: int, message: str, code: str, **kwargs: Any) -> None:
        super().__init__(message, status=status, code=code, **kwargs)


class Guard:
    """Who may call the management API, and how fast anyone may guess its key.

    No address is ever banned (a ban per address locks the operator out when a local process
    guesses, and is no bound at all for a guesser cycling through 127.0.0.0/8). Instead the
    whole server has CHECKS check slots: a key is compared only once it holds one, a wrong key
    keeps it for FAILURE_DELAY before its 401, and a request finding every slot busy is
    answered 429 at once, unchecked. The correct key frees its slot at once, so it is
    accepted as soon as a slot is free, however many guesses came before.
    """

    def __init__(self, checks: int | None = None, failure_delay: float | None = None) -> None:
        self._free = CHECKS if checks is None else checks
        self._failure_delay = FAILURE_DELAY if failure_delay is None else failure_delay
        #: wrong keys compared so far (the guesses evaluated), for tests and the battery
        self.failures = 0

    async def check(self, request: web.Request, runtime: Runtime) -> None:
        settings = runtime.settings
        if not settings.management_secret:
            raise ManagementError(
                404, f"Unknown endpoint: {request.method} {request.path}", "not_found"
            )
        address = request.remote or ""
        if not settings.management_allow_remote and not _is_loopback(address):
            raise ManagementError(403, "remote management is disabled", "remote_disabled")
        presented = _presented_key(request)
        if not presented:
            raise ManagementError(401, "missing management key", "missing_management_key")
        if self._free <= 0:
            raise ManagementError(
                429,
                "too many management key checks in flight; retry in a second",
                "management_busy",
                headers={"Retry-After": "1"},
            )
        self._free -= 1
        try:
            # The client-key comparison, constant time (the secret is non-empty: 404 otherwise).
            correct = ClientKeys((settings.management_secret,)).allows(presented)
        except BaseException:
            self._release()
            raise
        if correct:
            self._release()
            return
        self.failures += 1
        # The slot comes back when the delay ends, even if the guesser hangs up before.
        delay = asyncio.ensure_future(asyncio.sleep(self._failure_delay))
        delay.add_done_callback(self._release)
        await asyncio.shield(delay)
        raise ManagementError(401, "invalid management key", "invalid_management_key")

    def _release(self, _done: object = None) -> None:
        self._free += 1


def _presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "").strip()
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth
    return (
        request.headers.get("X-Management-Key") or request.headers.get("X-Management-Secret") or ""
    ).strip()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False  # a unix socket or an unknown peer is not trusted as local


# --- answers -------------------------------------------------------------------------------


def _answer(runtime: Runtime, data: Any, status: int = 200) -> web.Response:
    # Defence in depth: an upstream may have echoed a key into a last_error.
    body = REDACTOR.redact_bytes(orjson.dumps(data))
    return web.Response(body=body, status=status, content_type="application/json")


def _views_by_provider(views: Iterable[CredentialView]) -> dict[str, list[CredentialView]]:
    out: dict[str, list[CredentialView]] = {}
    for view in views:
        out.setdefault(view.provider, []).append(view)
    return out


def _view_json(view: CredentialView) -> dict[str, Any]:
    remaining = None if view.until is None else max(0, round(view.until - time.time()))
    return {
        "id": view.id,
        "provider": view.provider,
        "state": view.state,
        "reason": view.reason or None,
        "until": None if view.until is None else round(view.until, 3),
        "retry_in_seconds": remaining,
        "cooling_models": list(view.cooling_models),
        "last_error": view.last_error or None,
    }


def _can_refresh(driver: Driver) -> bool:
    return type(driver).refresh is not Driver.refresh


def _runtime(request: web.Request) -> Runtime:
    return request.app[LIVE].current


async def providers(request: web.Request) -> web.Response:
    """Every provider block: driver, prefix, models served, and each credential's state."""
    rt = _runtime(request)
    views = _views_by_provider(request.app[SCHEDULER].credential_views())
    served: dict[str, list[str]] = {}
    for mid, route in rt.catalog.routes.items():
        for provider in route.providers:
            served.setdefault(provider, []).append(mid)
    out = []
    for block in rt.settings.providers:
        driver = rt.drivers.get(block.name)
        creds = views.get(block.name, [])
        ready = sum(1 for v in creds if v.state == "ready")
        out.append(
            {
                "name": block.name,
                "driver": block.driver,
                "prefix": block.prefix or None,
                "priority": block.priority,
                "disabled": block.disabled,
                "status": "disabled"
                if block.disabled
                else ("ok" if creds and ready == len(creds) else ("degraded" if ready else "down")),
                "can_refresh": driver is not None and _can_refresh(driver),
                "models": sorted(served.get(block.name, [])),
                "excluded": sorted(
                    e.model for e in rt.catalog.excluded if e.provider == block.name
                ),
                "credentials": [_view_json(v) for v in creds],
            }
        )
    return _answer(rt, {"object": "list", "data": out})


async def clients(request: web.Request) -> web.Response:
    """The named clients (keys masked): scope, limits with what is left, and usage; and how
    many plain keys there are."""
    rt = _runtime(request)
    app = request.app
    out = []
    for client in rt.client_keys.clients:
        out.append(
            {
                "name": client.name,
                "key": MASK,
                "models": list(client.models) or ["*"],
                "limits": client.limits(),
                "remaining": await app[LIMITS].view(client),
                "usage": app[CLIENT_USAGE].of(client.name),
            }
        )
    plain = len(rt.settings.api_keys) - len(rt.client_keys.clients)
    return _answer(rt, {"object": "list", "data": out, "plain_keys": plain})


async def sessions(request: web.Request) -> web.Response:
    """Sticky sessions: each conversation's credential per model (conversation ids are
    digests), most recent first."""
    rt = _runtime(request)
    table = request.app[CONVERSATIONS]
    return _answer(
        rt,
        {
            "object": "list",
            "enabled": rt.settings.session_affinity,
            "ttl_seconds": table.ttl,
            "max_bindings": table.max_bindings,
            "rebinds": table.rebinds,
            "data": table.views(),
        },
    )


async def cooldowns(request: web.Request) -> web.Response:
    """Credentials that are cooling down or disabled now, soonest recovery first."""
    rt = _runtime(request)
    views = [v for v in request.app[SCHEDULER].credential_views() if v.state != "ready"]
    views.sort(key=lambda v: v.until or 0.0)
    return _answer(rt, {"object": "list", "data": [_view_json(v) for v in views]})


def _provider(rt: Runtime, name: str) -> Driver:
    driver = rt.drivers.get(name)
    if driver is None:
        known = ", ".join(sorted(rt.drivers)) or "none"
        raise ManagementError(
            404, f"no enabled provider named '{name}' (providers: {known})", "provider_not_found"
        )
    return driver


def _credentials(rt: Runtime, provider: str, credential_id: str | None) -> list[Credential]:
    creds = list(rt.credentials.get(provider, ()))
    if credential_id is None:
        return creds
    chosen = [c for c in creds if c.id == credential_id]
    if not chosen:
        raise ManagementError(
            404,
            f"provider '{provider}' has no credential '{credential_id}'",
            "credential_not_found",
        )
    return chosen


async def recover(request: web.Request) -> web.Response:
    """Clear cooldowns and disables of a provider (or one `?credential=` of it) now."""
    rt = _runtime(request)
    name = request.match_info["name"]
    _provider(rt, name)
    scheduler = request.app[SCHEDULER]
    cleared = 0
    for cred in _credentials(rt, name, request.query.get("credential")):
        cleared += scheduler.recover(credential_id=cred.id)
    return _answer(rt, {"status": "ok", "provider": name, "cleared": cleared})


async def refresh(request: web.Request) -> web.Response:
    """Refresh a provider's OAuth credentials (or one `?credential=`) now."""
    rt = _runtime(request)
    name = request.match_info["provider"]
    driver = _provider(rt, name)
    if not _can_refresh(driver):
        raise ManagementError(
            400,
            f"provider '{name}' ({driver.block.driver}) has no OAuth credential to refresh",
            "refresh_unsupported",
        )
    results = []
    for cred in _credentials(rt, name, request.query.get("credential")):
        try:
            fresh = await driver.refresh(cred)
        except ProxyError as exc:
            results.append({"id": cred.id, "refreshed": False, "error": exc.message[:300]})
            continue
        if fresh is None:
            results.append({"id": cred.id, "refreshed": False, "error": "refresh failed"})
            continue
        request.app[SCHEDULER].recover(credential_id=cred.id)  # a new token: try it again now
        results.append({"id": cred.id, "refreshed": True, "error": None})
    ok = all(r["refreshed"] for r in results)
    data = {"status": "ok" if ok else "failed", "provider": name, "credentials": results}
    return _answer(rt, data, 200 if ok else 502)


async def reload_config(request: web.Request) -> web.Response:
    """Re-read config.yaml now (even if unchanged: token files and model lists are re-read)."""
    outcome = await request.app[RELOADER].reload(force=True, reason="management API")
    rt = _runtime(request)
    if outcome.status == "failed":
        message = "config reload failed; the running config is kept:\n" + "\n".join(
            outcome.problems
        )
        body = orjson.loads(
            error_body(message, type="invalid_request_error", code="invalid_config")
        )
        body["problems"] = list(outcome.problems)
        return _answer(rt, body, 400)
    return _answer(rt, {"status": outcome.status, **_outcome_json(outcome)})


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "restart_required": list(outcome.restart_required),
        "models_added": list(outcome.models_added),
        "models_removed": list(outcome.models_removed),
    }


def _masked(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, name) for v in value]
    if is_secret_name(name) and value not in ("", None):
        return MASK
    return value


async def effective_config(request: web.Request) -> web.Response:
    """The running settings (after `${ENV}` and defaults), every secret masked."""
    rt = _runtime(request)
    data = dataclasses.asdict(rt.settings)
    data["api_keys"] = [MASK for _ in rt.settings.api_keys]
    data["clients"] = [{**c, "key": MASK} for c in data["clients"]]
    data["management_secret"] = MASK
    data["providers"] = [_masked(p) for p in data["providers"]]
    last = request.app[RELOADER].last
    data["last_reload"] = (
        None if last is None else {"status": last.status, "problems": list(last.problems)}
    )
    return _answer(rt, data)


async def unknown(request: web.Request) -> web.Response:
    raise ManagementError(404, f"Unknown endpoint: {request.method} {request.path}", "not_found")


def setup(app: web.Application, wrap: Wrap) -> None:
    """Register the management routes, each behind the guard, inside `wrap` (the pipeline)."""
    guard = Guard()

    def guarded(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            await guard.check(request, _runtime(request))
            return await handler(request)

        return wrap(checked)

    router = app.router
    router.add_get(f"{PREFIX}/providers", guarded(providers))
    router.add_get(f"{PREFIX}/cooldowns", guarded(cooldowns))
    router.add_get(f"{PREFIX}/clients", guarded(clients))
    router.add_get(f"{PREFIX}/sessions", guarded(sessions))
    router.add_post(f"{PREFIX}/providers/{{name}}/recover", guarded(recover))
    router.add_post(f"{PREFIX}/auths/{{provider}}/refresh", guarded(refresh))
    router.add_post(f"{PREFIX}/reload", guarded(reload_config))
    router.add_get(f"{PREFIX}/config", guarded(effective_config))
    # anything else under the prefix is guarded too: no 405 tells an unset API's routes apart
    router.add_route("*", f"{PREFIX}/{{tail:.*}}", guarded(unknown))
