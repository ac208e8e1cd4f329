"""The Connect streaming envelope, and Connect errors mapped onto the proxy's decisions.

Owns: the 5-byte envelope (flags, big-endian length, payload) both ways; a `Decoder` that
buffers across arbitrary chunk boundaries, gunzips frames with flag bit 0x01 (gzip, then zlib,
then raw deflate, as Cursor's clients accept) including the compressed end-of-stream (0x03),
and turns the end-of-stream JSON into success or a `ConnectError`; `ConnectError.decision()`,
the mapping of Connect codes onto `proxy.errors` classes.
Does not own: what the payloads mean (messages.py), the HTTP transports (transport.py).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.errors import (
    CredentialRejected,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.retry_hints import retry_after_seconds

COMPRESSED = 0x01
END_STREAM = 0x02
HEADER = 5
#: A frame bigger than this is refused (Cursor's messages are kilobytes; a checkpoint can be
#: large, but not this large). Also bounds a decompressed frame.
MAX_FRAME = 32 * 1024 * 1024

#: The client version Cursor's CLI sent when these notes were written; `client-version` in a
#: block overrides it when Cursor starts answering "outdated client".
CLIENT_VERSION = "cli-2026.08.11-e8db854"


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def end_of_stream(error: dict[str, Any] | None = None) -> bytes:
    """An end-of-stream envelope (what a Connect server sends last; used by fakes)."""
    return envelope(orjson.dumps({"error": error} if error else {}), END_STREAM)


class FrameError(ValueError):
    """The byte stream is not Connect framing (too large, bad compression, bad trailer)."""


@dataclass(slots=True)
class ConnectError(Exception):
    """A Connect error: from an end-of-stream trailer, a unary error body, or a reset."""

    code: str
    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def decision(self, provider: str, *, client_version_hint: str = "") -> UpstreamError:
        """The proxy's decision for this error (see docs/cursor.md, "Errors")."""
        text = f"upstream {provider}: Connect {self.code}"
        if self.message:
            text += f": {self.message[:300]}"
        lowered = self.message.lower()
        if "outdated" in lowered or "update your client" in lowered or "deprecated" in lowered:
            hint = client_version_hint or "set 'client-version' in the cursor block"
            return UpstreamUnavailable(
                f"{text} (Cursor refuses this client version; {hint})",
                status=502,
                provider=provider,
            )
        if self.code == "resource_exhausted" or any(
            marker in lowered for marker in ("rate limit", "quota", "too many")
        ):
            retry = retry_after_seconds(_metadata_headers(self.metadata), b"")
            return RateLimited(text, status=429, provider=provider, retry_after=retry)
        if self.code == "unauthenticated":
            return CredentialRejected(text, status=401, provider=provider)
        if self.code == "permission_denied":
            return CredentialRejected(text, status=403, provider=provider)
        if self.code in ("invalid_argument", "failed_precondition", "out_of_range"):
            return UpstreamRejected(text, status=400, provider=provider)
        if self.code == "unavailable":
            return UpstreamUnavailable(text, status=503, provider=provider)
        if self.code == "internal":
            return UpstreamUnavailable(text, status=500, provider=provider)
        return UpstreamUnavailable(text, status=502, provider=provider)


def _metadata_headers(metadata: dict[str, Any]) -> dict[str, str]:
    """Connect metadata (`{"retry-after": ["30"]}`) as headers for the retry-hint parser."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str | int | float):
            out[str(key)] = str(value)
    return out


def parse_error(data: bytes, *, default_code: str = "unknown") -> ConnectError:
    """A Connect error object (`{"code", "message", "details"?}`) from JSON bytes."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ConnectError(default_code, data[:200].decode("utf-8", "replace"))
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        obj = obj["error"]
    if not isinstance(obj, dict):
        return ConnectError(default_code)
    metadata = obj.get("metadata")
    return ConnectError(
        str(obj.get("code") or default_code),
        str(obj.get("message") or ""),
        metadata if isinstance(metadata, dict) else {},
    )


def decompress(data: bytes) -> bytes:
    """gzip, else zlib, else raw deflate (bounded by MAX_FRAME)."""
    for wbits in (16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, MAX_FRAME)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise FrameError("compressed frame expands past the frame limit")
        return out
    raise FrameError("compressed frame is not gzip, zlib or deflate")


def compress(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


class Decoder:
    """Feed received bytes; get message payloads. `ended` once the end-of-stream arrived."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> list[bytes]:
        """The complete message payloads `data` finishes. Raises `ConnectError` for an
        end-of-stream carrying an error, `FrameError` for bytes that are not Connect."""
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= HEADER and not self.ended:
            flags = self._buffer[0]
            size = int.from_bytes(self._buffer[1:HEADER], "big")
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes is over the limit")
            if len(self._buffer) < HEADER + size:
                break
            payload = bytes(self._buffer[HEADER : HEADER + size])
            del self._buffer[: HEADER + size]
            if flags & COMPRESSED:
                payload = decompress(payload)
            if flags & END_STREAM:
                self.ended = True
                error = _trailer_error(payload)
                if error is not None:
                    raise error
                break
            out.append(payload)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (non-zero at a stream's end means truncation)."""
        return len(self._buffer)


def _trailer_error(payload: bytes) -> ConnectError | None:
    try:
        obj = orjson.loads(payload) if payload.strip() else {}
    except orjson.JSONDecodeError:
        raise FrameError("end-of-stream trailer is not JSON") from None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        return parse_error(orjson.dumps(obj["error"]))
    return None
