"""Provider metrics: what happened per upstream provider block, over a rolling window.

Owns: recording one `Attempt` (one upstream try) cheaply on the hot path, and the snapshot
served at `/v1/metrics/providers`. Does not own: credential states (scheduler.py reports them),
logging (logs.py).

FIRST VERSION: counters only; windows, percentiles and Prometheus land with the metrics issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.scheduler import CredentialView


@dataclass(slots=True)
class Attempt:
    """One upstream attempt, recorded once it has ended (for a stream: when the stream ends)."""

    provider: str
    driver: str
    credential_id: str
    status: int  # upstream HTTP status; 0 when no answer came (connect failure, timeout)
    latency: float  # seconds from sending to the end of the answer
    ttft: float | None = None  # seconds to the first content byte, for streams
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # short, non-secret


class ProviderMetrics:
    def __init__(self, window_seconds: int = 600, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._counts: dict[str, dict[str, Any]] = {}

    def record(self, attempt: Attempt) -> None:
        c = self._counts.setdefault(
            attempt.provider,
            {"driver": attempt.driver, "request_count": 0, "success_count": 0, "last_error": ""},
        )
        c["request_count"] += 1
        if 200 <= attempt.status < 300:
            c["success_count"] += 1
        elif attempt.error:
            c["last_error"] = attempt.error

    def snapshot(
        self, credentials: Iterable[CredentialView], drivers: Mapping[str, str]
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for provider, driver in drivers.items():
            c = self._counts.get(provider, {"request_count": 0, "success_count": 0})
            out[provider] = {
                "provider": provider,
                "driver": driver,
                "window_seconds": self.window_seconds,
                "request_count": c["request_count"],
                "success_count": c["success_count"],
            }
        return out
