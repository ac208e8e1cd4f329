"""Client limits: admit a request against its client's limits, and settle its tokens after.

Owns: which counters a client has in the limit store (`<ref>:rpm`, `:tpm`, `:day`, `:conc`),
the order they are taken in and undone on a refusal, the token estimate made before the call
and its correction once the upstream has reported usage, the `ClientRateLimited` a refusal
raises, and what `/v1/metrics/clients` shows of a client's limits. Does not own: the counters
themselves (proxy/state: memory or a shared backend), or who the client is (auth.py).

    rpm            requests per calendar minute (UTC), counted when admitted
    tpm            tokens (prompt + completion) per calendar minute
    daily-tokens   tokens per UTC day, reset at 00:00 UTC
    max-concurrent requests in flight at once; the next one gets 429 with Retry-After: 1

Token limits admit a request while the window is below the limit (a request's cost is not
known before it runs) and count an estimate at once (a quarter of the body's bytes), so that
a burst of concurrent requests cannot all pass on an unspent budget; when the request ends the
estimate is replaced by what the upstream reported (or refunded when nothing was served).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from proxy.clients.keys import Client
from proxy.errors import ClientRateLimited
from proxy.state.base import Clock, LimitStore, wall_clock, window_of

MINUTE, DAY = 60, 86400
#: bytes of request body per estimated prompt token (a rough, generous rule of thumb)
BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class Admission:
    """What one admitted request took, to give back or correct when it ends."""

    client: Client
    estimate: int  # tokens counted in advance in tpm and daily-tokens
    slot: bool  # holds one of max-concurrent


class Limits:
    """Client limits over a `LimitStore`; only clients with `limited` ever reach it."""

    def __init__(self, store: LimitStore, clock: Clock = wall_clock) -> None:
        self.store = store
        self.clock = clock  # the store's clock: for when a window ends, in `view`

    async def admit(self, client: Client, body_bytes: int) -> Admission:
        """Take what this request needs from the client's limits, or raise ClientRateLimited
        (having given back whatever it took before the refusal)."""
        store, ref = self.store, client.ref
        estimate = max(1, body_bytes // BYTES_PER_TOKEN)
        slot = False
        taken: list[tuple[str, int, int]] = []  # (key, amount, window) to undo on refusal
        try:
            if client.max_concurrent is not None:
                if not await store.acquire(ref + ":conc", client.max_concurrent):
                    raise ClientRateLimited(
                        f"Client '{client.name}' already has {client.max_concurrent} requests "
                        "in flight (max-concurrent).",
                        retry_after=1,
                    )
                slot = True
            for limit, key, amount, window, what in (
                (client.rpm, ":rpm", 1, MINUTE, "requests per minute (rpm)"),
                (client.tpm, ":tpm", estimate, MINUTE, "tokens per minute (tpm)"),
                (client.daily_tokens, ":day", estimate, DAY, "tokens per day (daily-tokens)"),
            ):
                if limit is None:
                    continue
                took = await store.take(ref + key, amount, limit, window)
                if not took.allowed:
                    raise ClientRateLimited(
                        f"Client '{client.name}' is over its limit of {limit} {what}.",
                        retry_after=max(1, math.ceil(took.retry_after)),
                    )
                taken.append((ref + key, amount, window))
        except ClientRateLimited:
            for key, amount, window in taken:
                await store.add(key, -amount, window)
            if slot:
                await store.release(ref + ":conc")
            raise
        counted = client.tpm is not None or client.daily_tokens is not None
        return Admission(client, estimate if counted else 0, slot)

    async def settle(self, admission: Admission, tokens: int | None) -> None:
        """The request ended: free its slot and put its real token count in place of the
        estimate. `tokens` is what the upstream reported; None when it reported nothing
        (the estimate stands) and 0 when nothing was served (the estimate is refunded)."""
        client, store = admission.client, self.store
        if admission.slot:
            await store.release(client.ref + ":conc")
        if admission.estimate and tokens is not None:
            correction = tokens - admission.estimate
            if correction:
                if client.tpm is not None:
                    await store.add(client.ref + ":tpm", correction, MINUTE)
                if client.daily_tokens is not None:
                    await store.add(client.ref + ":day", correction, DAY)

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
