"""Logs: the access line of every request, failed upstream attempts, formats, and redaction.

Owns: `RequestRecord` (what one client request did) and its access line (`keyrail.access`,
INFO), the line for each failed upstream attempt (`keyrail.upstream`, WARNING), the text and
JSON-lines formats (`logging.format`), and installing the redactor (redact.py) on every log
record of the process, whoever logs it. Does not own: metrics (metrics.py), or what counts
as a secret (redact.py).

Lines are `key=value` pairs, so a burst is one grep away:
`grep -E 'provider=NAME .*upstream_status=(401|403|429)'`. Health probes are not logged.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.metrics import Attempt
from proxy.redact import REDACTOR

access_logger = logging.getLogger("keyrail.access")
upstream_logger = logging.getLogger("keyrail.upstream")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


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


_PLAIN = re.compile(r"[\w./:@+-]+")


def _value(v: object) -> str:
    """A value as one token: bare when plain, else JSON-quoted (no spaces, no forged lines)."""
    if type(v) is int:
        return str(v)
    if v is None or v == "":
        return "-"
    if type(v) is float:
        return f"{v:.1f}"
    text = str(v)
    return text if _PLAIN.fullmatch(text) else orjson.dumps(text).decode()


def _line(pairs: Iterable[tuple[str, object]]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in pairs)


def log_request(rec: RequestRecord) -> None:
    """The access line: one per client request."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    pairs = [
        ("request_id", rec.request_id), ("method", rec.method), ("path", rec.path),
        ("model", rec.model), ("provider", rec.provider), ("credential", rec.credential_id),
        ("status", rec.status), ("upstream_status", rec.upstream_status),
        ("retries", rec.retries), ("latency_ms", rec.latency_ms), ("ttft_ms", rec.ttft_ms),
        ("prompt_tokens", rec.prompt_tokens), ("completion_tokens", rec.completion_tokens),
        ("total_tokens", rec.prompt_tokens + rec.completion_tokens),
    ]  # fmt: skip
    if rec.error:
        pairs.append(("error", rec.error))
    access_logger.info("%s", _line(pairs), extra={"fields": dict(pairs)})


def log_failed_attempt(request_id: str, a: Attempt) -> None:
    """One line per upstream attempt that failed, even when failover then succeeded."""
    if not upstream_logger.isEnabledFor(logging.WARNING):
        return
    pairs = [
        ("request_id", request_id), ("provider", a.provider), ("credential", a.credential_id),
        ("upstream_status", a.status), ("latency_ms", a.latency * 1000), ("error", a.error),
    ]  # fmt: skip
    upstream_logger.warning("attempt failed %s", _line(pairs), extra={"fields": dict(pairs)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the record's fields or message."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                out[key] = REDACTOR.redact(value) if isinstance(value, str) else value
        else:
            out["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = REDACTOR.redact(self.formatException(record.exc_info))
        if record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out).decode()


class _RedactingFactory:
    """The log record factory: renders each record's message and redacts it (and any
    traceback) at creation, so every handler and formatter sees only the clean text."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._traceback = logging.Formatter()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record  # a bad format string: logging reports it when the record is emitted
        record.msg, record.args = REDACTOR.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = REDACTOR.redact(self._traceback.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = REDACTOR.redact(record.stack_info)
        return record


def install_redaction(secrets: Iterable[str] = ()) -> None:
    """Register secrets, and redact every log record of the process from now on (once)."""
    REDACTOR.add(secrets)
    if not isinstance(logging.getLogRecordFactory(), _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(logging.getLogRecordFactory()))


def configure(log_format: str, debug: bool, secrets: Iterable[str] = ()) -> None:
    """`keyrail serve`'s logging: stderr, text or JSON lines, with these secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    install_redaction(secrets)
