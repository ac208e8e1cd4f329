"""Redaction: no secret leaves keyrail in text others read.

Owns: the process-wide `REDACTOR`, which masks every registered secret (client keys, provider
keys and tokens, the management secret, secret-looking header values) and anything shaped like
a credential (`Authorization: …`, `Bearer …`, `sk-…` keys, `?key=…` in URLs); and
`secrets_of(settings)`, which finds the configured secrets. Its users: every log record
(logs.py installs it), error bodies (http/pipeline.py), `/v1/metrics/providers` and `/metrics`
(metrics.py). Does not own: deciding what is logged or measured.

One redactor per process, because logging is per process: secrets only ever get added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.config import Settings

MASK = "[REDACTED]"
#: Shorter values are not treated as secrets: masking them would shred ordinary text.
MIN_SECRET_LENGTH = 4
#: Past this many secrets, texts are pre-searched by prefix (see `Redactor.add`).
_MANY_SECRETS = 16
_FEW_HEADS = 16

# Credential-shaped text, whatever its value: header-like pairs keep their name.
_SHAPES = re.compile(
    r"(?P<name>\b(?:proxy-authorization|authorization|x-api-key|x-goog-api-key|api-key"
    r"|x-management-key|cookie|set-cookie)\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|token)\s+)?(?!(?:bearer|basic|token)\b|<)[^\s,;'\"&]{4,}"
    r"|(?P<scheme>\bbearer\s+)[\w.~+/=-]{6,}"
    r"|(?P<userinfo>://[^/\s:@]+:)[^/\s@]+(?=@)"
    r"|(?P<query>[?&](?:key|api_key|api-key|apikey|access_token|token|auth)=)[^&\s'\"#]+"
    r"|\bsk-[\w-]{8,}",
    re.IGNORECASE,
)
#: Lowercase text without any of these cannot match `_SHAPES`: a few `in` checks skip it.
_SHAPE_TRIGGERS = ("auth", "key", "token=", "cookie", "bearer", "sk-", "://")
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw|cookie|auth|credential)")
_NOT_SECRET_NAME = re.compile(r"(?i)(file|path|dir|url|endpoint|region|arn)$")


def is_secret_name(name: str) -> bool:
    """Does a config key or header of this name hold a secret (`api-key`, not `token-file`)?"""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def _mask_shape(match: re.Match[str]) -> str:
    prefix = (
        match.group("name")
        or match.group("scheme")
        or match.group("userinfo")
        or match.group("query")
        or ""
    )
    return prefix + MASK


class Redactor:
    """Masks registered secrets and credential-shaped text in strings and bytes.

    Secrets added with an `owner` (an OAuth credential whose token is refreshed every hour)
    replace that owner's older ones, keeping one generation back for requests still in flight,
    so the set stays bounded however long keyrail runs.
    """

    __slots__ = ("_exact", "_kept", "_owned", "_prefix", "_secrets", "generation")

    def __init__(self) -> None:
        self._kept: set[str] = set()
        self._owned: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._secrets: tuple[str, ...] = ()
        self._prefix: re.Pattern[str] | None = None
        self._exact: re.Pattern[str] = re.compile("(?!)")
        #: bumped whenever the secrets change: what was redacted before may need it again
        self.generation = 0

    def add(self, secrets: Iterable[str], *, owner: str = "") -> None:
        """Register secrets; values shorter than MIN_SECRET_LENGTH are ignored."""
        new = frozenset(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)
        if owner:
            current, _ = self._owned.get(owner, (frozenset(), frozenset()))
            if new == current:
                return
            self._owned[owner] = (new, current)
        elif new <= self._kept:
            return
        else:
            self._kept |= new
        every = self._kept.union(*(s for pair in self._owned.values() for s in pair))
        self._secrets = tuple(sorted(every, key=len, reverse=True))
        self.generation += 1
        self._exact = re.compile("|".join(map(re.escape, self._secrets)) or "(?!)")
        # Many secrets sharing a few heads ("sk-proj-…", "sk-or-…"): the text is first searched
        # (in C) for those heads, and only a hit pays one substring search per secret.
        heads = sorted({s[:MIN_SECRET_LENGTH] for s in self._secrets})
        useful = len(self._secrets) > _MANY_SECRETS and len(heads) <= _FEW_HEADS
        self._prefix = re.compile("|".join(map(re.escape, heads))) if useful else None

    def redact(self, text: str) -> str:
        """`text` with secrets masked. Costs a substring test per secret and per trigger
        when there is nothing to mask (the common case); the regexes run only on a hit."""
        if self._may_hold_secret(text):
            for secret in self._secrets:
                if secret in text:
                    text = self._exact.sub(MASK, text)
                    break
        lowered = text.lower()
        for trigger in _SHAPE_TRIGGERS:
            if trigger in lowered:
                return _SHAPES.sub(_mask_shape, text)
        return text

    def _may_hold_secret(self, text: str) -> bool:
        if self._prefix is None:
            return bool(self._secrets)
        return self._prefix.search(text) is not None

    def redact_bytes(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
        clean = self.redact(text)
        return data if clean == text else clean.encode("utf-8")


REDACTOR = Redactor()


def url_label(url: str) -> str:
    """A URL as it may be shown: without its user and password."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def secrets_of(settings: Settings) -> Iterator[str]:
    """Every secret the settings hold: client keys, the management secret, and in each
    provider block the values of secret-named options (`api-key`, `access-token`, …) and of
    secret-named headers."""
    yield from settings.api_keys
    if settings.management_secret:
        yield settings.management_secret
    if password := urlsplit(settings.state).password:  # `state: redis://:PASSWORD@host`
        yield password
    for block in settings.providers:
        yield from _secret_values(block.options, named=False)
        yield from _secret_values(block.headers, named=False)


def _secret_values(value: Any, *, named: bool) -> Iterator[str]:
    if isinstance(value, str):
        if named and value.strip():
            yield value.strip()
            scheme, _, token = value.strip().partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                yield token.strip()
    elif isinstance(value, Mapping):
        for k, v in value.items():
            name = str(k)
            yield from _secret_values(v, named=is_secret_name(name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item, named=named)


class StreamMask:
    """Masks one secret (the credential an answer was fetched with) in bytes relayed as they
    come, including a secret cut in two by a chunk boundary.

    The only cost when the secret is absent: one substring search per chunk, and a chunk that
    ends in LF (every chunk of whole SSE events) cannot end inside a secret, so nothing is
    held back. Otherwise the chunk's tail that could be the start of the secret waits for the
    next chunk (or `flush`).
    """

    __slots__ = ("_held", "_lines_end_it", "_secret")

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._held = b""
        self._lines_end_it = b"\n" not in self._secret  # true for any real key

    @staticmethod
    def wanted(secret: str) -> bool:
        return len(secret) >= MIN_SECRET_LENGTH

    @staticmethod
    def whole(data: bytes, secret: str) -> bytes:
        """`data` (a whole body) with `secret` masked."""
        if not StreamMask.wanted(secret):
            return data
        raw = secret.encode()
        return data.replace(raw, _MASK_BYTES) if raw in data else data

    def feed(self, chunk: bytes) -> bytes:
        if self._held:
            chunk, self._held = self._held + chunk, b""
        secret = self._secret
        if secret in chunk:
            chunk = chunk.replace(secret, _MASK_BYTES)
        if self._lines_end_it and chunk.endswith(b"\n"):
            return chunk
        # The longest tail of the chunk that is a proper prefix of the secret waits.
        start = max(0, len(chunk) - len(secret) + 1)
        i = chunk.find(secret[:1], start)
        while i >= 0:
            if secret.startswith(chunk[i:]):
                self._held = chunk[i:]
                return chunk[:i]
            i = chunk.find(secret[:1], i + 1)
        return chunk

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


_MASK_BYTES = MASK.encode()
