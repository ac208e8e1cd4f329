"""ProviderMetrics on its own: windows on an injected clock, bucketed percentiles, totals."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from proxy.metrics import (
    ATTEMPTS,
    BOUNDS_MS,
    PROMETHEUS_BOUNDS_MS,
    Attempt,
    ProviderMetrics,
    bucket_of,
    percentile,
)
from proxy.scheduler import CredentialView


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def attempt(status: int = 200, latency: float = 0.1, **kw: object) -> Attempt:
    return Attempt("alpha", "openai-compatibility", "alpha/1", status, latency, **kw)


DRIVERS = {"alpha": "openai-compatibility", "idle": "kiro"}


def test_bounds_are_log_spaced_and_prometheus_bounds_are_among_them() -> None:
    ratios = [b / a for a, b in itertools.pairwise(BOUNDS_MS)]
    assert all(1.19 < r < 1.34 for r in ratios)
    assert all(b in BOUNDS_MS for b in PROMETHEUS_BOUNDS_MS)


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_fall_in_the_bucket_of_the_true_value(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(5, 1.5) for _ in range(rng.randint(1, 3000))]  # ms
    counts = [0] * (len(BOUNDS_MS) + 1)
    for v in values:
        counts[bucket_of(v)] += 1
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        true = ordered[max(1, math.ceil(q * len(values))) - 1]  # nearest rank
        estimate = percentile(counts, q)
        assert estimate is not None
        # rounding to 0.1 ms may carry the estimate onto the bucket's upper bound
        assert bucket_of(estimate - 0.05) <= bucket_of(true) <= bucket_of(estimate + 0.05)


def test_snapshot_counts_classes_rates_tokens_and_percentiles() -> None:
    clock = Clock()
    m = ProviderMetrics(window_seconds=600, clock=clock)
    for ms in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100):
        m.record(attempt(200, ms / 1000, ttft=ms / 2000, prompt_tokens=11, completion_tokens=7))
    for status in (401, 403, 429, 429, 500, 502, 0, 404):
        m.record(attempt(status, 0.005, error=f"upstream alpha answered {status}"))
    views = [
        CredentialView("alpha/1", "alpha", "ready"),
        CredentialView("alpha/2", "alpha", "cooling_down", "quota"),
        CredentialView("alpha/3", "alpha", "disabled", "unauthorized"),
    ]
    snap = m.snapshot(views, DRIVERS)
    a = snap["alpha"]
    assert a["request_count"] == 18 and a["success_count"] == 10 and a["failure_count"] == 8
    assert a["status_counts"] == {"2xx": 10, "401": 1, "403": 1, "429": 2, "5xx": 3, "other": 1}
    assert a["success_rate"] == round(10 / 18, 4) and a["error_rate"] == round(8 / 18, 4)
    assert a["rate_limited_ratio"] == round(2 / 18, 4)
    assert (a["prompt_tokens"], a["completion_tokens"], a["total_tokens"]) == (110, 70, 180)
    # 18 latencies: eight of 5 ms, then 10..100 ms; nearest-rank p50 is the 9th = 10 ms
    assert bucket_of(a["latency_p50_ms"]) == bucket_of(10)
    assert bucket_of(a["latency_p95_ms"]) == bucket_of(100)
    assert bucket_of(a["ttft_p50_ms"]) == bucket_of(25) and a["ttft_p95_ms"] <= 50
    assert a["credentials"] == {"total": 3, "ready": 1, "cooling_down": 1, "disabled": 1}
    assert a["last_error"]["status"] == 404 and a["last_seen"] == "2027-01-15T08:00:00Z"
    assert a["lifetime"]["request_count"] == 18 and a["lifetime"]["retries"] == 0
    idle = snap["idle"]  # configured, no traffic: present, with empty numbers
    assert idle["driver"] == "kiro" and idle["request_count"] == 0
    assert idle["success_rate"] == 1.0 and idle["error_rate"] == 0.0
    assert idle["latency_p50_ms"] is None and idle["last_seen"] is None
    assert idle["credentials"] == {"total": 0, "ready": 0, "cooling_down": 0, "disabled": 0}


def test_old_attempts_leave_the_window_but_stay_in_lifetime() -> None:
    clock = Clock(1_800_000_000.0)  # a multiple of the 10 s slice
    m = ProviderMetrics(window_seconds=600, clock=clock)
    m.record(attempt(429, 2.0))
    clock.now += 300
    m.record(attempt(200, 0.05))
    clock.now += 299.9  # the first attempt is 599.9 s old: still inside
    a = m.snapshot([], DRIVERS)["alpha"]
    assert a["request_count"] == 2 and a["status_counts"]["429"] == 1
    clock.now += 0.1  # 600 s old: out; the window keeps only the second attempt
    a = m.snapshot([], DRIVERS)["alpha"]
    assert a["request_count"] == 1 and a["status_counts"]["429"] == 0
    assert bucket_of(a["latency_p99_ms"]) == bucket_of(50)
    assert a["lifetime"]["request_count"] == 2 and a["lifetime"]["status_counts"]["429"] == 1
    clock.now += 300  # everything out; a slice reused later starts from zero
    assert m.snapshot([], DRIVERS)["alpha"]["request_count"] == 0
    m.record(attempt(200, 0.05))
    assert m.snapshot([], DRIVERS)["alpha"]["request_count"] == 1
    assert m.snapshot([], DRIVERS)["alpha"]["lifetime"]["request_count"] == 3


def test_window_length_follows_the_setting() -> None:
    clock = Clock(1_800_000_000.0)
    m = ProviderMetrics(window_seconds=60, clock=clock)
    m.record(attempt())
    clock.now += 59
    assert m.snapshot([], DRIVERS)["alpha"]["request_count"] == 1
    clock.now += 1
    assert m.snapshot([], DRIVERS)["alpha"]["window_seconds"] == 60
    assert m.snapshot([], DRIVERS)["alpha"]["request_count"] == 0


def test_retries_count_attempts_after_the_first_of_a_request() -> None:
    m = ProviderMetrics(clock=Clock())
    trail: list[Attempt] = []
    collecting = ATTEMPTS.set(trail)
    m.record(attempt(429))
    m.record(attempt(200))
    ATTEMPTS.reset(collecting)
    m.record(attempt(200))  # outside any request: not a retry, not in a trail
    assert [a.status for a in trail] == [429, 200]
    assert m.snapshot([], DRIVERS)["alpha"]["lifetime"]["retries"] == 1


def test_lifetime_survives_the_ring_going_round_many_times() -> None:
    """Lifetime totals count each attempt once, however often its slice was reused."""
    clock = Clock(1_800_000_000.0)
    m = ProviderMetrics(window_seconds=600, clock=clock)
    for i in range(250):  # 2,500 s: the 60-slice ring goes round four times
        m.record(attempt(429 if i % 5 == 0 else 200, 0.05))
        clock.now += 10.0
    life = m.snapshot([], DRIVERS)["alpha"]["lifetime"]
    assert life["request_count"] == 250 and life["status_counts"]["429"] == 50
    counts, _retries = m.lifetime("alpha")
    assert sum(counts.statuses) == 250 and sum(counts.latency) == 250


def test_a_new_window_length_starts_the_window_afresh_and_keeps_lifetime() -> None:
    """`metrics.window-seconds` changed by a reload: the old slices (of the old length) leave
    the window, and lifetime totals still count them."""
    clock = Clock(1_800_000_000.0)
    m = ProviderMetrics(window_seconds=600, clock=clock)
    for _ in range(3):
        m.record(attempt(200, 0.05))
    m.set_window(60)
    a = m.snapshot([], DRIVERS)["alpha"]
    assert m.window_seconds == 60 and a["request_count"] == 0
    assert a["lifetime"]["request_count"] == 3
    m.record(attempt(429, 0.05))
    clock.now += 59.0  # inside the new, 60 s window
    a = m.snapshot([], DRIVERS)["alpha"]
    assert a["request_count"] == 1 and a["status_counts"]["429"] == 1
    clock.now += 2.0  # out of it
    assert m.snapshot([], DRIVERS)["alpha"]["request_count"] == 0
    assert m.snapshot([], DRIVERS)["alpha"]["lifetime"]["request_count"] == 4
