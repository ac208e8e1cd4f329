"""Client limits: admit a request against its client's limits, and settle its tokens after.

Owns: which counters a client has in the limit store (`<ref>:rpm`, `:tpm`, `:day`, `:conc`),
the order they are taken in and undone on a refusal, the token estimate made before the call
and its correction once the upstream has reported usage, the `ClientRateLimited` a refusal
raises, and what `/v1/metrics/clients` shows of a client's limits. Does not own: the counters
themselves (proxy/state: memory, or Redis shared by instances), or who the client is (auth.py).

    rpm            requests per calendar minute (UTC), counted when admitted
    tpm            tokens (prompt + completion) per calendar minute
    daily-tokens   tokens per UTC day, reset at 00:00 UTC
    max-concurrent requests in flight at once; the next one gets 429 with Retry-After: 1

Token limits admit a request while the window is below the limit (a request's cost is not
known before it runs) and count an estimate at once (a quarter of the body's bytes), so that
a burst of concurrent requests cannot all pass on an unspent budget; when the request ends the
estimate is replaced by what the upstream reported (or refunded when nothing was served).

With the in-process store the same steps run on the store's cells, all counters in one call
with the time read once: a coroutine per counter cost more than everything else a limited
request does (bench/README.md).
"""

from __future__ import annotations

import math
from typing import Any

from proxy.clients.keys import Client
from proxy.errors import ClientRateLimited
from proxy.state.base import Clock, LimitStore, wall_clock, window_of
from proxy.state.memory import CellEntry, MemoryLimitStore

MINUTE, DAY = 60, 86400
#: bytes of request body per estimated prompt token (a rough, generous rule of thumb)
BYTES_PER_TOKEN = 4


class _Plan:
    """A client's counters, worked out once: (store key, limit, window, counts tokens, what);
    with the in-process store, also the store's cells for them (`local`: which store)."""

    __slots__ = ("cells", "counters", "local", "slot", "slot_cell", "slot_limit", "token_keys")

    def __init__(self, client: Client, local: MemoryLimitStore | None) -> None:
        ref = client.ref
        self.counters = tuple(
            (ref + suffix, limit, window, tokens, what)
            for limit, suffix, window, tokens, what in (
                (client.rpm, ":rpm", MINUTE, False, "requests per minute (rpm)"),
                (client.tpm, ":tpm", MINUTE, True, "tokens per minute (tpm)"),
                (client.daily_tokens, ":day", DAY, True, "tokens per day (daily-tokens)"),
            )
            if limit is not None
        )
        #: the token counters, to correct when the request ends: (store key, window)
        self.token_keys = tuple((key, window) for key, _l, window, tokens, _w in self.counters
                                if tokens)  # fmt: skip
        self.slot = ref + ":conc" if client.max_concurrent is not None else ""
        self.slot_limit = client.max_concurrent or 0
        self.local = local
        self.cells: tuple[CellEntry, ...] = ()
        self.slot_cell: list[int] | None = None
        if local is not None:
            self.cells = tuple((local.window_cell(key, window), limit, window, tokens)
                               for key, limit, window, tokens, _w in self.counters)  # fmt: skip
            self.slot_cell = local.slot_cell(self.slot) if self.slot else None


#: What one admitted request took, to give back or correct when it ends: its client's plan,
#: the tokens counted in advance in tpm and daily-tokens (0: none), and whether it holds one
#: of max-concurrent. A tuple: cheaper to make than any class, on every limited request.
Admission = tuple[_Plan, int, bool]


class Limits:
    """Client limits over a `LimitStore`; only clients with `limited` ever reach it."""

    def __init__(self, store: LimitStore, clock: Clock | None = None) -> None:
        self.use(store, clock)

    def use(self, store: LimitStore, clock: Clock | None = None) -> None:
        """Count in `store` from now on (`clock`: the store's, for when windows end)."""
        self.store = store
        self._local = store if isinstance(store, MemoryLimitStore) else None
        self.clock: Clock = clock or getattr(store, "clock", None) or wall_clock

    async def admit(self, client: Client, body_bytes: int) -> Admission:
        """Take what this request needs from the client's limits, or raise ClientRateLimited
        (having given back whatever it took before the refusal)."""
        local = self._local
        plan = client.plan
        if plan is None or plan.local is not local:
            plan = client.plan = _Plan(client, local)
        estimate = max(1, body_bytes // BYTES_PER_TOKEN) if plan.token_keys else 0
        if local is not None:  # in process: two calls, no coroutine per counter
            slot = plan.slot_cell
            if slot is not None:  # the store's acquire_cell, inline: a call is half its cost
                if slot[0] >= plan.slot_limit:
                    raise _busy(client)
                slot[0] += 1
            refused, left = local.take_cells(plan.cells, estimate, local.clock())
            if refused >= 0:
                if slot is not None:
                    slot[0] -= 1
                _key, limit, _window, _tokens, what = plan.counters[refused]
                raise _over(client, limit, what, left)
            return (plan, estimate, slot is not None)
        store = self.store
        slot_taken = False
        taken: list[tuple[str, int, int]] = []  # (key, amount, window) to undo on refusal
        try:
            if plan.slot:
                if not await store.acquire(plan.slot, plan.slot_limit):
                    raise _busy(client)
                slot_taken = True
            for key, limit, window, tokens, what in plan.counters:
                amount = estimate if tokens else 1
                took = await store.take(key, amount, limit, window)
                if not took.allowed:
                    raise _over(client, limit, what, took.retry_after)
                taken.append((key, amount, window))
        except ClientRateLimited:
            for key, amount, window in taken:
                await store.add(key, -amount, window)
            if slot_taken:
                await store.release(plan.slot)
            raise
        return (plan, estimate, slot_taken)

    async def settle(self, admission: Admission, tokens: int | None) -> None:
        """The request ended: free its slot and put its real token count in place of the
        estimate. `tokens` is what the upstream reported; None when it reported nothing
        (the estimate stands) and 0 when nothing was served (the estimate is refunded)."""
        plan, estimate, slot = admission
        correction = 0 if tokens is None else tokens - estimate
        local = plan.local
        if local is not None:
            if slot and plan.slot_cell is not None:  # release_cell, inline
                plan.slot_cell[0] -= 1
            if correction:
                local.add_cells(plan.cells, correction, local.clock())
            return
        if slot:
            await self.store.release(plan.slot)
        if correction:
            for key, window in plan.token_keys:
                await self.store.add(key, correction, window)

    async def view(self, client: Client) -> dict[str, Any]:
        """Each configured limit with what is used and left in its current window."""
        now = self.clock()
        out: dict[str, Any] = {}
        for name, limit, key, window in (
            ("rpm", client.rpm, ":rpm", MINUTE),
            ("tpm", client.tpm, ":tpm", MINUTE),
            ("daily-tokens", client.daily_tokens, ":day", DAY),
        ):
            if limit is not None:
                used = await self.store.used(client.ref + key, window)
                out[name] = {
                    "limit": limit,
                    "used": used,
                    "remaining": max(0, limit - used),
                    "resets_in_seconds": math.ceil(window_of(now, window)[1]),
                }
        if client.max_concurrent is not None:
            in_use = await self.store.in_use(client.ref + ":conc")
            out["max-concurrent"] = {
                "limit": client.max_concurrent,
                "used": in_use,
                "remaining": max(0, client.max_concurrent - in_use),
            }
        return out


def _busy(client: Client) -> ClientRateLimited:
    return ClientRateLimited(
        f"Client '{client.name}' already has {client.max_concurrent} requests in flight "
        "(max-concurrent).",
        retry_after=1,
    )


def _over(client: Client, limit: int, what: str, retry_after: float) -> ClientRateLimited:
    return ClientRateLimited(
        f"Client '{client.name}' is over its limit of {limit} {what}.",
        retry_after=max(1, math.ceil(retry_after)),
    )
