"""Cursor's wire layer: the notes' test vectors (cursor.md §8.1), envelopes split anywhere,
gzip frames, end-of-stream trailers, and google.protobuf.Value both ways."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from drivers.cursor import messages as m
from drivers.cursor.connect import (
    ConnectError,
    Decoder,
    FrameError,
    envelope,
)
from drivers.cursor.wire import Fields, WireError, decode_value, encode_value, message
from proxy.errors import CredentialRejected, RateLimited, UpstreamRejected, UpstreamUnavailable

TEXT_HI = bytes.fromhex("00000000080a060a040a024869")
THINKING_HMM = bytes.fromhex("00000000090a0722050a03686d6d")
TOKENS_5 = bytes.fromhex("00000000060a0442020805")
TURN_ENDED = bytes.fromhex("00000000040a027200")
HEARTBEAT = bytes.fromhex("00000000023a00")
MCP_ARGS = bytes.fromhex(
    "0000000041123f08015a330a0b6765745f77656174686572120f0a046369747912071a0550617269731a"
    "0663616c6c5f312a0b6765745f776561746865727a06657865632d31"
)
END_OK = bytes.fromhex("02000000027b7d")
QUOTA = b'{"error":{"code":"resource_exhausted","message":"quota"}}'
END_QUOTA = b"\x02" + len(QUOTA).to_bytes(4, "big") + QUOTA


def events(*frames: bytes) -> list[m.ServerEvent]:
    decoder = Decoder()
    out: list[m.ServerEvent] = []
    for payload in decoder.feed(b"".join(frames)):
        out.extend(m.parse_server(payload))
    return out


def test_vectors_decode() -> None:
    assert events(TEXT_HI) == [m.Text("Hi")]
    assert events(THINKING_HMM) == [m.Thinking("hmm")]
    assert events(TOKENS_5) == [m.Tokens(5)]
    assert events(TURN_ENDED) == [m.TurnEnded()]
    [exec_] = events(MCP_ARGS)
    assert isinstance(exec_, m.Exec)
    assert (exec_.exec_id, exec_.exec_key, exec_.kind) == (1, "exec-1", m.MCP)
    call = m.mcp_call(exec_.args)
    assert call == m.McpCall("get_weather", "call_1", '{"city":"Paris"}')


def test_client_heartbeat_bytes() -> None:
    assert envelope(m.heartbeat()) == HEARTBEAT


@pytest.mark.parametrize("step", [1, 2, 3, 7, 11])
def test_frames_split_at_any_boundary(step: int) -> None:
    stream = TEXT_HI + THINKING_HMM + TOKENS_5 + MCP_ARGS + TURN_ENDED + END_OK
    decoder = Decoder()
    got: list[m.ServerEvent] = []
    for i in range(0, len(stream), step):
        for payload in decoder.feed(stream[i : i + step]):
            got.extend(m.parse_server(payload))
    assert [type(e).__name__ for e in got] == ["Text", "Thinking", "Tokens", "Exec", "TurnEnded"]
    assert decoder.ended and decoder.pending == 0


def test_end_of_stream_error_is_a_connect_error() -> None:
    decoder = Decoder()
    with pytest.raises(ConnectError) as caught:
        decoder.feed(TEXT_HI + END_QUOTA)
    assert caught.value.code == "resource_exhausted"
    assert caught.value.message == "quota"


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress])
def test_compressed_frames_and_compressed_end_of_stream(compress: object) -> None:
    pack = compress  # gzip (what Cursor sends) or zlib (what other clients also accept)
    assert callable(pack)
    text = pack(bytes.fromhex("0a060a040a024869"))
    trailer = pack(QUOTA)
    data = envelope(text, 0x01) + envelope(trailer, 0x03)
    decoder = Decoder()
    with pytest.raises(ConnectError) as caught:
        for payload in decoder.feed(data):
            assert m.parse_server(payload) == [m.Text("Hi")]
    assert caught.value.code == "resource_exhausted"


def test_raw_deflate_frame() -> None:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = deflater.compress(b"\x0a\x06\x0a\x04\x0a\x02Hi") + deflater.flush()
    assert Decoder().feed(envelope(raw, 0x01)) == [bytes.fromhex("0a060a040a024869")]


def test_bad_frames_are_frame_errors() -> None:
    with pytest.raises(FrameError):
        Decoder().feed(b"\x00\xff\xff\xff\xff")  # 4 GiB announced
    with pytest.raises(FrameError):
        Decoder().feed(envelope(b"not gzip", 0x01))
    with pytest.raises(FrameError):
        Decoder().feed(envelope(b"not json", 0x02))
    bomb = gzip.compress(b"\0" * (40 * 1024 * 1024))
    with pytest.raises(FrameError):
        Decoder().feed(envelope(bomb, 0x01))


def test_corrupt_protobuf_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        m.parse_server(b"\x0a\x10abc")  # length past the end


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 3, -2.5, "x", [], [1, "a", None], {"a": {"b": [True, {"c": 1.5}]}}],
)
def test_value_round_trip(value: object) -> None:
    assert decode_value(encode_value(value)) == value


def test_value_field_numbers() -> None:
    # string_value = 3, struct_value = 6 {1 fields map entry {1 key, 2 value}}
    assert encode_value("ab") == b"\x1a\x02ab"
    encoded = encode_value({"k": "v"})
    assert encoded == message((6, message((1, message((1, "k"), (2, b"\x1a\x01v"))))))


def test_builtin_tools_are_refused_with_the_notes_fields() -> None:
    args = Fields(message((1, "/etc/passwd")))
    reply = Fields(Fields(m.refusal(7, "e", m.READ, args)).raw(2))
    assert reply.uint(1) == 7 and reply.text(15) == "e"
    rejected = reply.sub(m.READ).sub(3)  # ReadResult.rejected = 3
    assert rejected.text(1) == "/etc/passwd" and rejected.text(2) == m.REFUSAL
    shell = Fields(Fields(m.refusal(8, "", m.SHELL, Fields(message((1, "rm -rf /"))))).raw(2))
    assert 15 in shell  # exec_id is written even when empty
    assert shell.sub(m.SHELL).sub(5).text(1) == "rm -rf /"  # ShellResult.rejected = 5
    assert shell.sub(m.SHELL).sub(5).text(3) == m.REFUSAL
    grep = Fields(Fields(m.refusal(9, "g", m.GREP, Fields(b""))).raw(2))
    assert grep.sub(m.GREP).sub(2).text(1) == m.REFUSAL  # GrepResult.error = 2
    fetch = Fields(Fields(m.refusal(9, "f", m.FETCH, Fields(message((1, "http://x"))))).raw(2))
    assert fetch.sub(m.FETCH).sub(2).text(1) == "http://x"  # FetchError.url = 1
    diag = Fields(Fields(m.refusal(9, "d", m.DIAGNOSTICS, Fields(b""))).raw(2))
    assert m.DIAGNOSTICS in diag and diag.raw(m.DIAGNOSTICS) == b""


def test_replies_to_server_requests() -> None:
    blob = Fields(Fields(m.blob_result(4, b"data")).raw(3))
    assert blob.uint(1) == 4 and blob.sub(2).raw(1) == b"data"
    tool = m.Tool("get_weather", "weather", encode_value({"type": "object"}))
    ctx = Fields(Fields(m.request_context_result(2, "x", [tool])).raw(2))
    context = ctx.sub(m.REQUEST_CONTEXT).sub(1).sub(1)
    definition = Fields(context.all_raw(7)[0])
    assert definition.text(1) == "get_weather" and definition.text(4) == "proxy"
    assert decode_value(definition.raw(3)) == {"type": "object"}
    result = Fields(Fields(m.mcp_result(1, "exec-1", "sunny")).raw(2))
    assert result.text(15) == "exec-1"
    success = result.sub(m.MCP).sub(1)
    assert success.sub(1).sub(1).text(1) == "sunny"


def test_one_message_carrying_a_request_and_an_update_keeps_both() -> None:
    kv = message((1, 3), (2, message((1, b"\x01" * 32))))
    update = message((1, message((1, "tail"))))
    got = m.parse_server(message((4, kv), (1, update)))
    assert got == [m.GetBlob(3, b"\x01" * 32), m.Text("tail")]


@pytest.mark.parametrize(
    ("code", "message_text", "decision", "status"),
    [
        ("resource_exhausted", "slow down", RateLimited, 429),
        ("unknown", "Too many requests", RateLimited, 429),
        ("unauthenticated", "", CredentialRejected, 401),
        ("permission_denied", "", CredentialRejected, 403),
        ("invalid_argument", "bad model", UpstreamRejected, 400),
        ("unavailable", "", UpstreamUnavailable, 503),
        ("internal", "", UpstreamUnavailable, 500),
        ("aborted", "", UpstreamUnavailable, 502),
    ],
)
def test_connect_codes_map_to_decisions(
    code: str, message_text: str, decision: type, status: int
) -> None:
    error = ConnectError(code, message_text).decision("cursor")
    assert type(error) is decision and error.status == status


def test_retry_hint_from_metadata() -> None:
    error = ConnectError("resource_exhausted", "quota", {"retry-after": ["42"]}).decision("c")
    assert isinstance(error, RateLimited) and error.retry_after == 42


def test_outdated_client_names_the_setting() -> None:
    error = ConnectError("failed_precondition", "Outdated client, please update").decision("c")
    assert "client-version" in error.message


def test_model_list() -> None:
    thinking = message((1, "claude-opus-4-7-thinking"), (2, b""))
    plain = message((1, "gpt-5.5"))
    payload = message((1, thinking), (1, plain))
    assert m.model_list(payload) == [("claude-opus-4-7-thinking", True), ("gpt-5.5", False)]
    assert orjson.dumps(m.model_list(b"")) == b"[]"
