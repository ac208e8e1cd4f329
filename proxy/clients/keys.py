"""A client as the request path sees it: its name, the models it may call, and its limits.

Owns: turning a `ClientSpec` (config.py) into a `Client`, and the scope check (`allows`),
case-insensitive `*` globs over client model ids, answered from a small cache. Does not own:
finding the client of a presented key (auth.py), enforcing limits (limits.py), or counting
usage (usage.py). Holds no secret: the key itself stays in auth.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

from proxy.catalog import excluded_by
from proxy.config import ClientSpec

#: Models remembered per client for the scope check; past this the cache starts over.
_SCOPE_CACHE = 1024


class Client:
    """One named client. `ref` identifies its counters in the limit store: a digest of its
    key, so counters follow the key across a reload (even a rename) and never show it."""

    __slots__ = (
        "_scope",
        "daily_tokens",
        "limited",
        "max_concurrent",
        "models",
        "name",
        "plan",
        "ref",
        "rpm",
        "tpm",
    )  # fmt: skip

    def __init__(self, spec: ClientSpec) -> None:
        self.name = spec.name
        self.ref = "client:" + hashlib.sha256(spec.key.encode()).hexdigest()[:24]
        self.models = spec.models
        self.rpm = spec.rpm
        self.tpm = spec.tpm
        self.max_concurrent = spec.max_concurrent
        self.daily_tokens = spec.daily_tokens
        #: whether any limit is set (else the limit store is never touched)
        self.limited = any(
            v is not None for v in (spec.rpm, spec.tpm, spec.max_concurrent, spec.daily_tokens)
        )
        self._scope: dict[str, bool] = {}
        #: its counters in the limit store, worked out by limits.py on first use
        self.plan: Any = None

    def allows(self, model: str) -> bool:
        """Whether this client may call `model` (a client model id)."""
        if not self.models:
            return True
        allowed = self._scope.get(model)
        if allowed is None:
            if len(self._scope) >= _SCOPE_CACHE:
                self._scope.clear()  # bounded, whatever model names clients send
            allowed = self._scope[model] = excluded_by(model, self.models) is not None
        return allowed

    def limits(self) -> dict[str, int | None]:
        """The configured limits, spelt as in config.yaml (None: unlimited)."""
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max-concurrent": self.max_concurrent,
            "daily-tokens": self.daily_tokens,
        }

    def __repr__(self) -> str:
        return f"Client({self.name!r})"
