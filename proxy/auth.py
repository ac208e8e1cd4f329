"""Client authentication: who may use the proxy.

Owns: reading the client key from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key`,
comparing it in constant time against every configured key (once per key: one that passed is
remembered), and the middleware that guards `/v1/*`. With no `api-keys`, everyone on the
(loopback-only) address is let in. Does not own: management keys (management.py), or keys
sent upstream (drivers).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from proxy.errors import AuthError

#: The metrics paths: open, unless `metrics.require-api-key: true`.
METRICS_PATHS = frozenset({"/metrics", "/v1/metrics/providers"})
#: Paths anyone may read: probes and the runbook's unauthenticated metrics curl.
OPEN_PATHS = frozenset({"/health", "/healthz"}) | METRICS_PATHS


class ClientKeys:
    """The configured client keys, held as SHA-256 digests and compared in constant time.

    A key that passed is remembered, so its next requests skip the hash: looking a string up
    in a set hashes all of it with the process's secret SipHash key and compares contents only
    on a hash match, so a wrong key's time says nothing about how close it came. The set holds
    at most the configured keys, and goes with this object when the config is reloaded.
    """

    __slots__ = ("_accepted", "_digests", "required")

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)
        self._accepted: set[str] = set()
        #: whether any key is configured (else everyone is let in)
        self.required = bool(self._digests)

    def allows(self, presented: str | None) -> bool:
        """True when `presented` is one of the keys. Time does not depend on which one."""
        if not self._digests:
            return True
        if not presented:
            return False
        if presented in self._accepted:
            return True
        digest = hashlib.sha256(presented.encode()).digest()
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(digest, known)
        if ok:
            self._accepted.add(presented)
        return ok


def presented_key(request: web.Request) -> str | None:
    """The client's key, from the first header that carries one."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth.strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")


def middleware(
    keys_of: Callable[[web.Request], ClientKeys],
    open_paths: frozenset[str] = OPEN_PATHS,
    metrics_need_key: Callable[[web.Request], bool] = lambda _request: False,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Guard every path except the open ones; `keys_of` gives the live keys (reloadable), and
    `metrics_need_key` whether the metrics paths are guarded too (reloadable)."""

    @web.middleware
    async def check_client_key(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path in open_paths and not (path in METRICS_PATHS and metrics_need_key(request)):
            return await handler(request)
        if path.startswith("/v0/management"):
            return await handler(request)
        keys = keys_of(request)
        if keys.required:
            key = presented_key(request)
            if not keys.allows(key):
                message = (
                    "Missing API key: send it as 'Authorization: Bearer <key>'."
                    if not key
                    else "Incorrect API key provided."
                )
                raise AuthError(message)
        return await handler(request)

    return check_client_key
