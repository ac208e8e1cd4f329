"""Hot reload: watch config.yaml, build the new runtime beside the old one, swap atomically.

Owns: polling the config file's directory entry (an editor's save-by-rename gives it a new
inode, so it is seen like an in-place write), debouncing, comparing the content hash,
validating the new file (an invalid one leaves the old config serving and logs each
`FILE:LINE:COL` problem), building the new runtime while the old one keeps serving, carrying
scheduler state over for credentials that still exist, swapping, and closing the old runtime
once the requests and streams that started on it have finished. `host`, `port`,
`limits.request-body-mb`, `workers` and `state` changes are logged as needing a restart.
`Reloader.reload` is also what SIGHUP and `POST /v0/management/reload` call. Does not own:
parsing (config.py), building (runtime.py), token files named by provider blocks (their
drivers' token store re-reads them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy import config, runtime
from proxy.errors import ConfigError
from proxy.keys import CONVERSATIONS, LIVE, METRICS, REGISTRY, SCHEDULER
from proxy.redact import url_label
from proxy.registry import options_lookup
from proxy.scheduler import Scheduler

log = logging.getLogger("keyrail.reload")
POLL_SECONDS = 0.25
SETTLE_SECONDS = 0.1  # a change must hold still this long before it is read (debounce)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reload did: "reloaded", "unchanged" or "failed"."""

    status: str
    problems: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()


@dataclass(slots=True)
class Reloader:
    """Reloads one app's config from `path` (None: keyrail runs on the built-in default)."""

    app: web.Application
    path: Path | None
    poll_seconds: float = POLL_SECONDS
    last: Outcome | None = None
    _digest: bytes = b""
    #: what only a restart applies (host, port, body limit, workers, state), as the file
    #: last said them
    _file_fixed: tuple[str, int, float, int, str] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def prime(self) -> None:
        """Remember what the running config was loaded from, so the first poll is quiet."""
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except OSError:
            return
        self._digest = hashlib.sha256(data).digest()
        settings = self.app[LIVE].current.settings
        self._file_fixed = _fixed_in_file(data, self.path, self.app) or _fixed_at_start(settings)

    async def reload(self, *, force: bool = False, reason: str = "file changed") -> Outcome:
        """Re-read the file; swap in a new runtime if it is valid and (unless `force`) new."""
        async with self._lock:
            try:
                self.last = await self._reload(force, reason)
            except Exception as exc:  # a bug must not stop the watcher or leave a 500
                log.exception("config reload (%s) failed", reason)
                self.last = _failed(f"{self.path}:0:0: reload failed: {type(exc).__name__}")
            return self.last

    async def _reload(self, force: bool, reason: str) -> Outcome:
        if self.path is None:
            return _failed("keyrail was started without a config file, so there is none to reload")
        source = str(self.path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return _failed(f"{source}:0:0: cannot read: {exc.strerror or exc}")
        digest = hashlib.sha256(data).digest()
        if digest == self._digest and not force:
            return Outcome("unchanged")
        self._digest = digest
        if not data.strip():  # an editor mid-save, or a truncation: never drop every provider
            return _failed(f"{source}:1:1: the file is empty; keeping the running config")
        registry = self.app[REGISTRY]
        try:
            text = data.decode("utf-8")
            new = config.parse(text, options_lookup(registry), source=source)
        except UnicodeDecodeError as exc:
            return _failed(f"{source}:0:0: not UTF-8 ({exc.reason})")
        except ConfigError as exc:
            return _failed(*exc.problems)
        live = self.app[LIVE]
        running = live.current.settings
        restart = _restart_changes(self._file_fixed, new)
        self._file_fixed = _fixed_at_start(new)
        for warning in new.warnings:
            log.warning("%s", warning)
        # What is fixed when the server starts cannot change without a restart: keep saying
        # what applies.
        new = dataclasses.replace(
            new,
            host=running.host,
            port=running.port,
            request_body_limit_mb=running.request_body_limit_mb,
            workers=running.workers,
            state=running.state,
        )
        try:
            fresh = await runtime.build(new, registry)
        except Exception as exc:  # a driver refused its block: keep serving the old config
            log.exception("config reload (%s) failed while building providers", reason)
            return _failed(f"{source}:0:0: building providers failed: {exc}")
        apply_to_scheduler(self.app[SCHEDULER], fresh)
        self.app[CONVERSATIONS].configure(
            fresh.settings.session_ttl_seconds, fresh.settings.session_max_bindings
        )
        self.app[METRICS].set_window(new.metrics_window_seconds)
        old = live.swap(fresh)
        self._retire(old)
        before, after = set(old.catalog.routes), set(fresh.catalog.routes)
        outcome = Outcome(
            "reloaded",
            restart_required=restart,
            models_added=tuple(sorted(after - before)),
            models_removed=tuple(sorted(before - after)),
        )
        log.info(
            "config reloaded from %s (%s): %d provider blocks, %d models (+%d -%d)",
            source, reason, len(fresh.drivers), len(after),
            len(outcome.models_added), len(outcome.models_removed),
        )  # fmt: skip
        for change in restart:
            log.warning("%s", change)
        return outcome

    def _retire(self, old: runtime.Runtime) -> None:
        task = asyncio.create_task(old.retire())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def trigger(self, reason: str) -> None:
        """Reload in the background (a signal handler cannot await)."""
        task = asyncio.create_task(self._background(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, reason: str) -> None:
        await self.reload(force=True, reason=reason)

    async def watch(self) -> None:
        """Poll the file's directory entry; reload once a change has settled."""
        assert self.path is not None
        seen = _signature(self.path)
        while True:
            await asyncio.sleep(self.poll_seconds)
            now = _signature(self.path)
            if now == seen:
                continue
            while True:  # debounce: an editor may write in several steps
                await asyncio.sleep(SETTLE_SECONDS)
                again = _signature(self.path)
                if again == now:
                    break
                now = again
            seen = now
            if now is not None:  # a missing file is a save in progress; wait for it
                await self.reload()

    async def aclose(self) -> None:
        """Wait for old runtimes to close (their streams end first) and background reloads."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def apply_to_scheduler(scheduler: Scheduler, rt: runtime.Runtime) -> None:
    """New settings for the scheduler; state kept for credentials that still exist."""
    settings = rt.settings
    scheduler.configure(
        strategy=settings.routing_strategy,
        transient_cooldown=settings.transient_error_cooldown_seconds,
        max_cooldown=settings.max_cooldown_seconds,
        disable_cooling=settings.disable_cooling,
    )
    scheduler.register(
        (provider, cred.id) for provider, creds in rt.credentials.items() for cred in creds
    )


def _failed(*problems: str) -> Outcome:
    for line in problems:
        log.error("config reload failed, keeping the running config: %s", line)
    return Outcome("failed", problems=tuple(problems))


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """The directory entry's identity and shape: a rename, a write or a touch changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _fixed_at_start(settings: config.Settings) -> tuple[str, int, float, int, str]:
    """What the server is built with: where it listens, the request body limit (aiohttp
    sets it on the application), how many workers and where shared state lives."""
    return (settings.host, settings.port, settings.request_body_limit_mb, settings.workers,
            settings.state)  # fmt: skip


def _restart_changes(
    previous: tuple[str, int, float, int, str] | None, new: config.Settings
) -> tuple[str, ...]:
    if previous is None:
        return ()
    changes = []
    if new.host != previous[0]:
        changes.append(f"'host' changed to {new.host!r}: restart keyrail to listen there")
    if new.port != previous[1]:
        changes.append(f"'port' changed to {new.port}: restart keyrail to listen there")
    if new.request_body_limit_mb != previous[2]:
        changes.append(
            f"'limits.request-body-mb' changed to {new.request_body_limit_mb:g}: restart "
            "keyrail to apply it"
        )
    if new.workers != previous[3]:
        changes.append(f"'workers' changed to {new.workers}: restart keyrail to apply it")
    if new.state != previous[4]:
        changes.append(f"'state' changed to {url_label(new.state)!r}: restart keyrail to apply it")
    return tuple(changes)


def _fixed_in_file(
    data: bytes, path: Path, app: web.Application
) -> tuple[str, int, float, int, str] | None:
    try:
        settings = config.parse(
            data.decode("utf-8"), options_lookup(app[REGISTRY]), source=str(path)
        )
    except (ConfigError, UnicodeDecodeError):
        return None
    return _fixed_at_start(settings)


RELOADER = web.AppKey("reloader", Reloader)


def setup(app: web.Application, path: Path | None) -> None:
    """Register the reloader; when there is a file, watch it while the app runs."""
    reloader = Reloader(app, path)
    app[RELOADER] = reloader

    async def watching(app: web.Application) -> AsyncIterator[None]:
        reloader.prime()
        watcher = asyncio.create_task(reloader.watch()) if path is not None else None
        yield
        if watcher is not None:
            watcher.cancel()
        await reloader.aclose()

    app.cleanup_ctx.append(watching)
