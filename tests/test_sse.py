"""The SSE parser (proxy/sse.py): any split of the bytes gives the same events, whatever the
line endings; linear cost; an event or line past its limit is an error, not unbounded memory."""

from __future__ import annotations

import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import StreamInterrupted
from proxy.sse import SSEParser

# Field lines as upstreams send them: data, event, id, comments; values without line breaks.
_value = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_line = st.one_of(
    _value.map(lambda v: b"data: " + v),
    _value.map(lambda v: b"data:" + v),
    _value.map(lambda v: b"event: " + v),
    _value.map(lambda v: b"id: " + v),
    _value.map(lambda v: b":" + v),
)
_event_lines = st.lists(_line, min_size=1, max_size=4)


def _normalised(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n\n"


def _parse(data: bytes, cuts: list[int], parser: SSEParser | None = None) -> list[bytes]:
    parser = parser or SSEParser()
    got: list[bytes] = []
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True):
        got.extend(parser.feed(data[a:b]))
    tail = parser.flush()
    return [*got, tail] if tail else got


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event_lines, min_size=0, max_size=8),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    blank_lines=st.lists(st.integers(0, 2), min_size=9, max_size=9),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
)
def test_any_split_and_any_line_ending_give_the_same_events(events, ending, blank_lines, cuts):
    # Between events an upstream may send extra blank lines; they never make an event.
    wire = b"".join(
        ending * extra + (ending.join(lines) + ending + ending)
        for extra, lines in zip(blank_lines, events, strict=False)
    )
    expected = [_normalised(lines) for lines in events]
    assert _parse(wire, cuts) == expected
    assert _parse(wire, list(range(len(wire)))) == expected  # one byte at a time


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=20))
def test_arbitrary_bytes_split_anywhere_parse_the_same_as_whole(data, cuts):
    whole = _parse(data, [])
    assert _parse(data, cuts) == whole
    for event in whole:
        assert event.endswith(b"\n\n") and not event.startswith(b"\n") and b"\r" not in event


def test_an_event_past_the_limit_is_an_error_and_costs_linear_time():
    """Finding 2: one 64 MB event cost 9.4 CPU-seconds (the whole buffer re-joined and
    re-searched on every chunk) and was buffered without bound."""
    parser = SSEParser()
    piece = b"data: " + b"x" * (64 * 1024 - 6)  # no line break: one event that never ends
    chunk = b"x" * (64 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    limit = r"event longer than 16 MiB \(limits.sse-event-mb\)"
    with pytest.raises(StreamInterrupted, match=limit):
        parser.feed(piece)
        for _ in range(1024):  # 64 MiB
            parser.feed(chunk)
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    assert spent < 0.5, f"{spent:.2f} CPU-s to refuse a 64 MiB event"


def test_a_long_stream_of_cut_events_costs_linear_time():
    # Many small events, each cut in two: the scan position keeps this linear.
    parser = SSEParser()
    event = b'data: {"choices":[{"delta":{"content":"' + b"y" * 200 + b'"}}]}\n\n'
    half = len(event) // 2
    stream = event * 20_000  # ~5 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    count = 0
    for i in range(0, len(stream), len(event)):
        count += len(parser.feed(stream[i : i + half]))
        count += len(parser.feed(stream[i + half : i + len(event)]))
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    assert count == 20_000
    assert spent < 0.5


def test_line_limit_and_event_limit_are_separate():
    parser = SSEParser(max_event=1000, max_line=100)
    with pytest.raises(StreamInterrupted, match="line longer than 100 bytes"):
        parser.feed(b"data: " + b"a" * 120)
    parser = SSEParser(max_event=1000, max_line=100)
    events = parser.feed(b"data: " + b"a" * 80 + b"\ndata: " + b"b" * 80 + b"\n")
    assert events == []  # two short lines: fine, still under the event limit
    with pytest.raises(StreamInterrupted, match="event longer than 1000 bytes"):
        for _ in range(20):
            parser.feed(b"data: " + b"c" * 80 + b"\n")
    # A complete event that arrives whole is held to the limit too.
    with pytest.raises(StreamInterrupted):
        SSEParser(max_event=50, max_line=100).feed(b"data: " + b"z" * 60 + b"\n\n")


def test_a_cr_at_a_chunk_end_waits_for_its_lf():
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []
    assert parser.buffered
    assert parser.feed(b"\ndata: b\r\n\r\n") == [b"data: a\n\n", b"data: b\n\n"]
    assert not parser.buffered
