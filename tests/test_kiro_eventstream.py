"""The event-stream codec: the protocol notes' test vectors, splits anywhere, strict CRCs."""

from __future__ import annotations

import random
import struct
import uuid
import zlib

import pytest

from drivers.kiro import eventstream
from drivers.kiro.eventstream import Decoder, FrameError, Message

# kiro.md §3.4, verbatim
HI = bytes.fromhex(
    "0000007c 0000005c 3bddcf78"
    "0b 3a6576656e742d74797065 07 0016 617373697374616e74526573706f6e73654576656e74"
    "0d 3a636f6e74656e742d74797065 07 0010 6170706c69636174696f6e2f6a736f6e"
    "0d 3a6d6573736167652d74797065 07 0005 6576656e74"
    "7b22636f6e74656e74223a224869227d"
    "b02babdc".replace(" ", "")
)
THROTTLED = bytes.fromhex(
    "00000090000000618e91a9b70f3a657863657074696f6e2d747970650700135468726f74746c696e67457863"
    "657074696f6e0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573"
    "736167652d74797065070009657863657074696f6e7b226d657373616765223a22546f6f206d616e79207265"
    "717565737473227dfeb6d812"
)


def test_crc_is_iso_hdlc() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_vectors_decode_exactly() -> None:
    assert len(HI) == 124
    (hi,) = Decoder().feed(HI)
    assert hi == Message(
        {
            ":event-type": "assistantResponseEvent",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        b'{"content":"Hi"}',
    )
    (throttled,) = Decoder().feed(THROTTLED)
    assert throttled.header(":message-type") == "exception"
    assert throttled.header(":exception-type") == "ThrottlingException"
    assert throttled.payload == b'{"message":"Too many requests"}'


def test_encoder_reproduces_vectors() -> None:
    assert eventstream.event("assistantResponseEvent", b'{"content":"Hi"}') == HI
    assert eventstream.exception("ThrottlingException", b'{"message":"Too many requests"}') == (
        THROTTLED
    )


def test_frames_split_anywhere_and_coalesced() -> None:
    frames = [HI, THROTTLED, eventstream.event("meteringEvent", b"{}"), HI]
    whole = b"".join(frames)
    expected = [m for f in frames for m in Decoder().feed(f)]
    rng = random.Random(1)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(whole)), rng.randint(1, 40)))
        decoder = Decoder()
        got = []
        for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True):
            got.extend(decoder.feed(whole[a:b]))
        decoder.end()
        assert got == expected
    one_byte = Decoder()
    assert [m for i in range(len(whole)) for m in one_byte.feed(whole[i : i + 1])] == expected


@pytest.mark.parametrize("offset", [0, 5, 9, 20, 110, 123])
def test_any_flipped_byte_is_an_error(offset: int) -> None:
    bad = bytearray(HI)
    bad[offset] ^= 0x01
    with pytest.raises(FrameError):
        Decoder().feed(bytes(bad))


def test_good_frames_before_a_bad_one_are_kept() -> None:
    bad = bytearray(HI)
    bad[-1] ^= 0xFF
    decoder = Decoder()
    assert len(decoder.feed(HI + bytes(bad))) == 1
    with pytest.raises(FrameError, match="message CRC"):
        decoder.feed(b"")
    with pytest.raises(FrameError):
        decoder.end()


def test_truncated_stream_and_impossible_sizes() -> None:
    decoder = Decoder()
    assert decoder.feed(HI[:50]) == []
    with pytest.raises(FrameError, match="inside a frame"):
        decoder.end()
    prelude = struct.pack(">II", 8, 0)
    with pytest.raises(FrameError, match="impossible size"):
        Decoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\0" * 8)


def test_every_header_type() -> None:
    ident = uuid.uuid4()
    frame = eventstream.encode(
        {"t": True, "f": False, "i": -7, "b": b"\x00\x01", "s": "é", "u": ident}, b"x"
    )
    extra = b"\x01n\x02\xff" + b"\x01h\x03\x01\x00" + b"\x01l\x05" + struct.pack(">q", 2**40)
    extra += b"\x01d\x08" + struct.pack(">q", 1700000000000)
    # splice the fixed-size types in by hand (the encoder only writes the common ones)
    total, headers_len = struct.unpack(">II", frame[:8])
    block = frame[12 : 12 + headers_len] + extra
    body = struct.pack(">II", total + len(extra), len(block))
    body += struct.pack(">I", zlib.crc32(body)) + block + b"x"
    body += struct.pack(">I", zlib.crc32(body))
    (m,) = Decoder().feed(body)
    assert m.headers == {
        "t": True, "f": False, "i": -7, "b": b"\x00\x01", "s": "é", "u": ident,
        "n": -1, "h": 256, "l": 2**40, "d": 1700000000000,
    }  # fmt: skip
    unknown = b"\x01z\x0a"
    body = struct.pack(">II", 16 + len(unknown), len(unknown))
    body += struct.pack(">I", zlib.crc32(body)) + unknown
    body += struct.pack(">I", zlib.crc32(body))
    with pytest.raises(FrameError, match="type 10"):
        Decoder().feed(body)
