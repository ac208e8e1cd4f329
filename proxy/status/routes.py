"""The status page's routes.

Owns two routes: `GET /status`, one self-contained HTML page (inline style and script, no
external asset, no build step, a few tens of KB) that polls `GET /v1/status` every two
seconds and draws it; and `GET /v1/status`, that data (snapshot.py). The page itself holds no
data, so it is open; `/v1/status` is guarded like the metrics endpoints
(`metrics.require-api-key`), and the page asks for a client key when it gets a 401, keeping it
in the tab's sessionStorage only. Management actions on the page call the existing
`/v0/management` API with the management secret the operator types in.
Does not own: the figures (metrics.py), credential states (scheduler.py), the recent-error
ring (recent.py, filled by the pipeline), or auth (auth.py, http/management.py).
"""

from __future__ import annotations

import ipaddress
from importlib import resources

import orjson
from aiohttp import web

from proxy import metrics
from proxy.http.pipeline import Wrap
from proxy.keys import LIVE, QUOTAS, RECENT_ERRORS, SCHEDULER
from proxy.status import snapshot

PAGE_PATH = "/status"
DATA_PATH = "/v1/status"
#: The page may talk to keyrail itself and nothing else; it loads nothing from anywhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def setup(app: web.Application, wrap: Wrap) -> None:
    """Register `GET /status` (the page) and `GET /v1/status` (its data)."""
    page = resources.files(__package__).joinpath("page.html").read_bytes()

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(
            body=page, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
        )

    async def status_data(request: web.Request) -> web.Response:
        current = app[LIVE].current
        settings = current.settings
        figures, scope = await metrics.counted(app, request)  # every process sharing state
        data = snapshot.build(
            metrics=figures,
            views=app[SCHEDULER].credential_views(),
            drivers={name: driver.block.driver for name, driver in current.drivers.items()},
            quotas=app[QUOTAS].by_provider(),
            recent_errors=app[RECENT_ERRORS].newest_first(),
            management=bool(settings.management_secret)
            and (settings.management_allow_remote or _is_loopback(request.remote)),
        )
        data["scope"] = scope
        return web.Response(
            body=orjson.dumps(data),
            content_type="application/json",
            headers={"Cache-Control": "no-store", metrics.SCOPE_HEADER: scope},
        )

    app.router.add_get(PAGE_PATH, wrap(status_page))
    app.router.add_get(DATA_PATH, wrap(status_data))


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%")[0]).is_loopback
    except ValueError:
        return False
