"""Credential scheduler: which credential serves the next attempt, and what an outcome does.

Owns: per (credential, upstream model) cooldowns and backoff levels, per credential disables
(401/402/403) and last errors, priority tiers, the routing strategies, the soonest recovery
when nothing is ready, and the per-credential view that metrics and management read.
Pure and synchronous with an injectable clock: no I/O, no asyncio, no parsing of HTTP.
Does not own: the request loop (failover.py), parsing retry hints (retry_hints.py), or what a
credential is (driver.py).

Selection: the highest priority tier with a ready, untried candidate; inside it `fill-first`
takes the first in declaration order, `round-robin` rotates. When a tier spans several blocks,
round-robin first picks a block by smooth weighted rotation (weight = the block's ready
credentials, so 3 keys get 3 turns to 1 key's 1), then rotates inside that block. A pick costs
O(1) while the credentials at the cursor are ready, O(n) at worst; never a sort.

Outcome table (every cooldown is skipped when cooling is off: `disable-cooling` globally, per
block, or per credential through `Credential.extra["disable-cooling"]`):

    success          clears the (credential, model) state, backoff included, and a disable,
                     unless they were recorded after the successful attempt began
    429              cools (credential, model) for the hint capped by `max_cooldown`, else
                     1 s, 2 s, 4 s ... capped at 30 min (and at `max_cooldown`)
    401/402/403      disables the credential, every model, for 30 min; a reload re-enables it
    discontinued     disables the credential, every model, until a reload (the service is gone)
    quota spent      (a driver's quota reading, quota.py) disables the credential, every model,
                     until the quota resets; a reading that is not spent lifts it
    408/5xx/timeout  cools (credential, model) for `transient_cooldown` (<= 0: no cooldown)
A cooldown never shortens one already running.

Sharing (proxy/state/): every change an outcome makes (a cooldown or disable that starts or
grows, one that a success or `recover` clears) is handed to `on_change` as a `Change` in
wall-clock time; a shared-state backend publishes it, and `apply` merges the changes other
processes publish. Selection only ever reads local state, so it stays synchronous.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from proxy.driver import Credential

DISABLE_SECONDS = 30 * 60.0
BACKOFF_CAP_SECONDS = 30 * 60.0
STRATEGIES = ("round-robin", "fill-first")
#: `Credential.extra` key a driver sets for a credential configured with `disable-cooling`.
DISABLE_COOLING = "disable-cooling"

QUOTA, UNAUTHORIZED, TRANSIENT = "quota", "unauthorized", "transient"
DISCONTINUED = "discontinued"
#: `Change.kind`s
COOL, DISABLE, CLEAR_COOL, CLEAR_DISABLE = "cool", "disable", "clear-cool", "clear-disable"


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

    in_seconds: float  # math.inf when every candidate is discontinued
    quota: bool  # True when that candidate is cooling after a 429 (else disabled/transient)
    #: when no candidate will ever recover (until a reload): why, in the driver's words
    discontinued: str = ""


@dataclass(frozen=True, slots=True)
class CredentialView:
    """A credential's state for metrics and management. Never holds the secret."""

    id: str
    provider: str
    state: str  # "ready" | "cooling_down" | "disabled"
    reason: str = ""  # "quota" | "unauthorized" | "transient" | "discontinued" | ""
    until: float | None = None  # wall-clock time (time.time()) the state ends; None: never
    last_error: str = ""
    cooling_models: tuple[str, ...] = ()  # upstream models this credential is cooling for


def availability(providers: Iterable[str], views: Iterable[CredentialView]) -> dict[str, str]:
    """Each provider's availability from its credentials' states, in the words `/health`,
    management and the status page share: ok (all ready), degraded (some), down (none)."""
    total: dict[str, int] = dict.fromkeys(providers, 0)
    ready = dict(total)
    for view in views:
        if view.provider in total:
            total[view.provider] += 1
            ready[view.provider] += view.state == "ready"
    return {
        name: "ok" if n and ready[name] == n else ("degraded" if ready[name] else "down")
        for name, n in total.items()
    }


@dataclass(frozen=True, slots=True)
class Change:
    """A credential's state changed: what other processes are told (proxy/state/).

    Times are wall-clock (`time.time()`): one process's monotonic clock means nothing to
    another. A clear undoes only what was recorded before its `at`.
    """

    kind: str  # COOL | DISABLE | CLEAR_COOL | CLEAR_DISABLE
    credential_id: str
    model: str  # the upstream model ("" for a disable, which holds for every model)
    until: float  # when the cooldown or disable ends (0 for a clear)
    reason: str  # QUOTA | UNAUTHORIZED | TRANSIENT ("" for a clear)
    at: float  # when it was recorded (for a clear: when the clearing attempt began)


@dataclass(slots=True)
class _State:
    until: float = 0.0
    reason: str = ""
    backoff_level: int = 0
    since: float = 0.0  # when the last failure was recorded
    note: str = ""  # for a discontinued credential: the message every later request gets


@dataclass(frozen=True, slots=True)
class _Block:
    provider: str
    members: tuple[Candidate, ...]  # declaration order


@dataclass(frozen=True, slots=True)
class _Tier:
    priority: int
    blocks: tuple[_Block, ...]  # declaration order


class Scheduler:
    def __init__(
        self,
        *,
        strategy: str = "round-robin",
        transient_cooldown: float = 60.0,
        max_cooldown: float = 1800.0,
        disable_cooling: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.configure(
            strategy=strategy,
            transient_cooldown=transient_cooldown,
            max_cooldown=max_cooldown,
            disable_cooling=disable_cooling,
        )
        #: monotonic seconds; public so that tests can drive time
        self.clock = clock
        self.wall_clock = wall_clock
        self._cooling: dict[tuple[str, str], _State] = {}  # (credential id, upstream model)
        self._disabled: dict[str, _State] = {}  # credential id
        self._last_error: dict[str, str] = {}  # credential id
        self._credentials: dict[str, str] = {}  # credential id -> provider
        # pool -> (the candidates sequence it was built from, its tiers)
        self._layouts: dict[str, tuple[Sequence[Candidate], tuple[_Tier, ...]]] = {}
        self._cursors: dict[tuple[str, str], int] = {}  # (pool, provider) -> next index
        # (pool, priority) -> (the tier, its blocks' weighted credits); and the next block's
        # turn while the weights are equal
        self._credits: dict[tuple[str, int], tuple[_Tier, list[float]]] = {}
        self._block_turns: dict[tuple[str, int], int] = {}
        # Ready counts of a multi-block tier, reused until a state changes (`_version`) or a
        # counted cooldown ends: (pool, priority) -> (tier, version, valid until, counts).
        self._version = 0
        self._counts: dict[tuple[str, int], tuple[_Tier, int, float, list[int]]] = {}
        #: told of every change an outcome makes (a shared-state backend publishes it)
        self.on_change: Callable[[Change], None] | None = None

    def configure(
        self,
        *,
        strategy: str,
        transient_cooldown: float,
        max_cooldown: float,
        disable_cooling: bool,
    ) -> None:
        """Apply new settings (on reload); state is kept."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {strategy!r}; use one of {STRATEGIES}")
        self.strategy = strategy
        self.transient_cooldown = transient_cooldown
        self.max_cooldown = max_cooldown
        self.disable_cooling = disable_cooling

    def register(self, credentials: Iterable[tuple[str, str]]) -> None:
        """The (provider, credential id) pairs that exist now (start-up and every reload).

        State of credentials that are gone is dropped. Disables (401/402/403) are lifted,
        because the operator may have just fixed the key; cooldowns (429, transient) of the
        credentials that remain are kept, because the upstream still means them.
        """
        self._credentials = {cid: provider for provider, cid in credentials}
        self._cooling = {k: v for k, v in self._cooling.items() if k[0] in self._credentials}
        for cid in self._disabled:  # lifted for every process sharing the state, too
            self._share(CLEAR_DISABLE, cid, "", None)
        self._disabled.clear()
        self._last_error = {k: v for k, v in self._last_error.items() if k in self._credentials}
        self._layouts.clear()  # the catalog was rebuilt: new candidate sequences
        self._counts.clear()

    # -- selection ---------------------------------------------------------------------------

    def pick(self, pool: str, candidates: Sequence[C], tried: Container[C]) -> C | None:
        """The next ready candidate of `pool` not in `tried`, or None."""
        now = self.clock()
        for tier in self._tiers(pool, candidates):
            found = self._pick_in_tier(pool, tier, tried, now)
            if found is not None:
                return found  # type: ignore[return-value]  # a member of `candidates`
        return None

    def _tiers(self, pool: str, candidates: Sequence[Candidate]) -> tuple[_Tier, ...]:
        cached = self._layouts.get(pool)
        if cached is not None and cached[0] is candidates:
            return cached[1]
        by_priority: dict[int, dict[str, list[Candidate]]] = {}
        for c in candidates:
            by_priority.setdefault(c.priority, {}).setdefault(c.provider, []).append(c)
        tiers = tuple(
            _Tier(p, tuple(_Block(name, tuple(ms)) for name, ms in by_priority[p].items()))
            for p in sorted(by_priority, reverse=True)  # a handful of distinct priorities
        )
        self._layouts[pool] = (candidates, tiers)
        return tiers

    def _pick_in_tier(
        self, pool: str, tier: _Tier, tried: Container[Candidate], now: float
    ) -> Candidate | None:
        if self.strategy == "fill-first":
            for block in tier.blocks:
                for c in block.members:
                    if self._available(c, tried, now):
                        return c
            return None
        if len(tier.blocks) == 1:
            return self._rotate(pool, tier.blocks[0], tried, now)
        # Smooth weighted rotation over blocks (weights: ready, untried credentials): each
        # block earns its weight, the richest is picked and pays the total. Plain lists, as
        # this loop runs over every block of the pool on every request.
        weights = self._weights(pool, tier, tried, now)
        key = (pool, tier.priority)
        if weights[0] and weights.count(weights[0]) == len(weights):
            # Equal weights (the usual case: blocks of one size, all ready): the weighted
            # rotation is a plain one over the blocks, with no loop over them.
            turn = self._block_turns.get(key, 0)
            self._block_turns[key] = turn + 1
            return self._rotate(pool, tier.blocks[turn % len(weights)], tried, now)
        credits = self._tier_credits(pool, tier)
        best, best_credit, total = -1, 0.0, 0
        for i, weight in enumerate(weights):
            if weight:
                total += weight
                credit = credits[i] = credits[i] + weight
                if best < 0 or credit > best_credit:
                    best, best_credit = i, credit
        if best < 0:
            return None
        credits[best] -= total
        return self._rotate(pool, tier.blocks[best], tried, now)

    def _tier_credits(self, pool: str, tier: _Tier) -> list[float]:
        """The blocks' credits, in `tier.blocks` order (restarting when the layout changes)."""
        key = (pool, tier.priority)
        held = self._credits.get(key)
        if held is None or held[0] is not tier:
            held = self._credits[key] = (tier, [0.0] * len(tier.blocks))
        return held[1]

    def _rotate(
        self, pool: str, block: _Block, tried: Container[Candidate], now: float
    ) -> Candidate | None:
        """Round-robin inside a block: the first ready, untried member from the cursor on."""
        members = block.members
        n = len(members)
        key = (pool, block.provider)
        start = self._cursors.get(key, 0) % n
        if not tried and not self._cooling and not self._disabled:  # healthy: the next one
            self._cursors[key] = start + 1
            return members[start]
        for step in range(n):
            i = (start + step) % n
            c = members[i]
            if self._available(c, tried, now):
                self._cursors[key] = i + 1
                return c
        return None

    def _weights(
        self, pool: str, tier: _Tier, tried: Container[Candidate], now: float
    ) -> list[int]:
        key = (pool, tier.priority)
        cached = self._counts.get(key)
        if (
            not tried
            and cached is not None
            and cached[0] is tier
            and cached[1] == self._version
            and now < cached[2]
        ):
            return cached[3]
        counts, valid_until = [], float("inf")
        for block in tier.blocks:
            ready = 0
            for c in block.members:
                at = self._ready_at(c)
                if at > now:
                    valid_until = min(valid_until, at)
                elif not (tried and c in tried):
                    ready += 1
            counts.append(ready)
        if not tried:
            self._counts[key] = (tier, self._version, valid_until, counts)
        return counts

    def _available(self, c: Candidate, tried: Container[Candidate], now: float) -> bool:
        # `tried` is empty on nearly every pick: skip hashing the candidate then.
        return not (tried and c in tried) and self._ready_at(c) <= now

    def _ready_at(self, c: Candidate) -> float:
        if not self._cooling and not self._disabled:
            return 0.0  # nothing cools and nothing is disabled: the usual, healthy state
        cid = c.credential.id
        cooling = self._cooling.get((cid, c.upstream_model))
        disabled = self._disabled.get(cid)
        return max(cooling.until if cooling else 0.0, disabled.until if disabled else 0.0)

    # -- outcomes ----------------------------------------------------------------------------

    def success(self, c: Candidate, started: float | None = None) -> None:
        """The credential answered: forget its cooldown and backoff for this model.

        `started` (this scheduler's clock when the attempt began) keeps a slow success from
        clearing a failure that other requests recorded while it was in flight.
        """
        if not self._cooling and not self._disabled:
            return  # nothing to forget (the usual case)
        cid = c.credential.id
        key = (cid, c.upstream_model)
        cooling = self._cooling.get(key)
        if cooling is not None and (started is None or cooling.since <= started):
            del self._cooling[key]
            self._version += 1
            self._share(CLEAR_COOL, cid, c.upstream_model, None, "", started)
        disabled = self._disabled.get(cid)
        if disabled is not None and (started is None or disabled.since <= started):
            del self._disabled[cid]
            self._version += 1
            self._share(CLEAR_DISABLE, cid, "", None, "", started)

    def rate_limited(self, c: Candidate, retry_after: float | None, error: str = "") -> float:
        """429: cool (credential, model) for the hint (capped), else 1 s, 2 s, 4 s ...

        Returns the cooldown applied, in seconds (0 when cooling is off).
        """
        self._note(c, error)
        if self._cooling_off(c):
            return 0.0
        state = self._cooling.setdefault((c.credential.id, c.upstream_model), _State())
        if retry_after is not None:
            seconds = min(max(retry_after, 0.0), self.max_cooldown)
        else:
            seconds = min(2.0**state.backoff_level, BACKOFF_CAP_SECONDS, self.max_cooldown)
            state.backoff_level += 1
        if self._extend(state, seconds, QUOTA):
            self._share(COOL, c.credential.id, c.upstream_model, state)
        return seconds

    def rejected(self, c: Candidate, error: str = "") -> None:
        """401/402/403: the credential is disabled for 30 minutes, for every model."""
        self._note(c, error)
        if not self._cooling_off(c):
            state = self._disabled.setdefault(c.credential.id, _State())
            if self._extend(state, DISABLE_SECONDS, UNAUTHORIZED):
                self._share(DISABLE, c.credential.id, "", state)

    def discontinued(self, c: Candidate, message: str) -> None:
        """The service behind the credential is gone: disabled, every model, until a reload.

        Not subject to `disable-cooling`: retrying a shut-down service helps nobody. Not shared
        with other processes (`on_change`): each finds it out with one call per credential.
        """
        self._note(c, message)
        state = self._disabled.setdefault(c.credential.id, _State())
        state.since, state.until, state.reason = self.clock(), math.inf, DISCONTINUED
        state.note = message
        self._version += 1

    def transient(self, c: Candidate, error: str = "") -> None:
        """408/5xx/connect or read timeout: cool (credential, model) for the transient cooldown."""
        self._note(c, error)
        if self._cooling_off(c) or self.transient_cooldown <= 0:
            return
        state = self._cooling.setdefault((c.credential.id, c.upstream_model), _State())
        if self._extend(state, self.transient_cooldown, TRANSIENT):
            self._share(COOL, c.credential.id, c.upstream_model, state)

    def spent(self, credential_id: str, seconds: float, error: str = "") -> None:
        """A quota reading: the credential's allowance is used up for `seconds` (not capped:
        the upstream said when it resets). 0 lifts an earlier one; other disables stay."""
        state = self._disabled.get(credential_id)
        if seconds <= 0:
            if state is not None and state.reason == QUOTA:
                del self._disabled[credential_id]
                self._version += 1
            return
        if self.disable_cooling:
            return
        if error:
            self._last_error[credential_id] = error[:200]
        self._extend(self._disabled.setdefault(credential_id, _State()), seconds, QUOTA)

    def _cooling_off(self, c: Candidate) -> bool:
        return (
            self.disable_cooling
            or c.disable_cooling
            or bool(c.credential.extra.get(DISABLE_COOLING))
        )

    def _extend(self, state: _State, seconds: float, reason: str) -> bool:
        """Start or grow a cooldown or disable; True when it did (a shorter one never cuts a
        running one)."""
        now = self.clock()
        state.since = now
        until = now + seconds
        if until > state.until:
            state.until, state.reason = until, reason
            self._version += 1
            return True
        return False

    def _share(
        self,
        kind: str,
        cid: str,
        model: str,
        state: _State | None,
        reason: str = "",
        at: float | None = None,
    ) -> None:
        """Tell `on_change` (monotonic times here become wall-clock times there)."""
        if self.on_change is None:
            return
        now, wall = self.clock(), self.wall_clock()
        if state is not None:
            until, reason, at = wall + state.until - now, state.reason, state.since
        else:
            until = 0.0
        moment = wall if at is None else wall - (now - at)
        self.on_change(Change(kind, cid, model, until, reason, moment))

    def apply(self, change: Change) -> None:
        """Merge a change another process made (never passed on to `on_change` again)."""
        cid = change.credential_id
        if cid not in self._credentials:
            return  # not a credential of this config (yet): nothing to cool
        now, wall = self.clock(), self.wall_clock()
        at = now - (wall - change.at)
        if change.kind in (COOL, DISABLE):
            until = now + (change.until - wall)
            if until <= now:
                return
            if change.kind == COOL:
                state = self._cooling.setdefault((cid, change.model), _State())
            else:
                state = self._disabled.setdefault(cid, _State())
            state.since = max(state.since, at)
            if until > state.until:
                state.until, state.reason = until, change.reason
                self._version += 1
            return
        table: dict[Any, _State]
        key: Any
        table, key = (
            (self._cooling, (cid, change.model)) if change.kind == CLEAR_COOL
            else (self._disabled, cid)
        )  # fmt: skip
        held = table.get(key)
        if held is not None and held.since <= at:
            del table[key]
            self._version += 1

    def shared_states(self) -> list[Change]:
        """Every cooldown and disable still running, as changes (for a backend that has just
        (re)connected and merges what it missed)."""
        now, wall = self.clock(), self.wall_clock()
        out = [
            Change(COOL, cid, model, wall + s.until - now, s.reason, wall - (now - s.since))
            for (cid, model), s in self._cooling.items()
            if s.until > now
        ]
        out += [
            Change(DISABLE, cid, "", wall + s.until - now, s.reason, wall - (now - s.since))
            for cid, s in self._disabled.items()
            if s.until > now
        ]
        return out

    def _note(self, c: Candidate, error: str) -> None:
        if error:
            secret = c.credential.secret
            if secret and secret in error:  # an upstream that echoes the key it was sent
                error = error.replace(secret, "[redacted]")
            self._last_error[c.credential.id] = error[:200]

    # -- what the rest of keyrail reads ------------------------------------------------------

    def ready(self, c: Candidate) -> bool:
        """Whether `c` may be tried now (neither cooling down for its model nor disabled)."""
        return self._ready_at(c) <= self.clock()

    def disabled(self, c: Candidate) -> bool:
        """Whether `c`'s credential is disabled (401/402/403) right now."""
        state = self._disabled.get(c.credential.id)
        return state is not None and state.until > self.clock()

    def recovery(self, candidates: Sequence[Candidate]) -> Recovery | None:
        """The soonest recovery among candidates that are not ready; None if one is ready."""
        now = self.clock()
        best: Candidate | None = None
        best_at = 0.0
        for c in candidates:
            at = self._ready_at(c)
            if at <= now:
                return None
            if best is None or at < best_at:
                best, best_at = c, at
        if best is None:
            return None
        if best_at == math.inf:
            disabled = self._disabled.get(best.credential.id)
            note = disabled.note if disabled is not None else ""
            return Recovery(in_seconds=math.inf, quota=False, discontinued=note or DISCONTINUED)
        cooling = self._cooling.get((best.credential.id, best.upstream_model))
        disabled = self._disabled.get(best.credential.id)
        quota = any(
            s is not None and s.reason == QUOTA and s.until == best_at for s in (cooling, disabled)
        )
        return Recovery(in_seconds=best_at - now, quota=quota)

    def credential_views(self) -> list[CredentialView]:
        """Every registered credential, by its non-secret id, in registration order."""
        now, wall = self.clock(), self.wall_clock()
        cooling: dict[str, list[tuple[str, _State]]] = {}
        for (cid, model), state in self._cooling.items():
            if state.until > now:
                cooling.setdefault(cid, []).append((model, state))
        views = []
        for cid, provider in self._credentials.items():
            error = self._last_error.get(cid, "")
            disabled = self._disabled.get(cid)
            models = cooling.get(cid, [])
            names = tuple(sorted(m for m, _ in models))
            if disabled is not None and disabled.until > now:
                until = None if disabled.until == math.inf else wall + disabled.until - now
                views.append(CredentialView(cid, provider, "disabled", disabled.reason,
                                            until, error, names))  # fmt: skip
            elif models:
                latest = max((s for _, s in models), key=lambda s: s.until)
                views.append(CredentialView(cid, provider, "cooling_down", latest.reason,
                                            wall + latest.until - now, error, names))  # fmt: skip
            else:
                views.append(CredentialView(cid, provider, "ready", last_error=error))
        return views

    def recover(self, *, credential_id: str | None = None, provider: str | None = None) -> int:
        """Clear cooldowns and disables now (management). Returns how many were cleared."""

        def chosen(cid: str) -> bool:
            return (credential_id is None or cid == credential_id) and (
                provider is None or self._credentials.get(cid) == provider
            )

        cooling = [k for k in self._cooling if chosen(k[0])]
        disabled = [k for k in self._disabled if chosen(k)]
        for key in cooling:
            del self._cooling[key]
            self._share(CLEAR_COOL, key[0], key[1], None)
        for cid in disabled:
            del self._disabled[cid]
            self._share(CLEAR_DISABLE, cid, "", None)
        self._version += 1
        return len(cooling) + len(disabled)
