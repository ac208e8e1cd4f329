"""What the status page shows, as one JSON object: the data behind `GET /v1/status`.

Owns: putting together, for one moment, each provider block's availability (the words of
`/health`), its window figures (rates, latency and TTFT percentiles, tokens) with a series per
time slice for the charts, its credentials' states with when each cooldown or disable ends,
the last errors with their request ids, and whether management actions may be offered.
Providers are sorted worst first: down, degraded, ok; then by error rate.
Does not own: counting (metrics.py), credential state (scheduler.py), the recent-error ring
(recent.py), HTTP (this package's `setup`), or drawing (page.html). Holds no secret: credential
ids only, and error texts already masked where they were recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from proxy.metrics import ProviderMetrics
from proxy.scheduler import CredentialView, availability

_ORDER = {"down": 0, "degraded": 1, "ok": 2}
#: The window figures the page shows, copied from the provider's metrics snapshot.
_FIGURES = ("request_count", "success_rate", "error_rate", "rate_limited_ratio",
            "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "prompt_tokens",
            "completion_tokens", "total_tokens", "last_error", "last_seen")  # fmt: skip


def build(
    *,
    metrics: ProviderMetrics,
    views: Iterable[CredentialView],
    drivers: Mapping[str, str],
    recent_errors: list[dict[str, Any]],
    management: bool,
    quotas: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The page's data. `drivers` maps each configured, enabled block to its driver name;
    `quotas` is provider → credential id → quota object, where a driver reads quotas."""
    views = list(views)
    states = availability(drivers, views)
    figures = metrics.snapshot(views, drivers)
    quotas = quotas or {}
    per_provider: dict[str, list[dict[str, Any]]] = {name: [] for name in drivers}
    for view in views:
        if view.provider in per_provider:
            per_provider[view.provider].append(
                {
                    "id": view.id,
                    "state": view.state,
                    "reason": view.reason or None,
                    "until": view.until,
                    "last_error": view.last_error or None,
                    "models": list(view.cooling_models),
                    "quota": quotas.get(view.provider, {}).get(view.id),
                }
            )
    # Requests in the last minute: the newest slices covering 60 s (at least one slice).
    recent_slices = max(1, round(60 / metrics.slice_seconds))
    providers = []
    for name, driver in drivers.items():
        series = metrics.series(name)
        providers.append(
            {
                "name": name,
                "driver": driver,
                "availability": states[name],
                "requests_last_minute": sum(series["requests"][-recent_slices:]),
                **{key: figures[name][key] for key in _FIGURES},
                "series": series,
                "credentials": per_provider[name],
            }
        )
    providers.sort(key=lambda p: (_ORDER[p["availability"]], -p["error_rate"], p["name"]))
    return {
        "now": metrics.clock(),
        "window_seconds": metrics.window_seconds,
        "slice_seconds": metrics.slice_seconds,
        "providers": providers,
        "recent_errors": recent_errors,
        "management": management,
    }
