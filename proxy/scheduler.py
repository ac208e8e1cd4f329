"""Credential scheduler: which credential serves the next attempt, and what an outcome does.

Owns: per (credential, upstream model) state (cooldowns, disables, backoff level), priority
tiers, the routing strategies, and the soonest recovery when nothing is ready. Pure and
synchronous with an injectable clock: no I/O, no asyncio, no parsing of HTTP.
Does not own: the request loop (handlers.py), parsing retry hints (retry_hints.py), or
what a credential is (driver.py).

FIRST VERSION: round-robin with simple cooldowns; the full rules land with the scheduler issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from proxy.driver import Credential

DISABLE_SECONDS = 30 * 60.0


class Candidate(Protocol):
    """What the scheduler needs to know of a routing target (catalog.Target is one)."""

    @property
    def provider(self) -> str: ...
    @property
    def credential(self) -> Credential: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def disable_cooling(self) -> bool: ...


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True, slots=True)
class Recovery:
    """When the soonest of a pool's candidates becomes ready again."""

    in_seconds: float
    quota: bool  # True when that candidate is cooling after a 429 (else disabled/transient)


@dataclass(frozen=True, slots=True)
class CredentialView:
    """A credential's state for metrics and management. Never holds the secret."""

    id: str
    provider: str
    state: str  # "ready" | "cooling_down" | "disabled"
    reason: str = ""  # "quota" | "unauthorized" | "transient" | ""
    until: float | None = None  # wall-clock time (time.time()) the state ends
    last_error: str = ""


@dataclass(slots=True)
class _State:
    until: float = 0.0
    reason: str = ""
    backoff_level: int = 0
    last_error: str = ""


class Scheduler:
    def __init__(
        self,
        *,
        strategy: str = "round-robin",
        transient_cooldown: float = 60.0,
        max_cooldown: float = 1800.0,
        disable_cooling: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configure(
            strategy=strategy,
            transient_cooldown=transient_cooldown,
            max_cooldown=max_cooldown,
            disable_cooling=disable_cooling,
        )
        self._clock = clock
        self._states: dict[tuple[str, str], _State] = {}
        self._cursor: dict[str, int] = {}
        self._credentials: dict[str, str] = {}  # credential id -> provider

    def configure(
        self,
        *,
        strategy: str,
        transient_cooldown: float,
        max_cooldown: float,
        disable_cooling: bool,
    ) -> None:
        """Apply new settings (on reload); state is kept."""
        self.strategy = strategy
        self.transient_cooldown = transient_cooldown
        self.max_cooldown = max_cooldown
        self.disable_cooling = disable_cooling

    def register(self, credentials: Iterable[tuple[str, str]]) -> None:
        """The (provider, credential id) pairs that exist now; state of others is dropped."""
        self._credentials = {cid: provider for provider, cid in credentials}
        self._states = {k: v for k, v in self._states.items() if k[0] in self._credentials}

    def _ready(self, c: Candidate, now: float) -> bool:
        for key in ((c.credential.id, c.upstream_model), (c.credential.id, "")):
            st = self._states.get(key)
            if st is not None and st.until > now:
                return False
        return True

    def pick(self, pool: str, candidates: Sequence[C], tried: Container[C]) -> C | None:
        """The next ready candidate not yet tried, or None."""
        now = self._clock()
        ready = [c for c in candidates if c not in tried and self._ready(c, now)]
        if not ready:
            return None
        top = max(c.priority for c in ready)
        tier = [c for c in ready if c.priority == top]
        if self.strategy == "fill-first":
            return tier[0]
        n = self._cursor.get(pool, 0)
        self._cursor[pool] = n + 1
        return tier[n % len(tier)]

    def success(self, c: Candidate) -> None:
        self._states.pop((c.credential.id, c.upstream_model), None)

    def _cool(self, key: tuple[str, str], seconds: float, reason: str, error: str) -> None:
        st = self._states.setdefault(key, _State())
        st.until = self._clock() + seconds
        st.reason = reason
        st.last_error = error

    def rate_limited(self, c: Candidate, retry_after: float | None, error: str = "") -> float:
        """429: cool (credential, model) for the hint (capped), else 1 s, 2 s, 4 s ..."""
        if self.disable_cooling or c.disable_cooling:
            return 0.0
        key = (c.credential.id, c.upstream_model)
        st = self._states.setdefault(key, _State())
        if retry_after is not None:
            seconds = min(max(retry_after, 0.0), self.max_cooldown)
        else:
            seconds = min(2.0**st.backoff_level, self.max_cooldown)
            st.backoff_level += 1
        self._cool(key, seconds, "quota", error)
        return seconds

    def rejected(self, c: Candidate, error: str = "") -> None:
        """401/402/403: the credential is disabled for 30 minutes, for every model."""
        self._cool((c.credential.id, ""), DISABLE_SECONDS, "unauthorized", error)

    def transient(self, c: Candidate, error: str = "") -> None:
        """408/5xx/timeouts: cool (credential, model) for the transient cooldown."""
        if self.disable_cooling or c.disable_cooling or self.transient_cooldown <= 0:
            return
        self._cool((c.credential.id, c.upstream_model), self.transient_cooldown, "transient", error)

    def recovery(self, candidates: Sequence[Candidate]) -> Recovery | None:
        """The soonest recovery among candidates that are not ready; None if one is ready."""
        now = self._clock()
        best: Recovery | None = None
        for c in candidates:
            until, reason = now, ""
            for key in ((c.credential.id, c.upstream_model), (c.credential.id, "")):
                st = self._states.get(key)
                if st is not None and st.until > until:
                    until, reason = st.until, st.reason
            if until <= now:
                return None
            rec = Recovery(in_seconds=until - now, quota=reason == "quota")
            if best is None or rec.in_seconds < best.in_seconds:
                best = rec
        return best

    def credential_views(self) -> list[CredentialView]:
        now = self._clock()
        wall = time.time()
        views = []
        for cid, provider in self._credentials.items():
            worst: _State | None = None
            for (sid, _model), st in self._states.items():
                if sid == cid and st.until > now and (worst is None or st.until > worst.until):
                    worst = st
            if worst is None:
                views.append(CredentialView(cid, provider, "ready"))
            else:
                state = "disabled" if worst.reason == "unauthorized" else "cooling_down"
                views.append(
                    CredentialView(
                        cid,
                        provider,
                        state,
                        worst.reason,
                        wall + (worst.until - now),
                        worst.last_error,
                    )
                )
        return views

    def recover(self, *, credential_id: str | None = None, provider: str | None = None) -> int:
        """Clear state now (management). Returns how many states were cleared."""
        keys = [
            k
            for k in self._states
            if (credential_id is None or k[0] == credential_id)
            and (provider is None or self._credentials.get(k[0]) == provider)
        ]
        for k in keys:
            del self._states[k]
        return len(keys)
