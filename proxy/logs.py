"""Logs: the access line of every request, and redaction of secrets from every log record.

Owns: `RequestRecord` (what one client request did), the access line format, and the
redaction filter installed on the root logger. Does not own: metrics (metrics.py).

FIRST VERSION: text line only; JSON lines and full redaction land with the metrics issue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

access_logger = logging.getLogger("keyrail.access")


@dataclass(slots=True)
class RequestRecord:
    """What one client request did; filled in by the handler, logged once at its end."""

    request_id: str
    method: str
    path: str
    model: str = ""
    provider: str = ""
    credential_id: str = ""
    status: int = 0
    upstream_status: int = 0
    retries: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


def log_request(rec: RequestRecord) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    ttft = "-" if rec.ttft_ms is None else f"{rec.ttft_ms:.1f}"
    access_logger.info(
        "%s %s %s model=%s provider=%s credential=%s status=%d upstream=%d retries=%d "
        "latency_ms=%.1f ttft_ms=%s tokens=%d/%d%s",
        rec.request_id, rec.method, rec.path, rec.model or "-", rec.provider or "-",
        rec.credential_id or "-", rec.status, rec.upstream_status, rec.retries, rec.latency_ms,
        ttft, rec.prompt_tokens, rec.completion_tokens,
        f" error={rec.error!r}" if rec.error else "",
    )  # fmt: skip
