"""The AWS event-stream binary framing Kiro answers with: an incremental decoder and an encoder.

Owns: the frame layout (prelude with total and header lengths, prelude CRC32, header block,
payload, message CRC32; all big-endian, CRC-32/ISO-HDLC as `zlib.crc32`), the ten header value
types, size limits, and `Decoder`, which takes bytes cut anywhere and returns whole messages,
checking both CRCs. `encode` builds frames (the fake upstream in the tests speaks through it).
Does not own: what the JSON payloads mean (response.py).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

#: Largest frame accepted (the strictest reference allows 16 MiB).
MAX_FRAME = 16 * 1024 * 1024
_PRELUDE = 12
_MIN_FRAME = 16

HeaderValue = bool | int | bytes | str | uuid.UUID


class FrameError(ValueError):
    """The bytes are not a valid event-stream: bad CRC, impossible length, bad header."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded frame: its headers (name → value) and raw payload."""

    headers: Mapping[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str:
        """A header as text ("" when absent)."""
        value = self.headers.get(name)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return "" if value is None else str(value)


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class Decoder:
    """Feed bytes as they arrive; get back every message completed by them.

    A bad frame after good ones in the same bytes: the good ones are returned, and the error is
    kept in `error` and raised by the next `feed` or `end`.
    """

    __slots__ = ("_buf", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self.error is not None:
            raise self.error
        self._buf += data
        messages: list[Message] = []
        start = 0
        try:
            while (frame := self._frame(start)) is not None:
                messages.append(frame[0])
                start += frame[1]
        except FrameError as exc:
            if not messages:
                raise
            self.error = exc
        if start:
            del self._buf[:start]
        return messages

    def end(self) -> None:
        """The stream ended: raise if it ended on a bad frame or inside one."""
        if self.error is not None:
            raise self.error
        if self._buf:
            raise FrameError(f"event stream ended inside a frame ({len(self._buf)} bytes)")

    def _frame(self, start: int) -> tuple[Message, int] | None:
        """The message at `start` and its length, or None until all its bytes are here."""
        buf = self._buf
        if len(buf) - start < _PRELUDE:
            return None
        total, headers_len, prelude_crc = struct.unpack_from(">III", buf, start)
        if _crc(bytes(buf[start : start + 8])) != prelude_crc:
            raise FrameError("event-stream prelude CRC mismatch")
        if not _MIN_FRAME <= total <= MAX_FRAME or headers_len > total - _MIN_FRAME:
            raise FrameError(f"event-stream frame of impossible size {total}/{headers_len}")
        if len(buf) - start < total:
            return None
        frame = bytes(buf[start : start + total])
        (message_crc,) = struct.unpack_from(">I", frame, total - 4)
        if _crc(frame[: total - 4]) != message_crc:
            raise FrameError("event-stream message CRC mismatch")
        headers = _parse_headers(frame[_PRELUDE : _PRELUDE + headers_len])
        return Message(headers, frame[_PRELUDE + headers_len : total - 4]), total


_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _parse_headers(block: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    try:
        while pos < len(block):
            name_len = block[pos]
            if name_len == 0:
                raise FrameError("event-stream header with an empty name")
            name = block[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = block[pos]
            pos += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = struct.unpack_from(fmt, block, pos)
                pos += struct.calcsize(fmt)
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", block, pos)
                raw = block[pos + 2 : pos + 2 + length]
                if len(raw) != length:
                    raise FrameError("event-stream header value runs past its block")
                value = raw.decode("utf-8") if kind == 7 else raw
                pos += 2 + length
            elif kind == 9:
                raw = block[pos : pos + 16]
                if len(raw) != 16:
                    raise FrameError("event-stream header value runs past its block")
                value = uuid.UUID(bytes=raw)
                pos += 16
            else:
                raise FrameError(f"event-stream header type {kind} is unknown")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"event-stream header block is malformed: {exc}") from None
    return headers


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode("utf-8")
    head = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return head + bytes([0 if value else 1])
    if isinstance(value, int):
        return head + b"\x04" + struct.pack(">i", value)
    if isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    if isinstance(value, str):
        data, kind = value.encode("utf-8"), b"\x07"
    else:
        data, kind = value, b"\x06"
    return head + kind + struct.pack(">H", len(data)) + data


def encode(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One frame. Strings are type 7, bytes type 6, ints type 4 (int32), bools 0/1, UUIDs 9."""
    block = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = _PRELUDE + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    head = prelude + struct.pack(">I", _crc(prelude)) + block + payload
    return head + struct.pack(">I", _crc(head))


def event(event_type: str, payload: bytes) -> bytes:
    """A normal event frame with the three headers Kiro sends."""
    return encode(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    """A modelled-error frame (`:message-type` exception)."""
    return encode(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )
