"""The last errors keyrail answered, with their request ids, for the status page.

Owns: a bounded ring of the most recent error answers (status >= 400), each as the access
record says it: when, request id, method, path, model, provider, credential id (never a
secret), status and a short message. The pipeline adds to it as it logs an error's access
line; nothing is added for a success, so the request path pays only on errors.
Does not own: the access line (logs.py) or how the page shows the errors (page.html).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from proxy.logs import RequestRecord
from proxy.redact import REDACTOR

#: How many errors the page can show; older ones fall off.
KEEP = 50


class RecentErrors:
    """A ring of the last `KEEP` error answers, newest last."""

    __slots__ = ("_clock", "_ring")

    def __init__(self, clock: Any = time.time) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._clock = clock

    def add(self, rec: RequestRecord) -> None:
        self._ring.append(
            {
                "at": self._clock(),
                "request_id": rec.request_id,
                "status": rec.status,
                "method": rec.method,
                "path": rec.path,
                "model": rec.model or None,
                "provider": rec.provider or None,
                "credential_id": rec.credential_id or None,
                # The error text may quote an upstream's body: masked like every log line.
                "message": REDACTOR.redact(rec.error) if rec.error else None,
            }
        )

    def newest_first(self) -> list[dict[str, Any]]:
        return list(reversed(self._ring))
