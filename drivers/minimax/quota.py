"""MiniMax Coding Plan quota: reading the `remains` answer, and what each credential has left.

Owns: parsing `GET /v1/api/openplatform/coding_plan/remains` (protocols/minimax.md M4) into
`Quota`s (one per window), and the driver's memory of them: whether a credential is spent for
a model and until when (from the last reading, or from a 2056 answer). Does not own: the HTTP
call (driver.py), when readings happen, how they show in metrics and the cooling of a spent
credential (keyrail's quota watcher, proxy/quota.py, through `Driver.quota`).

A quirk the field names hide (MrRayBob/openusage, docs/providers/minimax.md): the plan's
`current_interval_usage_count` is what REMAINS in the window, not what was used; explicit
`current_interval_remaining_count` / `…_remains_count` win when present. `end_time` (epoch
ms) is when the window resets, else now + `remains_time` (ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A 2056 with no reading to say when the window ends: cool this long (about when keyrail's
#: quota watcher reads again), then look again.
UNKNOWN_WINDOW_WAIT = 300.0


@dataclass(frozen=True, slots=True)
class Quota:
    model: str
    limit: int
    remaining: int
    resets_at: float | None  # epoch seconds

    @property
    def used(self) -> int:
        return max(self.limit - self.remaining, 0)

    @property
    def spent(self) -> bool:
        return self.limit > 0 and self.remaining <= 0


def _number(entry: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = entry.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def parse_remains(data: Any, now: float) -> list[Quota]:
    """The plan's windows, one per `model_remains` entry. Raises ValueError for anything else."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    base = data.get("base_resp")
    if isinstance(base, dict) and base.get("status_code") not in (0, None):
        raise ValueError(f"MiniMax error {base.get('status_code')}: {base.get('status_msg')}")
    entries = data.get("model_remains")
    if not isinstance(entries, list):
        raise ValueError("no model_remains in the answer")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        limit = _number(entry, "current_interval_total_count") or 0
        remaining = _number(
            entry, "current_interval_remaining_count", "current_interval_remains_count",
            "current_interval_usage_count",
        )  # fmt: skip
        if remaining is None:
            continue
        end = _number(entry, "end_time")
        left = _number(entry, "remains_time")
        resets_at = end / 1000.0 if end else (now + left / 1000.0 if left else None)
        out.append(Quota(str(entry.get("model_name") or ""), limit, remaining, resets_at))
    return out


@dataclass(slots=True)
class _Reading:
    at: float
    quotas: list[Quota]
    spent_until: float = 0.0  # after a 2056: the credential is spent until then


class QuotaBook:
    """The driver's memory of each credential's windows (its own last `quota` reading), and
    of windows a 2056 said were spent. keyrail's quota watcher does the reading and shows
    it (proxy/quota.py); this only answers "until when" in the request path."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._readings: dict[str, _Reading] = {}

    def record(self, credential_id: str, quotas: list[Quota]) -> None:
        old = self._readings.get(credential_id)
        kept = old.spent_until if old is not None else 0.0
        self._readings[credential_id] = _Reading(self.clock(), quotas, spent_until=kept)

    def window_spent(self, credential_id: str, model: str) -> float:
        """A 2056 was answered: seconds until the window ends (known or assumed), remembered."""
        now = self.clock()
        reset = self._reset_of(credential_id, model, now)
        seconds = reset - now if reset is not None else UNKNOWN_WINDOW_WAIT
        reading = self._readings.setdefault(credential_id, _Reading(0.0, []))
        reading.spent_until = max(reading.spent_until, now + seconds)
        return seconds

    def spent_for(self, credential_id: str, model: str) -> float | None:
        """Seconds until the credential may be used again for `model`; None when it may now."""
        reading = self._readings.get(credential_id)
        if reading is None:
            return None
        now = self.clock()
        until = reading.spent_until
        quota = _for_model(reading.quotas, model)
        if quota is not None and quota.spent and quota.resets_at:
            until = max(until, quota.resets_at)  # a reading knows better than a guess
        return until - now if until > now else None

    def _reset_of(self, credential_id: str, model: str, now: float) -> float | None:
        reading = self._readings.get(credential_id)
        if reading is None:
            return None
        quota = _for_model(reading.quotas, model)
        if quota is not None and quota.resets_at and quota.resets_at > now:
            return quota.resets_at
        return None


def tightest(quotas: list[Quota]) -> Quota | None:
    """The window with the least left (what metrics show for the credential)."""
    return min(quotas, key=_left_ratio, default=None)


def _for_model(quotas: list[Quota], model: str) -> Quota | None:
    """The window that applies to `model`: its own entry, else the tightest one."""
    for q in quotas:
        if q.model and q.model.lower() == model.lower():
            return q
    return tightest(quotas)


def _left_ratio(q: Quota) -> float:
    return q.remaining / q.limit if q.limit else float(q.remaining > 0)
