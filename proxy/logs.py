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

import asyncio
import io
import logging
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy.clients.keys import Client
from proxy.metrics import Attempt
from proxy.redact import REDACTOR

redact = REDACTOR.redact

ACCESS_LOGGER = "keyrail.access"
access_logger = logging.getLogger(ACCESS_LOGGER)
#: Set by `configure`: JSON lines want each record's fields as a dict, text lines do not.
_json_lines = False
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
    dialect: str = ""  # the client's chat dialect (chat, messages, responses), if any
    host: str = ""  # the upstream address that answered, when the driver has several
    hosts_failed: str = ""  # the addresses tried before it that did not answer
    #: the named client (an `api-keys` mapping) whose key the request carried; None for a
    #: plain key or no key
    client: Client | None = None


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


_tokens: dict[str, str] = {}
_tokens_generation = -1


def _token(text: str) -> str:
    """`_value(redact(text))`, remembered: an access line's path and model repeat, and each
    costs a redaction and a regex. Forgotten when the redactor learns new secrets."""
    global _tokens_generation
    if _tokens_generation != REDACTOR.generation:
        _tokens.clear()
        _tokens_generation = REDACTOR.generation
    token = _tokens.get(text)
    if token is None:
        token = _value(redact(text))
        if len(_tokens) < 1024 and len(text) <= 256:  # bounded, whatever clients send
            _tokens[text] = token
    return token


def _line(pairs: Iterable[tuple[str, object]]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in pairs)


#: `keyrail serve`'s stderr handler (set by `configure`): the access line goes straight to it.
_sink: _BufferedHandler | None = None


def _direct_sink() -> _BufferedHandler | None:
    """`_sink`, when it is the only place the access line would reach through `logging`
    (nobody added a handler or a filter on the way), so writing to it directly is the same.
    A `LogRecord` through `Logger.info` costs more than the rest of the line put together."""
    sink = _sink
    if sink is None or sink.filters or sink.level > logging.INFO:
        return None
    logger: logging.Logger | None = access_logger
    while logger is not None and logger.parent is not None:  # up to the root, exclusive
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        logger = logger.parent
    root = logging.root  # what getLogger() returns, without the call
    if root.filters or len(root.handlers) != 1 or root.handlers[0] is not sink:
        return None
    return sink


def log_request(rec: RequestRecord) -> None:
    """The access line: one per client request. Under `keyrail serve` it is formatted off the
    request's path, with the next ones (64 at a time, at the quarter-second flush, or before
    any other line); elsewhere (tests, embedding) through `logging` at once."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    sink = _direct_sink()
    if sink is not None:
        sink.defer_access(rec)
        return
    line, fields = access_line(rec)
    access_logger.info(line, extra={"fields": fields})


def access_line(rec: RequestRecord) -> tuple[str, dict[str, Any] | None]:
    """The access line's text, and its fields when lines are JSON."""
    total = rec.prompt_tokens + rec.completion_tokens
    ttft = "-" if rec.ttft_ms is None else f"{rec.ttft_ms:.1f}"
    # Ids, numbers and provider names are keyrail's own: formatted directly. What a client or
    # an upstream chose (path, model, error) is redacted here (the record factory leaves the
    # access line alone, to redact three short strings instead of the whole line) and quoted
    # by _value if needed.
    line = (
        f"request_id={rec.request_id} method={rec.method} path={_token(rec.path)} "
        f"model={_token(rec.model)} provider={rec.provider or '-'} "
        f"credential={rec.credential_id or '-'} status={rec.status} "
        f"upstream_status={rec.upstream_status} retries={rec.retries} "
        f"latency_ms={rec.latency_ms:.1f} ttft_ms={ttft} prompt_tokens={rec.prompt_tokens} "
        f"completion_tokens={rec.completion_tokens} total_tokens={total}"
    )
    if rec.dialect:
        line += f" dialect={rec.dialect}"
    if rec.host:
        line += f" upstream_host={_value(rec.host)}"
    if rec.hosts_failed:
        line += f" hosts_failed={_value(rec.hosts_failed)}"
    client = rec.client
    if client is not None:
        line += f" client={_token(client.name)}"
    error = redact(rec.error) if rec.error else ""
    if error:
        line += f" error={_value(error)}"
    fields = None
    if _json_lines:
        fields = {
            "request_id": rec.request_id, "method": rec.method, "path": rec.path,
            "model": rec.model, "provider": rec.provider, "credential": rec.credential_id,
            "status": rec.status, "upstream_status": rec.upstream_status,
            "retries": rec.retries, "latency_ms": round(rec.latency_ms, 1),
            "ttft_ms": None if rec.ttft_ms is None else round(rec.ttft_ms, 1),
            "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
            "total_tokens": total, "dialect": rec.dialect or None,
        }  # fmt: skip
        if rec.host:
            fields["upstream_host"] = rec.host
        if rec.hosts_failed:
            fields["hosts_failed"] = rec.hosts_failed
        if client is not None:
            fields["client"] = client.name
        if error:
            fields["error"] = error
        fields["path"], fields["model"] = redact(rec.path), redact(rec.model)
    return line, fields


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
        extra = getattr(record, "fields", None)
        fields = extra if isinstance(extra, dict) else None
        return self.render(record.created, record.levelname, record.name, fields, record)

    def render(
        self,
        created: float,
        level: str,
        name: str,
        fields: dict[str, Any] | None,
        record: logging.LogRecord | None = None,
    ) -> str:
        """The line for these parts; `record` (when there is one) gives message and traceback."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created * 1000) % 1000:03d}Z",
            "level": level,
            "logger": name,
        }
        if fields is not None:
            for key, value in fields.items():
                out[key] = REDACTOR.redact(value) if isinstance(value, str) else value
        else:
            out["message"] = record.getMessage() if record is not None else ""
        if record is not None:
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
        if record.name == ACCESS_LOGGER:
            return record  # log_request redacted the fields that can hold a secret
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


class _TextFormatter(logging.Formatter):
    """TEXT_FORMAT with the time rendered once per second, not once per line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = (
                second,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)),
            )
        return self._stamp + _MILLISECONDS[int(created * 1000) % 1000]


#: ",000" to ",999": a lookup costs less than formatting the milliseconds of every line
_MILLISECONDS = tuple(f",{ms:03d}" for ms in range(1000))


class _BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr through a 64 KiB buffer: a line costs no system call of its own. WARNING and
    above are flushed at once; the rest by `flush_ctx` every quarter second, and at exit."""

    def __init__(self) -> None:
        stream: Any
        try:
            raw = io.FileIO(sys.stderr.fileno(), "w", closefd=False)
        except (AttributeError, OSError, ValueError):  # stderr replaced (pytest captures it)
            stream = sys.stderr
        else:
            buffered = io.BufferedWriter(raw, 64 * 1024)
            stream = io.TextIOWrapper(buffered, encoding="utf-8", errors="backslashreplace")
        super().__init__(stream)
        #: access records waiting to be formatted, with the time they were logged (a deque:
        #: appends and pops stay whole if another thread logs meanwhile)
        self._access: deque[tuple[float, RequestRecord]] = deque()

    def defer_access(self, rec: RequestRecord) -> None:
        """Take an access record now, write its line with the next ones (order is kept)."""
        self._access.append((time.time(), rec))
        if len(self._access) >= 64:  # a batch: warm caches, and no long pause at a flush
            self._write_access()

    def _write_access(self) -> None:
        access = self._access
        lines = []
        while access:
            created, rec = access.popleft()
            line, fields = access_line(rec)
            lines.append(self.format_info(ACCESS_LOGGER, line, fields, created))
        if not lines:
            return
        try:
            self.stream.write("".join(lines))  # one write for the batch
        except (OSError, ValueError):  # stderr closed or gone: a log line never fails a request
            return

    def flush(self) -> None:
        self._write_access()
        super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        self._write_access()  # earlier access lines first: lines stay in time order
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def format_info(
        self, name: str, message: str, fields: dict[str, Any] | None, created: float
    ) -> str:
        """An INFO line as `emit` would write it, without building a `LogRecord`."""
        formatter = self.formatter
        if isinstance(formatter, _TextFormatter):
            return f"{formatter.stamp(created)} INFO {name} {message}\n"
        if isinstance(formatter, JsonFormatter):
            return formatter.render(created, "INFO", name, fields) + "\n"
        return message + "\n"


async def flush_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context: buffered log lines reach stderr within a quarter second."""
    task = asyncio.create_task(_flush_every(0.25))
    yield
    task.cancel()
    _flush_all()


async def _flush_every(seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        _flush_all()


def _flush_all() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure(log_format: str, debug: bool, secrets: Iterable[str] = ()) -> None:
    """`keyrail serve`'s logging: stderr, text or JSON lines, with these secrets redacted.

    Tuned for a line per request: no thread/process lookups or caller search per record, the
    time rendered once a second, and a buffered stream (see `_BufferedHandler`)."""
    global _json_lines, _sink
    _json_lines = log_format == "json"
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # documented switch: skip finding the caller of every record
    handler = _BufferedHandler()
    handler.setFormatter(JsonFormatter() if _json_lines else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _sink = handler
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    install_redaction(secrets)
