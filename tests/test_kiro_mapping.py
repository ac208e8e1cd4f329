"""neutral ↔ Kiro mapping: the request body (from a chat body through the chat codec), model
names, and Kiro events → neutral events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from drivers.kiro import eventstream, models
from drivers.kiro import request as kiro_request
from drivers.kiro.eventstream import Decoder
from drivers.kiro.response import KiroException, Translator
from proxy.dialects import chat
from proxy.dialects import neutral as n


class request:  # the chat body decoded as keyrail does, then mapped
    TOOL_RESULTS_ONLY = kiro_request.TOOL_RESULTS_ONLY

    @staticmethod
    def build(body: dict[str, Any], model_id: str, **kwargs: Any) -> dict[str, Any]:
        return kiro_request.build(chat.decode_request(body), model_id, **kwargs)


PNG = "iVBORw0KGgo="


def test_multi_turn_system_images_and_tools() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Rule one."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            {"role": "user", "content": "first"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    },
                    {"id": "t2", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "two"}]},
            {"role": "tool", "tool_call_id": "gone", "content": "orphan"},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "and now?"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "x" * 20000}}],
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": True,  # not a number: dropped
    }
    out = request.build(body, "claude-sonnet-4.5", profile_arn="arn:x")
    state = out["conversationState"]
    history = state["history"]
    assert [next(iter(h)) for h in history] == [
        "userInputMessage", "assistantResponseMessage", "userInputMessage",
        "assistantResponseMessage",
    ]  # fmt: skip
    first = history[0]["userInputMessage"]
    assert first["content"] == "first\n\nlook"
    assert first["images"] == [{"format": "png", "source": {"bytes": PNG}}]
    assert first["modelId"] == "claude-sonnet-4.5" and first["origin"] == "AI_EDITOR"
    uses = history[1]["assistantResponseMessage"]
    assert uses["content"] == "."
    assert uses["toolUses"] == [
        {"toolUseId": "t1", "name": "f", "input": {"a": 1}},
        {"toolUseId": "t2", "name": "g", "input": {"value": [1]}},
    ]
    results = history[2]["userInputMessage"]
    assert results["content"] == request.TOOL_RESULTS_ONLY
    assert results["userInputMessageContext"]["toolResults"] == [
        {"toolUseId": "t1", "content": [{"text": "one"}], "status": "success"},
        {"toolUseId": "t2", "content": [{"text": "two"}], "status": "success"},
    ]
    current = state["currentMessage"]["userInputMessage"]
    assert current["content"] == (
        "--- SYSTEM PROMPT ---\nRule one.\nRule two.\n--- END SYSTEM PROMPT ---\n\nand now?"
    )
    spec = current["userInputMessageContext"]["tools"][0]["toolSpecification"]
    assert len(spec["description"].encode()) == 10237
    assert spec["inputSchema"] == {"json": {"type": "object", "properties": {}}}
    assert out["profileArn"] == "arn:x"
    assert out["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.5}


def test_last_message_from_assistant_or_tool() -> None:
    out = request.build(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "auto",
    )
    assert out["conversationState"]["currentMessage"]["userInputMessage"]["content"] == "Continue"
    assert "profileArn" not in out and "inferenceConfig" not in out
    out = request.build(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "tool_calls": [
                    {"id": "t", "function": {"name": "f", "arguments": "not json"}}]},
                {"role": "tool", "tool_call_id": "t", "content": "r"},
            ]
        },
        "auto",
    )  # fmt: skip
    state = out["conversationState"]
    assert state["history"][1]["assistantResponseMessage"]["toolUses"][0]["input"] == {
        "raw": "not json"
    }
    current = state["currentMessage"]["userInputMessage"]
    assert current["userInputMessageContext"]["toolResults"][0]["toolUseId"] == "t"


@pytest.mark.parametrize(
    ("name", "upstream"),
    [
        ("kiro-claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4.5"),
        ("amazonq-claude-opus-4-6", "claude-opus-4.6"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("kiro-auto", "auto"),
        ("claude-haiku-9", "claude-haiku-4.5"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"),
        ("deepseek-3.2", "deepseek-3.2"),
    ],
)
def test_model_names(name: str, upstream: str) -> None:
    assert models.upstream_id(name) == upstream


def test_exposed_names_round_trip() -> None:
    assert {models.upstream_id(m) for m in models.EXPOSED} == set(models.UPSTREAM)


def _feed(translator: Translator, *frames: bytes) -> list[n.Event]:
    out = []
    for message in Decoder().feed(b"".join(frames)):
        out.extend(translator.feed(message))
    return out


def test_wrapped_payloads_full_object_inputs_and_reported_usage() -> None:
    t = Translator("m", context_window=200_000, request_chars=400)
    wrapped = orjson.dumps({"assistantResponseEvent": {"content": "hi"}})
    whole = orjson.dumps({"toolUseId": "x", "name": "f", "input": {"k": "v"}, "stop": True})
    metadata = orjson.dumps(
        {"tokenUsage": {"outputTokens": 5, "uncachedInputTokens": 10, "cacheReadInputTokens": 2}}
    )
    chunks = _feed(
        t,
        eventstream.event("assistantResponseEvent", wrapped),
        eventstream.event("toolUseEvent", whole),
        eventstream.event("reasoningContentEvent", b'{"text":"hmm"}'),
        eventstream.event("messageMetadataEvent", metadata),
        eventstream.event("someFutureEvent", b"{}"),
    )
    assert chunks == [
        n.TextDelta("hi"),
        n.ToolCallStart(0, "x", "f"),
        n.ToolCallDelta(0, '{"k":"v"}'),
        n.ToolCallEnd(0),
        n.ReasoningDelta("hmm"),
    ]
    assert t.last() == [n.UsageUpdate(12, 5, cache_read=2), n.Finish("tool_calls")]


def test_reasoning_signature_and_redacted_content() -> None:
    t = Translator("m", context_window=200_000, request_chars=400)
    events = _feed(
        t,
        eventstream.event("reasoningContentEvent", b'{"text":"a"}'),
        eventstream.event("reasoningContentEvent", b'{"signature":"sig"}'),
        eventstream.event("reasoningContentEvent", b'{"redactedContent":"b64"}'),
    )
    assert events == [
        n.ReasoningDelta("a"),
        n.ReasoningDelta(signature="sig"),
        n.ReasoningDelta(opaque="b64"),
    ]


def test_estimates_without_reports_and_errors() -> None:
    t = Translator("m", context_window=200_000, request_chars=400)
    _feed(t, eventstream.event("assistantResponseEvent", b'{"content":"12345678"}'))
    assert t.usage() == n.UsageUpdate(100, 2, estimated=True)
    with pytest.raises(KiroException) as err:
        _feed(t, eventstream.exception("InternalServerException", b'{"message":"boom"}'))
    assert err.value.kind == "InternalServerException" and "boom" in str(err.value)
    error = eventstream.encode(
        {":message-type": "error", ":error-code": "E1", ":error-message": "bad"}, b""
    )
    with pytest.raises(KiroException, match="E1: bad"):
        _feed(t, error)
