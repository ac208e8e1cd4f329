"""Numbers out of samples: exact percentiles and one summary row per (scenario, target).

Owns: nearest-rank percentiles over every sample (no histograms, no sampling), and `Row`,
the summary the tables, plots and target checks are made from.
Does not own: collecting samples (loadgen.py), printing (report.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Row:
    """One target in one scenario. Times in ms, CPU in µs, memory in MiB."""

    scenario: str
    target: str
    requests: int
    errors: int
    rps: float
    p50: float | None
    p90: float | None
    p99: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    gap_p50: float | None
    gap_p99: float | None
    events: int
    cpu_us_per_req: float | None
    cpu_us_per_event: float | None
    req_per_cpu_s: float | None
    peak_rss_mib: float
    added_p50: float | None = None  # vs direct, same scenario
    added_ttft_p50: float | None = None
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    #: CPU µs per request (per event for streams) of each round's slice, in round order:
    #: targets load one after the other in a round, so round i of two targets is a fair pair
    cpu_per_round: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        return data


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def summarize(
    scenario: str,
    target: str,
    latency: list[float],
    ttft: list[float],
    gaps: list[float],
    events: int,
    errors: int,
    wall: float,
    cpu_ns: int,
    rss_kib: int,
    error_kinds: dict[str, int],
    cpu_per_round: list[float] | None = None,
) -> Row:
    lat, tt, gp = sorted(latency), sorted(ttft), sorted(gaps)
    n = len(lat)
    cpu_us = cpu_ns / 1000
    return Row(
        scenario=scenario,
        target=target,
        requests=n,
        errors=errors,
        rps=n / wall if wall > 0 else 0.0,
        p50=ms(percentile(lat, 50)),
        p90=ms(percentile(lat, 90)),
        p99=ms(percentile(lat, 99)),
        ttft_p50=ms(percentile(tt, 50)),
        ttft_p99=ms(percentile(tt, 99)),
        gap_p50=ms(percentile(gp, 50)),
        gap_p99=ms(percentile(gp, 99)),
        events=events,
        cpu_us_per_req=cpu_us / n if n else None,
        cpu_us_per_event=cpu_us / events if events else None,
        req_per_cpu_s=n / (cpu_ns / 1e9) if cpu_ns > 0 else None,
        peak_rss_mib=rss_kib / 1024,
        error_kinds=error_kinds,
        latencies_ms=[x * 1000 for x in lat],
        cpu_per_round=cpu_per_round or [],
    )


def add_baseline(rows: list[Row]) -> None:
    """Fill `added_*` of each row from the `direct` row of the same scenario."""
    base = {r.scenario: r for r in rows if r.target == "direct"}
    for r in rows:
        d = base.get(r.scenario)
        if d is None:
            continue
        if r.p50 is not None and d.p50 is not None:
            r.added_p50 = r.p50 - d.p50
        if r.ttft_p50 is not None and d.ttft_p50 is not None:
            r.added_ttft_p50 = r.ttft_p50 - d.ttft_p50
