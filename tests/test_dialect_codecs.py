"""The codecs and the grammar validators on their own: the validators reject what breaks each
dialect's event order (so the stream tests can fail), and the encoders keep it for awkward
event sequences (reasoning then redacted thinking, a tool call between texts, an empty answer,
an error mid-stream)."""

from __future__ import annotations

import pytest

from proxy.dialects import chat, messages, responses
from proxy.dialects import neutral as n
from proxy.errors import StreamInterrupted
from proxy.testing.grammar import check_chat, check_messages, check_responses, sse_events

REQUEST = n.Request(model="m", messages=[n.Message("user", [n.Text("hi")])])
AWKWARD: list[n.Event] = [
    n.ReasoningDelta("think"),
    n.ReasoningDelta(signature="sig"),
    n.ReasoningDelta(opaque="blob"),
    n.TextDelta("a"),
    n.ToolCallStart(0, "c1", "f"),
    n.ToolCallDelta(0, '{"x":'),
    n.ToolCallDelta(0, "1}"),
    n.ToolCallEnd(0),
    n.TextDelta("b"),
    n.UsageUpdate(10, 5, cache_read=4),
    n.Finish("tool_calls"),
]


def _run(encoder: object, events: list[n.Event], fail: bool = False) -> bytes:
    out = b"".join(encoder.event(e) for e in events)  # type: ignore[attr-defined]
    if fail:
        return out + encoder.fail(StreamInterrupted("boom", status=502))  # type: ignore[attr-defined]
    return out + encoder.end()  # type: ignore[attr-defined]


@pytest.mark.parametrize("events", [AWKWARD, [], [n.TextDelta("only")]])
def test_encoders_keep_their_grammar(events: list[n.Event]) -> None:
    check_messages(sse_events(_run(messages.MessagesEncoder("m", REQUEST), events)))
    check_responses(sse_events(_run(responses.ResponsesEncoder("m"), events)))
    check_chat(sse_events(_run(chat.ChatEncoder("m"), events)))


def test_errors_end_streams_in_their_dialect() -> None:
    events = sse_events(_run(messages.MessagesEncoder("m", REQUEST), AWKWARD[:5], fail=True))
    check_messages(events)
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    events = sse_events(_run(responses.ResponsesEncoder("m"), AWKWARD[:5], fail=True))
    check_responses(events)
    assert events[-1][0] == "response.failed"


def test_messages_blocks_and_usage() -> None:
    events = sse_events(_run(messages.MessagesEncoder("m", REQUEST), AWKWARD))
    starts = [d["content_block"]["type"] for e, d in events if e == "content_block_start"]
    assert starts == ["thinking", "redacted_thinking", "text", "tool_use", "text"]
    delta = next(d for e, d in events if e == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["input_tokens"] == 6 and delta["usage"]["cache_read_input_tokens"] == 4


def _messages_stream(*names_and_data: tuple[str, dict[str, object]]) -> list[tuple[str, object]]:
    return [(name, {"type": name, **data}) for name, data in names_and_data]


START = ("message_start", {"message": {"usage": {"input_tokens": 1}}})
END = [("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
       ("message_stop", {})]  # fmt: skip


@pytest.mark.parametrize(
    "stream",
    [
        [("content_block_start", {"index": 0, "content_block": {"type": "text"}}), *END],  # open
        [START, ("content_block_delta", {"index": 0, "delta": {"type": "text_delta"}}), *END],
        [START, ("content_block_start", {"index": 1, "content_block": {"type": "text"}})],
        [START, *END, ("ping", {})],
        [START, ("message_stop", {})],
    ],
)
def test_the_messages_validator_rejects_broken_orders(stream: list[tuple[str, dict]]) -> None:
    with pytest.raises(AssertionError):
        check_messages(_messages_stream(*stream))


def test_the_responses_validator_rejects_broken_orders() -> None:
    good = sse_events(_run(responses.ResponsesEncoder("m"), [n.TextDelta("x")]))
    check_responses(good)
    skipped = [(e, {**d, "sequence_number": d["sequence_number"] + (i > 3)})
               for i, (e, d) in enumerate(good)]  # fmt: skip
    with pytest.raises(AssertionError):
        check_responses(skipped)
    with pytest.raises(AssertionError):  # an item never closed
        check_responses([e for e in good if e[0] != "response.output_item.done"])
    with pytest.raises(AssertionError):  # no response.created first
        check_responses(good[1:])


def test_requests_decode_to_the_same_neutral_request() -> None:
    """One conversation in three dialects decodes to one neutral request."""
    from_chat = chat.decode_request({"model": "m", "messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "R"},
    ]})  # fmt: skip
    from_messages = messages.decode_request({"model": "m", "system": "S", "messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                      "content": "R"}]},
    ]})  # fmt: skip
    from_responses = responses.decode_request({"model": "m", "instructions": "S", "input": [
        {"role": "user", "content": "Q"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "R"},
    ]})  # fmt: skip
    assert from_chat.system == from_messages.system == from_responses.system == ["S"]
    assert from_chat.messages == from_messages.messages == from_responses.messages
