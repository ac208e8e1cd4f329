"""OAuth token store: the current token of every OAuth credential, refreshed and persisted safely.

Owns: reading a token file in whichever spelling it uses (`accessToken` or `access_token`, ...),
holding the current token per credential, refreshing it before it expires (`lead` seconds) and
on demand after the upstream rejected it, single-flight per credential however many requests
wait, writing the result back in the spelling found (temp file, fsync, rename, directory fsync,
mode 0600), refreshing under an `flock` on a sidecar `.NAME.lock` so that two keyrail processes
never refresh one file at once, noticing a file rewritten by another program (an IDE) on use,
repairing group- or world-readable token files, removing temp files a crash left behind, and
keeping the old token when a refresh fails while that token is still valid (else:
`CredentialRejected` when the login was refused, `UpstreamUnavailable` when the token endpoint
is down).
Does not own: how a provider refreshes (the driver passes a `Refresher` coroutine that turns a
`Token` into new fields), nor what the fields mean beyond access/refresh token and expiry.

One store serves the process (`shared()`): token files are process-wide resources, so two
blocks or two config generations naming the same file must share one refresh, and a config
reload must not forget a rotated refresh token. Slots are keyed by the file's absolute path,
or by a driver-chosen id for tokens given inline in the config (kept in memory only).
Drivers hold the store, never a token: they ask for the current one on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.errors import CredentialRejected, UpstreamError, UpstreamUnavailable
from proxy.redact import REDACTOR

log = logging.getLogger("keyrail.tokens")

#: Refresh this long before expiry (the OAuth references use 5-20 minutes).
DEFAULT_LEAD = 600.0
#: After a failed refresh while the old token is still valid, wait this long before retrying.
RETRY_AFTER_FAILURE = 30.0
#: `expires_in` assumed when a refresh answer gives none.
DEFAULT_EXPIRES_IN = 3600
#: Temp files older than this, left by a crash between create and rename, are removed.
ORPHAN_AGE = 60.0

_CORE = ("access_token", "refresh_token", "expires_at")


def camel(name: str) -> str:
    """`access_token` → `accessToken`."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass(frozen=True, slots=True)
class Token:
    """One token generation. `document` is the whole token file (or inline fields) as found."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float | None  # epoch seconds; None: unknown
    document: Mapping[str, Any] = field(repr=False)
    generation: int = 0

    def get(self, name: str, default: Any = None) -> Any:
        """A field by its snake_case name, in either spelling."""
        return field_of(self.document, name, default)

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at is not None and self.expires_at - now <= seconds


def field_of(document: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = document.get(name)
    if value is None or value == "":
        value = document.get(camel(name))
    return default if value is None or value == "" else value


def parse_expiry(value: Any) -> float | None:
    """ISO-8601 (`Z`, offsets, up to 9 fraction digits) or epoch seconds/ms → epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e12 else float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("z", "Z")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # nanoseconds → microseconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_expiry(epoch: float) -> str:
    """The form the Kiro IDE writes: `2025-12-31T02:32:45.144Z`."""
    when = datetime.fromtimestamp(epoch, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def read_document(path: Path) -> dict[str, Any]:
    """A token file's JSON object. Raises ValueError/OSError when it is not one."""
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError("a token file must hold a JSON object")
    return data


def write_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Replace `path` with `document` so that a crash leaves the old or the new file, whole.

    Temp file in the same directory (mode 0600), fsync, rename over, fsync the directory.
    """
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    directory = path.parent
    # The writer's pid in the name: the next start can tell a dead writer's leftover at once.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_orphans(path: Path, now: float) -> None:
    """Delete temp files `write_atomic` left behind for `path` when a process died mid-write:
    at once when the process named in it is gone, else once older than ORPHAN_AGE (a live
    process, or a pid reused since, may be mid-write)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if not _writer_alive(tmp.name[len(path.name) + 2 :]) or (
                now - tmp.stat().st_mtime > ORPHAN_AGE
            ):
                tmp.unlink()
                log.info("removed a temp file left by an interrupted token write: %s", tmp)


def _writer_alive(suffix: str) -> bool:
    """Is the process that named a temp file `<pid>-XXXX.tmp` still running? (True when the
    name carries no pid: only its age can tell.)"""
    pid, dash, _ = suffix.partition("-")
    if not dash or not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True  # this process: a write of ours may be under way
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


#: Turns the current token into new fields (snake_case): `access_token` (required),
#: `refresh_token`, `expires_in` or `expires_at`, and any other field to store (`profile_arn`).
#: Raises an `UpstreamError` when the token endpoint says no.
Refresher = Callable[[Token], Awaitable[Mapping[str, Any]]]


class TokenSlot:
    """The current token of one credential, and its single-flight refresh."""

    def __init__(
        self,
        store: TokenStore,
        *,
        label: str,
        provider: str,
        path: Path | None,
        inline: Mapping[str, Any],
    ) -> None:
        self._store = store
        self.label = label  # the credential id: for logs and errors, never secret
        self.provider = provider
        self.path = path
        self.inline = dict(inline)
        self._token: Token | None = None
        self._file_id: tuple[int, int, int] | None = None
        self._generation = 0
        self._rejected = -1
        self._retry_at = 0.0
        self._inflight: asyncio.Future[Token] | None = None
        if path is None:
            self._token = self._make(self.inline)

    # -- what drivers call ------------------------------------------------------------------

    async def get(self, refresher: Refresher) -> Token:
        """A token to use now: reloaded if the file changed, refreshed if it expires soon."""
        token = self._sync()
        now = self._store.clock()
        if not (token.refresh_token and self._due(token, now) and now >= self._retry_at):
            if token.expires_within(0, now) and not token.refresh_token:
                raise self._rejected_error("token expired and there is no refresh token")
            return token
        try:
            return await self._single_flight(refresher)
        except UpstreamError as exc:
            if token.expires_within(0, self._store.clock()):
                why = f"token expired and refresh failed: {exc.message}"
                if isinstance(exc, CredentialRejected):
                    raise self._rejected_error(why) from exc
                # The token endpoint is down or busy: a transient failure, not a bad login.
                raise UpstreamUnavailable(
                    f"credential {self.label}: {why}", status=503, provider=self.provider
                ) from exc
            self._retry_at = self._store.clock() + RETRY_AFTER_FAILURE
            log.warning("%s: token refresh failed, the current token is still valid", self.label)
            return self._token or token

    def reject(self, token: Token) -> None:
        """The upstream refused this token (401, invalid-token 403): `renew` replaces it."""
        self._rejected = max(self._rejected, token.generation)

    async def renew(self, refresher: Refresher) -> Token | None:
        """A token newer than the rejected one; None when no token was rejected."""
        if self._rejected < 0:
            return None
        token = self._sync()
        if token.generation > self._rejected:
            return token  # another request (or the IDE) already replaced it
        if not token.refresh_token:
            raise self._rejected_error("token rejected and there is no refresh token")
        return await self._single_flight(refresher)

    # -- internals --------------------------------------------------------------------------

    def _due(self, token: Token, now: float) -> bool:
        return token.expires_at is None or token.expires_at - now <= self._store.lead

    def _needs_refresh(self, token: Token) -> bool:
        return token.generation <= self._rejected or self._due(token, self._store.clock())

    def _rejected_error(self, why: str) -> CredentialRejected:
        return CredentialRejected(
            f"credential {self.label}: {why}", status=401, provider=self.provider
        )

    def _make(self, document: Mapping[str, Any]) -> Token:
        self._generation += 1
        token = Token(
            access_token=str(field_of(document, "access_token", "")),
            refresh_token=str(field_of(document, "refresh_token", "")),
            expires_at=parse_expiry(field_of(document, "expires_at")),
            document=dict(document),
            generation=self._generation,
        )
        # masked in every log line and error body, like configured keys (see proxy/redact.py)
        REDACTOR.add((token.access_token, token.refresh_token), owner=f"token {self.label}")
        return token

    def _sync(self, *, reread: bool = False) -> Token:
        """The token, reloaded from the file when the file changed since we last saw it."""
        if self.path is None:
            assert self._token is not None
            return self._token
        try:
            st = self.path.stat()
        except OSError as exc:
            if self._token is not None:
                return self._token
            log.warning("%s: cannot read token file %s (%s)", self.label, self.path, exc.strerror)
            raise self._rejected_error(f"token file unreadable ({exc.strerror})") from None
        file_id = (st.st_ino, st.st_mtime_ns, st.st_size)
        if file_id == self._file_id and self._token is not None and not reread:
            return self._token
        first = self._file_id is None
        try:
            document = read_document(self.path)
        except (OSError, ValueError) as exc:
            # An editor may be half-way through a non-atomic write: keep what we have.
            if self._token is not None:
                return self._token
            log.warning("%s: token file %s is not a JSON object", self.label, self.path)
            raise self._rejected_error(f"token file unreadable ({type(exc).__name__})") from None
        if first:
            self._first_look(st)
        self._file_id = file_id
        old = self._token
        if old is None or _core(old.document) != _core(document):
            self._token = self._make(document)
            if old is not None:
                log.info("%s: token file changed on disk; using the new token", self.label)
        else:
            self._token = Token(
                old.access_token, old.refresh_token, old.expires_at, document, old.generation
            )
        return self._token

    def _first_look(self, st: os.stat_result) -> None:
        assert self.path is not None
        if st.st_mode & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
                log.warning("%s: token file was readable by others; made it 0600", self.label)
        remove_orphans(self.path, time.time())

    async def _single_flight(self, refresher: Refresher) -> Token:
        loop = asyncio.get_running_loop()
        flight = self._inflight
        if flight is None or flight.get_loop() is not loop:
            flight = loop.create_task(self._refresh(refresher))
            flight.add_done_callback(self._landed)
            self._inflight = flight
        # Shielded: a client that leaves must not cut a refresh that is writing a token file.
        return await asyncio.shield(flight)

    def _landed(self, flight: asyncio.Future[Token]) -> None:
        if self._inflight is flight:
            self._inflight = None
        if not flight.cancelled():
            flight.exception()  # retrieved here, so no waiter leaving early leaves it unseen

    async def _refresh(self, refresher: Refresher) -> Token:
        if self.path is None:
            return await self._refresh_locked(refresher)
        # Another keyrail process may share the file: one refresh at a time, across processes.
        async with _FileLock(self.path.with_name(f".{self.path.name}.lock")):
            return await self._refresh_locked(refresher)

    async def _refresh_locked(self, refresher: Refresher) -> Token:
        token = self._sync()  # adopt a token another program wrote meanwhile
        if not self._needs_refresh(token):
            return token
        try:
            updates = await refresher(token)
        except UpstreamError:
            # The refresh token may have been rotated by the IDE since we read it: reload once.
            fresh = self._sync(reread=True)
            if fresh.refresh_token == token.refresh_token:
                raise
            if not self._needs_refresh(fresh):
                return fresh
            token, updates = fresh, await refresher(fresh)
        new = self._make(self._merged(token.document, updates))
        if self.path is not None:
            try:
                await asyncio.to_thread(write_atomic, self.path, new.document)
                st = self.path.stat()
                self._file_id = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError as exc:
                log.error("%s: could not save the refreshed token (%s)", self.label, exc.strerror)
        self._token = new
        self._retry_at = 0.0
        log.info("%s: token refreshed", self.label)
        return new

    def _merged(self, document: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
        """The document with `updates` applied, in the spelling the document uses."""
        camel_case = any(camel(k) in document for k in _CORE)
        out = dict(document)
        values = {k: v for k, v in updates.items() if v not in (None, "")}
        expires_in = values.pop("expires_in", None)
        if "expires_at" not in values:
            seconds = expires_in if isinstance(expires_in, int | float) else 0
            seconds = seconds if seconds > 0 else DEFAULT_EXPIRES_IN
            values["expires_at"] = format_expiry(self._store.clock() + seconds)
        for name, value in values.items():
            key, other = (camel(name), name) if camel_case else (name, camel(name))
            if other != key:
                out.pop(other, None)
            out[key] = value
        return out


class _FileLock:
    """An exclusive `flock` on a sidecar file, taken in a thread so the loop never blocks."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    async def __aenter__(self) -> None:
        fd = self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        taken = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(taken)
        except BaseException:
            # Cancelled while the thread waits: close the file (dropping the lock) only once
            # the thread is done with it, so the descriptor cannot be reused under it.
            taken.add_done_callback(lambda _: os.close(fd))
            raise

    async def __aexit__(self, *exc: object) -> None:
        os.close(self._fd)  # releases the lock


def _core(document: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(field_of(document, k) for k in _CORE)


class TokenStore:
    """Every token slot of the process, by key (a file's absolute path, or an inline id)."""

    def __init__(
        self, *, lead: float = DEFAULT_LEAD, clock: Callable[[], float] = time.time
    ) -> None:
        self.lead = lead
        self.clock = clock
        self._slots: dict[str, TokenSlot] = {}

    def slot(
        self,
        *,
        label: str,
        provider: str,
        path: Path | None = None,
        inline: Mapping[str, Any] | None = None,
    ) -> TokenSlot:
        """The slot for a token file (or, with `path=None`, for inline fields keyed by label).

        Inline fields use the snake_case names. A slot whose inline fields changed (a config
        reload with new tokens) starts again from them.
        """
        key = f"file:{path.expanduser().absolute()}" if path is not None else f"inline:{label}"
        current = self._slots.get(key)
        inline = dict(inline or {})
        if current is None or (path is None and current.inline != inline):
            current = TokenSlot(
                self,
                label=label,
                provider=provider,
                path=path.expanduser().absolute() if path is not None else None,
                inline=inline,
            )
            self._slots[key] = current
        return current


_SHARED = TokenStore()


def shared() -> TokenStore:
    """The process's token store."""
    return _SHARED
