"""Credential quotas: how much of its allowance each credential has used, read from drivers.

Owns: `Quota` (used, limit, when it resets), the latest reading per credential (`Quotas`,
which the metrics show), and the watcher that asks each driver that offers one
(`Driver.quota`) at most every `Driver.quota_interval` seconds per credential, and cools a
credential whose quota is spent until its reset (and lifts that when a later reading says
otherwise). Does not own: how a driver reads its upstream's quota (the driver), what a
cooldown does (scheduler.py), the metrics' formats (metrics.py).

The watcher runs beside the requests, never in their path: a quota read is one small call per
credential every few minutes, and a failed read only keeps the previous reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from proxy.driver import Credential, Driver
    from proxy.runtime import Runtime
    from proxy.scheduler import Scheduler

log = logging.getLogger("keyrail.quota")
#: How often the watcher looks for readings that are due (each driver sets how often is due).
TICK_SECONDS = 15.0
READ_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Quota:
    """A credential's usage against its allowance. `resets_at` is wall-clock epoch seconds."""

    used: float
    limit: float
    resets_at: float | None = None
    unit: str = ""

    @property
    def spent(self) -> bool:
        return self.limit > 0 and self.used >= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "used": _plain(self.used),
            "limit": _plain(self.limit),
            "remaining": _plain(max(0.0, self.limit - self.used)),
            "resets_at": _iso(self.resets_at),
            "resets_at_unix": None if self.resets_at is None else int(self.resets_at),
            "unit": self.unit,
            "spent": self.spent,
        }


@dataclass(frozen=True, slots=True)
class Reading:
    provider: str
    quota: Quota | None  # None: the last read failed and none succeeded before
    read_at: float  # wall clock
    error: str = ""


class Quotas:
    """The latest reading of every credential whose driver reports quotas."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._readings: dict[str, Reading] = {}
        self._asked: dict[str, float] = {}  # credential id → when it was last asked (monotonic)
        #: set whenever a reading is stored (tests and pages wait on it)
        self.changed = asyncio.Event()

    def get(self, credential_id: str) -> Reading | None:
        return self._readings.get(credential_id)

    def readings(self) -> list[tuple[str, Reading]]:
        return list(self._readings.items())

    def by_provider(self) -> dict[str, dict[str, dict[str, Any]]]:
        """provider → credential id → the quota object metrics show."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for cid, reading in self._readings.items():
            entry: dict[str, Any] = reading.quota.as_json() if reading.quota else {}
            entry["read_at"] = _iso(reading.read_at)
            if reading.error:
                entry["error"] = reading.error
            out.setdefault(reading.provider, {})[cid] = entry
        return out

    def store(self, provider: str, credential_id: str, quota: Quota | None, error: str) -> None:
        previous = self._readings.get(credential_id)
        if quota is None and previous is not None and previous.quota is not None:
            quota = previous.quota  # a failed read keeps what was known
        self._readings[credential_id] = Reading(provider, quota, self.clock(), error)
        self.changed.set()

    def due(self, credential_id: str, interval: float, now: float) -> bool:
        asked = self._asked.get(credential_id)
        return asked is None or now - asked >= interval

    def asked(self, credential_id: str, now: float) -> None:
        self._asked[credential_id] = now

    def keep_only(self, credential_ids: set[str]) -> None:
        """Forget credentials that are no longer configured (after a reload)."""
        for gone in set(self._readings) - credential_ids:
            del self._readings[gone]
        for gone in set(self._asked) - credential_ids:
            del self._asked[gone]


def offers_quota(driver: Driver) -> bool:
    """Whether the driver's class implements `quota` (the base class's answers None)."""
    from proxy.driver import Driver

    return type(driver).quota is not Driver.quota


async def read_due(
    runtime: Runtime, quotas: Quotas, scheduler: Scheduler, *, now: float | None = None
) -> int:
    """One round: ask every credential whose reading is due; returns how many were asked."""
    monotonic = time.monotonic() if now is None else now
    jobs = []
    for name, driver in runtime.drivers.items():
        if not offers_quota(driver):
            continue
        for credential in runtime.credentials.get(name, ()):
            if quotas.due(credential.id, driver.quota_interval, monotonic):
                quotas.asked(credential.id, monotonic)
                jobs.append(_read_one(driver, credential, quotas, scheduler))
    await asyncio.gather(*jobs)
    return len(jobs)


async def _read_one(
    driver: Driver, credential: Credential, quotas: Quotas, scheduler: Scheduler
) -> None:
    error = ""
    quota: Quota | None = None
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            quota = await driver.quota(credential)
    except Exception as exc:  # a quota read never takes anything down
        error = (str(exc) or type(exc).__name__)[:200]
        previous = quotas.get(credential.id)
        if previous is None or previous.error != error:  # once per new failure, not per round
            log.warning("provider %s: quota read failed: %s", driver.block.name, error)
    if quota is None and not error:
        return  # this credential has no quota to report
    quotas.store(driver.block.name, credential.id, quota, error)
    if quota is not None:
        apply(scheduler, credential.id, quota, quotas.clock())


def apply(scheduler: Scheduler, credential_id: str, quota: Quota, wall_now: float) -> None:
    """Cool a spent credential until its reset (an hour when the reset is unknown); lift
    that cooldown once a reading says the quota is not spent."""
    if quota.spent:
        until = quota.resets_at if quota.resets_at and quota.resets_at > wall_now else None
        seconds = until - wall_now if until is not None else 3600.0
        scheduler.spent(credential_id, seconds, f"quota spent: {_plain(quota.used)} of "
                        f"{_plain(quota.limit)} {quota.unit}".rstrip())  # fmt: skip
    else:
        scheduler.spent(credential_id, 0.0)


def reapply(scheduler: Scheduler, quotas: Quotas) -> None:
    """After a reload (which lifts disables): spent credentials cool again until their reset."""
    now = quotas.clock()
    for cid, reading in quotas.readings():
        if reading.quota is not None and reading.quota.spent:
            apply(scheduler, cid, reading.quota, now)


async def watch(get_runtime: Callable[[], Runtime], quotas: Quotas, scheduler: Scheduler) -> None:
    """Read quotas as they fall due, for as long as the app runs."""
    seen: Runtime | None = None
    while True:
        runtime = get_runtime()
        if runtime is not seen:  # started, or reloaded: drop the gone, re-cool the spent
            seen = runtime
            quotas.keep_only({c.id for cs in runtime.credentials.values() for c in cs})
            reapply(scheduler, quotas)
        await read_due(runtime, quotas, scheduler)
        await asyncio.sleep(TICK_SECONDS)


def setup(app: web.Application, quotas: Quotas) -> None:
    """Run the watcher while the app runs (after the runtime is built)."""
    from proxy.keys import LIVE, SCHEDULER  # keys.py imports this module

    async def watching(app: web.Application) -> AsyncIterator[None]:
        live = app[LIVE]
        task = asyncio.create_task(watch(lambda: live.current, quotas, app[SCHEDULER]))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watching)


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 4)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
