"""Server-sent events at the byte level: splitting a byte stream into events, and formatting.

Owns: `SSEParser` (feed it chunks cut anywhere, get whole events back, line endings LF, CRLF
or CR normalised to LF), its limits (the largest event and the longest line it will hold,
past which it raises `StreamInterrupted` instead of buffering without bound), `event_data`
and `data_event`. Does not own: what an event means, relaying it (streaming.py), or which
provider sent it (streaming.py names the provider in the error).

The parser is linear in the bytes it reads: each byte is copied into the pending buffer at
most once and searched at most twice (once for the event boundary, once for the last line
break), because the search for the next boundary resumes where the previous one stopped.
A chunk that arrives with no partial event pending is searched in place, without a copy.
"""

from __future__ import annotations

from proxy.errors import StreamInterrupted

MIB = 1024 * 1024
#: Defaults no real provider comes near: the largest single events seen are base64 images
#: in image-generation streams, a few MiB each. `limits.sse-event-mb` and `limits.sse-line-mb`.
MAX_EVENT_BYTES = 16 * MIB
MAX_LINE_BYTES = 16 * MIB


def too_long(what: str, limit: int, setting: str) -> StreamInterrupted:
    """An upstream event or line longer than the parser may hold: the stream is broken, as if
    the connection had dropped (whoever knows the provider names it: see streaming.py)."""
    return StreamInterrupted(
        f"upstream sent an SSE {what} longer than {_size(limit)} ({setting})", status=502
    )


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB and n % (MIB // 16) == 0 else f"{n} bytes"


class SSEParser:
    """Feed bytes, get complete events (each ends with a blank line, normalised to LF)."""

    __slots__ = ("_buf", "_cr", "_line_start", "_scan", "max_event", "max_line")

    def __init__(self, max_event: int = MAX_EVENT_BYTES, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()  # the pending part of an event, line endings already LF
        self._scan = 0  # where the next search for a blank line starts in `_buf`
        self._line_start = 0  # where the unfinished last line of `_buf` starts
        self._cr = False  # the last chunk ended with CR: maybe the first half of a CRLF
        self.max_event = max_event
        self.max_line = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            # CRLF or lone CR: normalise this chunk only. A trailing CR may be the first half
            # of a CRLF, so it waits for the next chunk (or for `flush`).
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if buf:
            old = len(buf)
            buf += chunk
            end = buf.find(b"\n\n", self._scan)  # from the last old byte: a straddling pair
            if end < 0:
                self._held(chunk, old)
                return []
            data = bytes(buf)  # once per completed event: still linear
            buf.clear()
        else:
            data = chunk
            end = data.find(b"\n\n")
        events: list[bytes] = []
        start = 0
        size = len(data)
        while True:
            # Blank lines between events are allowed; skip them so an event never starts
            # with LF.
            while start < size and data[start] == 10:
                start += 1
            if end < start:
                end = data.find(b"\n\n", start) if start < size else -1
            if end < 0:
                break
            if end + 2 - start > self.max_event:
                raise too_long("event", self.max_event, "limits.sse-event-mb")
            events.append(data[start : end + 2])
            start = end + 2
            end = -1
        if start < size:
            buf += data[start:] if start else data
            self._scan = 0
            self._line_start = 0
            self._held(buf, 0)
        else:
            self._scan = self._line_start = 0
        return events

    def _held(self, new: bytes | bytearray, offset: int) -> None:
        """Bookkeeping after `new` (at `offset` of the buffer) stays pending: limits checked,
        and the next search starts at the last byte (its LF may begin a blank line)."""
        buf = self._buf
        size = len(buf)
        self._scan = size - 1
        newline = new.rfind(b"\n")
        if newline >= 0:
            self._line_start = offset + newline + 1
        if size > self.max_event:
            raise too_long("event", self.max_event, "limits.sse-event-mb")
        if size - self._line_start > self.max_line:
            raise too_long("line", self.max_line, "limits.sse-line-mb")

    @property
    def buffered(self) -> bool:
        """True while part of an event is waiting for the rest of its bytes."""
        return bool(self._buf) or self._cr

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (an event without its blank line)."""
        rest = bytes(self._buf).strip(b"\r\n")
        self._buf.clear()
        self._scan = self._line_start = 0
        self._cr = False
        return rest + b"\n\n" if rest else b""


def event_data(event: bytes) -> bytes | None:
    """The `data` of an event (lines joined with LF), or None for a comment/field-only event."""
    if event.startswith(b"data:") and event.count(b"\n") == 2:  # the common one-line event
        value = event[5:-2]
        return value[1:] if value.startswith(b" ") else value
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def data_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"
