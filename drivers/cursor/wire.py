"""A small protobuf wire codec: just what Cursor's agent messages need.

Owns: varints, the three wire types Cursor uses (varint, 64-bit, length-delimited; 32-bit is
skipped when read), building a message from `(field number, value)` pairs, reading one back as
a `Fields` view (first value / all values of a field number), and `google.protobuf.Value`
(JSON ⇄ protobuf) for tool schemas and tool arguments.
Does not own: what the field numbers mean (messages.py), the Connect framing (connect.py).

Hand-written rather than the `protobuf` runtime with a generated module: Cursor's schema is a
reverse-engineered snapshot of a few dozen fields, and a reader that keeps unknown fields out
of the way (and never fails on new ones) is shorter than a .proto, its generated code and a
runtime dependency.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

VARINT, I64, LEN, I32 = 0, 1, 2, 5

#: One field of a message to encode: its number and its value. An int is a varint, a bool a
#: varint 0/1, a float a double, str/bytes length-delimited; `None` leaves the field out.
Field = tuple[int, "int | bool | float | str | bytes | None"]


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def message(*fields: Field) -> bytes:
    """Serialize fields in the order given (repeat a number for a repeated field)."""
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, bool | int):
            out += varint(number << 3 | VARINT) + varint(int(value))
        elif isinstance(value, float):
            out += varint(number << 3 | I64) + struct.pack("<d", value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += varint(number << 3 | LEN) + varint(len(data)) + data
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def iterate(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """`(field number, wire type, value)` for each field; LEN values are bytes, others ints."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if kind == VARINT:
            value, pos = _read_varint(data, pos)
            yield number, kind, value
        elif kind == LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise WireError("length-delimited field runs past the end")
            yield number, kind, data[pos : pos + size]
            pos += size
        elif kind == I64:
            if pos + 8 > end:
                raise WireError("truncated 64-bit field")
            yield number, kind, int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif kind == I32:
            if pos + 4 > end:
                raise WireError("truncated 32-bit field")
            yield number, kind, int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise WireError(f"unsupported wire type {kind}")


class Fields:
    """A decoded message: values by field number, in the order they came."""

    __slots__ = ("_values",)

    def __init__(self, data: bytes) -> None:
        self._values: dict[int, list[int | bytes]] = {}
        for number, _kind, value in iterate(data):
            self._values.setdefault(number, []).append(value)

    def __contains__(self, number: int) -> bool:
        return number in self._values

    def numbers(self) -> Iterable[int]:
        return self._values.keys()

    def raw(self, number: int) -> bytes:
        """The last value of a length-delimited field (protobuf's rule), or b''."""
        values = self._values.get(number)
        value = values[-1] if values else b""
        return value if isinstance(value, bytes) else b""

    def text(self, number: int) -> str:
        return self.raw(number).decode("utf-8", "replace")

    def uint(self, number: int) -> int:
        values = self._values.get(number)
        value = values[-1] if values else 0
        return value if isinstance(value, int) else 0

    def sub(self, number: int) -> Fields:
        return Fields(self.raw(number))

    def all_raw(self, number: int) -> list[bytes]:
        return [v for v in self._values.get(number, ()) if isinstance(v, bytes)]


# -- google.protobuf.Value -----------------------------------------------------------------

_MAX_DEPTH = 64


def encode_value(value: Any, depth: int = 0) -> bytes:
    """JSON value → serialized `google.protobuf.Value`."""
    if depth > _MAX_DEPTH:
        raise WireError("JSON nested too deeply")
    if value is None:
        return message((1, 0))
    if isinstance(value, bool):
        return message((4, value))
    if isinstance(value, int | float):
        return varint(2 << 3 | I64) + struct.pack("<d", float(value))
    if isinstance(value, str):
        return message((3, value))
    if isinstance(value, list | tuple):
        items = message(*((1, encode_value(v, depth + 1)) for v in value))
        return message((5, items))
    if isinstance(value, dict):
        entries = (
            (1, message((1, str(k)), (2, encode_value(v, depth + 1)))) for k, v in value.items()
        )
        return message((6, message(*entries)))
    raise WireError(f"not a JSON value: {type(value).__name__}")


def decode_value(data: bytes, depth: int = 0) -> Any:
    """Serialized `google.protobuf.Value` → JSON value."""
    if depth > _MAX_DEPTH:
        raise WireError("Value nested too deeply")
    result: Any = None
    for number, kind, raw in iterate(data):
        if number == 1:
            result = None
        elif number == 2 and kind == I64 and isinstance(raw, int):
            number_value = struct.unpack("<d", raw.to_bytes(8, "little"))[0]
            result = int(number_value) if number_value.is_integer() else number_value
        elif number == 3 and isinstance(raw, bytes):
            result = raw.decode("utf-8", "replace")
        elif number == 4 and isinstance(raw, int):
            result = bool(raw)
        elif number == 5 and isinstance(raw, bytes):
            result = [decode_value(v, depth + 1) for v in Fields(raw).all_raw(1)]
        elif number == 6 and isinstance(raw, bytes):
            result = {}
            for entry in Fields(raw).all_raw(1):
                pair = Fields(entry)
                result[pair.text(1)] = decode_value(pair.raw(2), depth + 1)
        else:
            raise WireError(f"unexpected field {number} in a Value")
    return result
