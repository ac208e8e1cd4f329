"""Runtime: everything built from one config — drivers, their sessions, the catalog.

Owns: turning `Settings` into live parts (one driver instance and one pooled `ClientSession`
per provider block, model discovery for blocks that list none, the catalog, the client keys),
holding the current `Runtime` in a `Live` box that a reload can swap atomically, counting the
requests that run on a runtime (`enter`/`leave`, called by the pipeline), and closing a
runtime's sessions once the last request using it has finished. Does not own: what is done
with those parts per request (http/handlers.py, failover.py), or watching files and deciding to
swap (reload.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy import __version__
from proxy import catalog as catalog_mod
from proxy.auth import ClientKeys
from proxy.catalog import Catalog
from proxy.config import ProviderBlock, Settings
from proxy.driver import Credential, Driver
from proxy.failover import LoopSettings
from proxy.redact import REDACTOR, secrets_of
from proxy.registry import Registry

log = logging.getLogger("keyrail.runtime")
USER_AGENT = f"keyrail/{__version__}"
DISCOVERY_TIMEOUT = 10.0


@dataclass(slots=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    drivers: dict[str, Driver]  # by provider (block) name
    credentials: dict[str, Sequence[Credential]]
    loop_settings: LoopSettings
    client_keys: ClientKeys = field(default_factory=lambda: ClientKeys(()))
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    #: provider → why it serves no model (model discovery failed, ...); `/health` says `down`
    idle: dict[str, str] = field(default_factory=dict)
    #: requests that started on this runtime and have not finished (see `enter`)
    users: int = 0
    #: set when the last user leaves, once the runtime is retiring (not per request)
    _unused: asyncio.Event | None = None

    @property
    def driver_names(self) -> dict[str, str]:
        """provider → driver key, for metrics."""
        return {name: d.block.driver for name, d in self.drivers.items()}

    def enter(self) -> None:
        self.users += 1

    def leave(self) -> None:
        self.users -= 1
        if self.users == 0 and self._unused is not None:
            self._unused.set()

    async def retire(self) -> None:
        """Close once every request that started on this runtime has finished (after a swap)."""
        if self.users:
            self._unused = asyncio.Event()
            await self._unused.wait()
        await self.aclose()
        # `keyrail serve` froze what start-up built, the first runtime included (__main__'s
        # _settle_gc): give it back to the collector, or its reference cycles stay forever.
        gc.unfreeze()

    async def aclose(self) -> None:
        await _close(self.drivers, self.sessions)


class Live:
    """The box handlers read the current runtime from; a reload replaces `current`.

    Created with the app, filled when the app starts (building a runtime needs the loop).
    """

    __slots__ = ("_current",)

    def __init__(self, current: Runtime | None = None) -> None:
        self._current = current

    @property
    def current(self) -> Runtime:
        if self._current is None:
            raise RuntimeError("keyrail's runtime is not started")
        return self._current

    @current.setter
    def current(self, runtime: Runtime) -> None:
        self._current = runtime

    def swap(self, runtime: Runtime) -> Runtime:
        """Make `runtime` current; return the one it replaces. Atomic: no await in between."""
        old, self._current = self.current, runtime
        return old


#: The runtime a request started on; it keeps that one to its end, even across a reload.
RUNTIME = web.RequestKey("runtime", Runtime)


async def _close(drivers: Mapping[str, Driver], sessions: Sequence[aiohttp.ClientSession]) -> None:
    for driver in drivers.values():
        try:
            await driver.aclose()
        except Exception:
            log.exception("driver %s failed to close", driver.block.name)
    for session in sessions:
        await session.close()


def _session(settings: Settings) -> aiohttp.ClientSession:
    # total=None: a long reasoning stream must live as long as bytes keep coming.
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.connect_timeout,
        sock_read=settings.idle_timeout,
    )
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=True,
        trust_env=False,
        # No cookies: one session serves every client and credential of a block, and an
        # upstream's Set-Cookie must not follow one client's requests into another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        json_serialize=None,  # type: ignore[arg-type]
        # Named, not aiohttp's default; a driver may send its own. (A default header is also
        # cheaper per request than aiohttp's `skip_auto_headers`.)
        headers={"User-Agent": USER_AGENT},
    )


def _bytes(mib: float) -> int:
    return int(mib * 1024 * 1024)


def _with_global_proxy(block: ProviderBlock, settings: Settings) -> ProviderBlock:
    if block.proxy_url or not settings.proxy_url:
        return block
    return dataclasses.replace(block, proxy_url=settings.proxy_url)


async def build(settings: Settings, registry: Registry) -> Runtime:
    """Instantiate drivers and sessions, discover models, build the catalog."""
    drivers: dict[str, Driver] = {}
    credentials: dict[str, Sequence[Credential]] = {}
    sessions: list[aiohttp.ClientSession] = []
    try:
        for block in settings.providers:
            if block.disabled:
                continue
            block = _with_global_proxy(block, settings)
            cls = registry.get(block.driver)
            session = _session(settings)
            sessions.append(session)
            drivers[block.name] = cls(block, session)
            credentials[block.name] = list(cls.credentials(block))
    except BaseException:  # a half-built runtime must not leak its sessions (reload retries)
        await _close(drivers, sessions)
        raise
    # this config's secrets are masked in every log line and error body from now on
    REDACTOR.add([*secrets_of(settings), *(c.secret for cs in credentials.values() for c in cs)])
    failures: dict[str, str] = {}
    discovered = await _discover(drivers, credentials, failures)
    catalog = catalog_mod.build(settings, credentials, discovered)
    served = {provider for route in catalog.routes.values() for provider in route.providers}
    idle: dict[str, str] = {}  # the blocks that serve no model, and why
    for name in drivers:
        if name in served:
            continue
        if name in failures:
            idle[name] = failures[name]
        elif name in discovered and not discovered[name]:
            idle[name] = "model discovery found no models"
        else:
            idle[name] = "every model it lists is excluded"
    for model, providers in sorted(catalog.collisions.items()):
        log.info(
            "model %s is served by several providers (one pool): %s", model, ", ".join(providers)
        )
    return Runtime(
        settings=settings,
        catalog=catalog,
        drivers=drivers,
        credentials=credentials,
        loop_settings=LoopSettings(
            request_retry=settings.request_retry,
            max_retry_interval=settings.max_retry_interval,
            max_retry_credentials=settings.max_retry_credentials,
            first_byte_timeout=settings.first_byte_timeout,
            body_limit=_bytes(settings.upstream_body_limit_mb),
            sse_event_limit=_bytes(settings.sse_event_limit_mb),
            sse_line_limit=_bytes(settings.sse_line_limit_mb),
        ),
        client_keys=ClientKeys(settings.api_keys, settings.clients),
        sessions=sessions,
        idle=idle,
    )


async def _discover(
    drivers: Mapping[str, Driver],
    credentials: Mapping[str, Sequence[Credential]],
    failures: dict[str, str],
) -> dict[str, Sequence[str]]:
    """Ask each block that lists no models for its upstream's models, all at once; why each
    one that failed did goes into `failures`."""

    async def one(name: str, driver: Driver) -> tuple[str, Sequence[str]]:
        creds = credentials.get(name) or []
        if not creds:
            return name, []
        try:
            async with asyncio.timeout(DISCOVERY_TIMEOUT):
                models = await driver.list_models(creds[0])
        except Exception as exc:  # discovery must never stop start-up
            why = type(exc).__name__ if not str(exc) else str(exc)
            failures[name] = REDACTOR.redact(f"model discovery failed ({why})")
            log.warning("provider %s: model discovery failed (%s); it serves no models", name, why)
            return name, []
        log.info("provider %s: discovered %d models", name, len(models))
        return name, list(models)

    jobs = [one(name, d) for name, d in drivers.items() if not d.block.models]
    return dict(await asyncio.gather(*jobs))
