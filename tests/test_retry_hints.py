"""Retry hints: every form an upstream uses to say how long to wait becomes seconds."""

from __future__ import annotations

from email.utils import formatdate

import orjson
import pytest

from proxy.retry_hints import parse_duration, retry_after_seconds

NOW = 1_700_000_000.0


def hint(headers: dict[str, str], body: object = None) -> float | None:
    raw = b"" if body is None else orjson.dumps(body)
    return retry_after_seconds(headers, raw, wall_clock=lambda: NOW)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("0.8s", 0.8),
        ("2m59.56s", 179.56),
        ("30", 30.0),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1s junk", None),
        ("-3", None),
        ("inf", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    result = parse_duration(text)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_retry_after_seconds_any_case() -> None:
    assert hint({"Retry-After": "30"}) == 30.0
    assert hint({"retry-after": " 7 "}) == 7.0
    assert hint({"RETRY-AFTER": "0"}) == 0.0


def test_retry_after_http_date() -> None:
    assert hint({"Retry-After": formatdate(NOW + 120, usegmt=True)}) == pytest.approx(120.0)
    assert hint({"Retry-After": formatdate(NOW - 120, usegmt=True)}) == 0.0  # already past


def test_retry_after_ms_wins_over_seconds() -> None:
    assert hint({"retry-after-ms": "1500", "Retry-After": "2"}) == 1.5


def test_unusable_headers_give_none() -> None:
    assert hint({}) is None
    assert hint({"Retry-After": "later"}) is None
    assert hint({"Retry-After": "-5"}) is None
    assert hint({"retry-after-ms": "nan", "Retry-After": "3"}) == 3.0


def test_openai_ratelimit_reset_headers() -> None:
    both = {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "20ms"}
    assert hint(both) == 360.0  # either limit may be the one hit: the later reset
    spent_tokens = {
        **both,
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert hint(spent_tokens) == pytest.approx(0.02)
    assert hint({"x-ratelimit-reset-tokens": "1s"}) == 1.0
    assert hint({"Retry-After": "3", **both}) == 3.0  # the standard header comes first


def test_gemini_retry_info() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "metadata": {"quotaResetDelay": "9s"},
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.8s"},
            ],
        }
    }
    assert hint({}, body) == pytest.approx(0.8)


def test_gemini_quota_reset_delay_and_text() -> None:
    reset = {"error": {"details": [{"metadata": {"quotaResetDelay": "373.8ms"}}]}}
    assert hint({}, reset) == pytest.approx(0.3738)
    text = {"error": {"message": "Quota exceeded. Your quota will reset after 1h2m3s."}}
    assert hint({}, text) == 3723.0
    assert hint({}, [{"error": {"message": "retry after 12s"}}]) == 12.0  # list-wrapped


def test_codex_usage_limit() -> None:
    assert hint({}, {"error": {"type": "usage_limit_reached", "resets_in_seconds": 90}}) == 90.0
    assert hint({}, {"error": {"type": "usage_limit_reached", "resets_at": NOW + 45}}) == 45.0


def test_bodies_without_hints() -> None:
    assert hint({}, {"error": {"message": "Rate limit reached for requests"}}) is None
    assert hint({}, {"error": "slow down"}) is None
    assert retry_after_seconds({}, b"<html>429</html>") is None
    assert retry_after_seconds({}, b"{not json") is None
