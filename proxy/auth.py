"""Client authentication: who may use the proxy.

Owns: reading the client key from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key`,
comparing it in constant time against every configured key (once per key: one that passed is
remembered), and which paths need one (`check`, called by the pipeline). With no `api-keys`,
everyone on the (loopback-only) address is let in. Does not own: management keys
(management.py), or keys sent upstream (drivers).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from aiohttp import web

from proxy.errors import AuthError

#: The metrics paths: open, unless `metrics.require-api-key: true`.
METRICS_PATHS = frozenset({"/metrics", "/v1/metrics/providers", "/v1/status"})
#: Paths anyone may read: probes, the runbook's unauthenticated metrics curl, and the status
#: page itself (it holds no data: it asks `/v1/status` for it, with a key when one is needed).
OPEN_PATHS = frozenset({"/health", "/healthz", "/status"}) | METRICS_PATHS


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
        # Header bytes that are not UTF-8 arrive surrogate-escaped: still a (wrong) key.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
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


def check(request: web.Request, keys: ClientKeys, metrics_need_key: bool) -> None:
    """Raise AuthError unless the request may pass: every path needs a key, except the open
    ones (the metrics too when `metrics_need_key`) and management's (it has its own guard)."""
    if not keys.required:
        return
    path = request.path
    if path in OPEN_PATHS and not (metrics_need_key and path in METRICS_PATHS):
        return
    if path.startswith("/v0/management"):
        return
    key = presented_key(request)
    if not keys.allows(key):
        message = (
            "Missing API key: send it as 'Authorization: Bearer <key>'."
            if not key
            else "Incorrect API key provided."
        )
        raise AuthError(message)
