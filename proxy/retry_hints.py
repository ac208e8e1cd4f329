"""Retry hints: how long an upstream asks us to wait, read from its error answer.

Owns: turning an upstream's hint into seconds. Headers first, most precise first:
`retry-after-ms`, `Retry-After` (delay-seconds or HTTP-date), OpenAI's
`x-ratelimit-reset-requests` / `-tokens` ("6m0s", "1s", "20ms"); then JSON body hints:
Gemini `error.details[].retryDelay` ("0.8s"), `metadata.quotaResetDelay`, "after Ns" in
`error.message`; Codex `error.resets_in_seconds` and `error.resets_at` (unix time).
Does not own: what is done with the number (scheduler.py caps it by `max-cooldown-seconds`
and applies it), nor which statuses carry hints (drivers call this on their error answers).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

# Go-style durations as OpenAI and Google write them: "6m0s", "1h2m3s", "0.8s", "20ms".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_AFTER_TEXT = re.compile(r"after\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)


def retry_after_seconds(
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    wall_clock: Callable[[], float] = time.time,
) -> float | None:
    """Seconds the upstream asks us to wait, or None when it gives no usable hint."""
    lowered = {k.lower(): v for k, v in headers.items()}
    hint = _from_headers(lowered, wall_clock)
    if hint is None and body[:1] in (b"{", b"["):
        hint = _from_body(body, wall_clock)
    return hint


def parse_duration(text: str) -> float | None:
    """A Go-style duration ("1h2m3s", "0.8s", "20ms") or plain seconds ("30"), in seconds."""
    text = text.strip()
    plain = _number(text)
    if plain is not None:
        return plain
    total, end = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        end = match.end()
    return total if end and end == len(text) else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _from_headers(headers: Mapping[str, str], wall_clock: Callable[[], float]) -> float | None:
    if "retry-after-ms" in headers:
        ms = _number(headers["retry-after-ms"])
        if ms is not None:
            return ms / 1000
    if "retry-after" in headers:
        value = headers["retry-after"].strip()
        seconds = _number(value)
        if seconds is not None:
            return seconds
        at = _http_date(value)
        if at is not None:
            return max(0.0, at - wall_clock())
    return _ratelimit_reset(headers)


def _http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _ratelimit_reset(headers: Mapping[str, str]) -> float | None:
    """OpenAI's reset headers. When `x-ratelimit-remaining-*` says which limit is spent, use
    that one's reset; otherwise the later of the two, since either may be the one hit."""
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_duration(value) if value else None
        if seconds is not None:
            resets[kind] = seconds
    spent = [k for k in resets if headers.get(f"x-ratelimit-remaining-{k}", "").strip() == "0"]
    chosen = [resets[k] for k in spent] or list(resets.values())
    return max(chosen) if chosen else None


def _from_body(body: bytes, wall_clock: Callable[[], float]) -> float | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:  # Gemini sometimes wraps its error in a list
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    hint = _gemini(error)
    return hint if hint is not None else _codex(error, wall_clock)


def _gemini(error: dict[str, Any]) -> float | None:
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            seconds = _duration_field(detail.get("retryDelay"))
            if seconds is not None:
                return seconds
    for detail in details if isinstance(details, list) else ():
        metadata = detail.get("metadata") if isinstance(detail, dict) else None
        if isinstance(metadata, dict):
            seconds = _duration_field(metadata.get("quotaResetDelay"))
            if seconds is not None:
                return seconds
    message = error.get("message")
    if isinstance(message, str):
        match = _AFTER_TEXT.search(message)
        if match:
            return parse_duration(match.group(1))
    return None


def _codex(error: dict[str, Any], wall_clock: Callable[[], float]) -> float | None:
    seconds = error.get("resets_in_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return float(seconds)
    at = error.get("resets_at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return max(0.0, float(at) - wall_clock())
    return None


def _duration_field(value: Any) -> float | None:
    return parse_duration(value) if isinstance(value, str) else None
