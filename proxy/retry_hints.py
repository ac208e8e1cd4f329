"""Retry hints: how long an upstream asks us to wait, from its 429 answer.

Owns: parsing `Retry-After` (seconds or HTTP-date), `retry-after-ms`,
`x-ratelimit-reset-requests` / `-tokens` and JSON body hints into seconds.
Does not own: what is done with the number (scheduler.py caps and applies it).

FIRST VERSION: `Retry-After` seconds only; the rest lands with the scheduler issue.
"""

from __future__ import annotations

from collections.abc import Mapping


def retry_after_seconds(headers: Mapping[str, str], body: bytes = b"") -> float | None:
    """Seconds the upstream asks us to wait, or None when it gives no usable hint."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
