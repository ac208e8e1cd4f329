"""Client authentication: who may use the proxy.

Owns: reading the client key from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key`,
comparing it in constant time against every configured key (once per key: one that passed is
remembered, with its named client if it has one), and which paths need one (`check`, called
by the pipeline, which answers the request's `Client`: None for a plain string key). With no
`api-keys`, everyone on the (loopback-only) address is let in. Does not own: management keys
(http/management.py), keys sent upstream (drivers), or what a client may do (proxy/clients/).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from typing import Final, Literal

from aiohttp import web

from proxy.clients.keys import Client
from proxy.config import ClientSpec
from proxy.errors import AuthError

#: The metrics paths: open, unless `metrics.require-api-key: true`.
METRICS_PATHS = frozenset({"/metrics", "/v1/metrics/providers", "/v1/status"})
#: Paths anyone may read: probes, the runbook's unauthenticated metrics curl, and the status
#: page itself (it holds no data: it asks `/v1/status` for it, with a key when one is needed).
OPEN_PATHS = frozenset({"/health", "/healthz", "/status"}) | METRICS_PATHS


class Denied(enum.Enum):
    """`identify`'s answer for a key that is none of the configured ones."""

    DENIED = 0


DENIED: Final = Denied.DENIED


class ClientKeys:
    """The configured client keys, held as SHA-256 digests and compared in constant time.

    A key that passed is remembered, so its next requests skip the hash: looking a string up
    in a set hashes all of it with the process's secret SipHash key and compares contents only
    on a hash match, so a wrong key's time says nothing about how close it came. The set holds
    at most the configured keys, and goes with this object when the config is reloaded.
    """

    __slots__ = ("_accepted", "_by_digest", "_digests", "clients", "required")

    def __init__(self, keys: Iterable[str], clients: Iterable[ClientSpec] = ()) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)
        #: the named clients (`api-keys` mappings), in config order
        self.clients = tuple(Client(spec) for spec in clients)
        self._by_digest = {
            hashlib.sha256(spec.key.encode()).digest(): client
            for spec, client in zip(clients, self.clients, strict=True)
        } if self.clients else {}  # fmt: skip
        #: keys that passed -> their named client, or None for a plain key
        self._accepted: dict[str, Client | None] = {}
        #: whether any key is configured (else everyone is let in)
        self.required = bool(self._digests)

    def allows(self, presented: str | None) -> bool:
        """True when `presented` is one of the keys. Time does not depend on which one."""
        return self.identify(presented) is not DENIED

    def identify(self, presented: str | None) -> Client | Literal[Denied.DENIED] | None:
        """The named client of `presented`, None for a plain key (or when no key is needed),
        `DENIED` when it is none of the keys. Time does not depend on which key it is."""
        if not self._digests:
            return None
        if not presented:
            return DENIED
        known_client = self._accepted.get(presented, DENIED)
        if known_client is not DENIED:
            return known_client
        # Header bytes that are not UTF-8 arrive surrogate-escaped: still a (wrong) key.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(digest, known)
        if not ok:
            return DENIED
        # A dict lookup by the digest: only keys that already passed the comparison get here.
        client = self._accepted[presented] = self._by_digest.get(digest)
        return client


def presented_key(request: web.Request) -> str | None:
    """The client's key, from the first header that carries one."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth.strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")


def check(request: web.Request, keys: ClientKeys, metrics_need_key: bool) -> Client | None:
    """The request's named client (None: a plain key, or a path that needs none), or
    AuthError: every path needs a key, except the open ones (the metrics too when
    `metrics_need_key`) and management's (it has its own guard)."""
    if not keys.required:
        return None
    path = request.path
    if path in OPEN_PATHS and not (metrics_need_key and path in METRICS_PATHS):
        return None
    if path.startswith("/v0/management"):
        return None
    key = presented_key(request)
    client = keys.identify(key)
    if client is DENIED:
        message = (
            "Missing API key: send it as 'Authorization: Bearer <key>'."
            if not key
            else "Incorrect API key provided."
        )
        raise AuthError(message)
    return client
