"""Event-order validators: does a stream follow its dialect's grammar, event by event?

Owns: `sse_events(raw)` (raw SSE bytes → (event name, parsed data) pairs), and one checker per
dialect, each raising `AssertionError` with the offending position: `check_messages` (Anthropic
Messages), `check_responses` (OpenAI Responses), `check_chat` (Chat Completions chunks). Used on
every stream keyrail's tests see, and by the conformance suite on a driver's answers.
Does not own: producing streams.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.sse import SSEParser


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    """(event name or "", data parsed as JSON, or the raw text for `[DONE]`) per data event;
    comments are skipped."""
    parser = SSEParser()
    out: list[tuple[str, Any]] = []
    for event in [*parser.feed(raw), parser.flush()]:
        name, data = "", []
        for line in event.decode().split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            text = "\n".join(data)
            out.append((name, text if text == "[DONE]" else json.loads(text)))
    return out


_DELTAS = {
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "redacted_thinking": set(),
}


def check_messages(events: list[tuple[str, Any]]) -> None:
    """Anthropic Messages: message_start, blocks (start, deltas, stop; indexes 0, 1, ...),
    message_delta, message_stop; `ping` anywhere after the start; an `error` event may end
    the stream instead."""
    names = [name for name, _ in events]
    assert events, "empty stream"
    for i, (name, data) in enumerate(events):
        assert isinstance(data, dict) and data.get("type") == name, f"#{i}: {name} vs {data}"
    assert names[0] == "message_start", f"first event is {names[0]}"
    if names[-1] == "error":
        assert "message_stop" not in names
        names, events = names[:-1], events[:-1]
    else:
        assert names[-2:] == ["message_delta", "message_stop"], f"ends with {names[-2:]}"
        assert names.count("message_delta") == 1 and names.count("message_stop") == 1
        delta = events[-2][1]
        assert delta["delta"]["stop_reason"] in (
            "end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn",
        )  # fmt: skip
        assert isinstance(delta["usage"]["output_tokens"], int)
    usage = events[0][1]["message"]["usage"]
    assert isinstance(usage["input_tokens"], int)
    open_index, open_kind, next_index = -1, "", 0
    json_parts: list[str] = []
    for i, (name, data) in enumerate(events[1:], 1):
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index < 0, f"#{i}: block {data['index']} starts inside {open_index}"
            assert data["index"] == next_index, f"#{i}: index {data['index']} != {next_index}"
            open_index, open_kind = data["index"], data["content_block"]["type"]
            assert open_kind in _DELTAS, f"#{i}: unknown block {open_kind}"
            next_index += 1
            json_parts = []
        elif name == "content_block_delta":
            assert data["index"] == open_index, (
                f"#{i}: delta for {data['index']}, open {open_index}"
            )
            kind = data["delta"]["type"]
            assert kind in _DELTAS[open_kind], f"#{i}: {kind} in a {open_kind} block"
            if kind == "input_json_delta":
                json_parts.append(data["delta"]["partial_json"])
        elif name == "content_block_stop":
            assert data["index"] == open_index, f"#{i}: stop for {data['index']}"
            if open_kind == "tool_use" and json_parts:
                json.loads("".join(json_parts))  # the pieces make one JSON value
            open_index, open_kind = -1, ""
        elif name in ("message_delta", "message_stop"):
            assert open_index < 0, f"#{i}: {name} while block {open_index} is open"
        else:
            raise AssertionError(f"#{i}: unexpected event {name}")


def check_chat(events: list[tuple[str, Any]]) -> None:
    """Chat Completions: chunks of one id, `[DONE]` last (unless an error event ends it)."""
    assert events, "empty stream"
    last = events[-1][1]
    if isinstance(last, dict) and "error" in last:
        events = events[:-1]
    else:
        assert last == "[DONE]", f"ends with {last!r}"
        events = events[:-1]
    ids = {data["id"] for _, data in events}
    assert len(ids) <= 1, f"several ids: {ids}"
    for i, (_, data) in enumerate(events):
        assert data["object"] == "chat.completion.chunk", f"#{i}: {data}"


_RESPONSE_END = ("response.completed", "response.incomplete", "response.failed")


def check_responses(events: list[tuple[str, Any]]) -> None:
    """OpenAI Responses: `sequence_number` 0, 1, ...; response.created, response.in_progress;
    items opened by output_item.added and closed by output_item.done, content parts and their
    deltas inside their item, nothing after a terminal response.completed / incomplete /
    failed (or an `error` event)."""
    assert events, "empty stream"
    for i, (name, data) in enumerate(events):
        assert data.get("type") == name, f"#{i}: event {name} carries type {data.get('type')}"
        assert data.get("sequence_number") == i, (
            f"#{i}: sequence_number {data.get('sequence_number')}"
        )
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"], names[:2]
    assert names[-1] in (*_RESPONSE_END, "error"), f"ends with {names[-1]}"
    assert sum(n in _RESPONSE_END for n in names) <= 1
    open_items: dict[int, dict[str, Any]] = {}
    open_parts: set[tuple[int, int]] = set()
    done_items: set[int] = set()
    for i, (name, data) in enumerate(events[2:-1], 2):
        if name == "response.output_item.added":
            index = data["output_index"]
            assert index not in open_items and index not in done_items, f"#{i}: item {index} again"
            assert index == len(open_items) + len(done_items), f"#{i}: item index {index}"
            open_items[index] = data["item"]
        elif name == "response.output_item.done":
            index = data["output_index"]
            assert index in open_items, f"#{i}: item {index} done but not open"
            assert not any(p[0] == index for p in open_parts), f"#{i}: a part is still open"
            assert data["item"]["id"] == open_items[index]["id"]
            del open_items[index]
            done_items.add(index)
        elif name == "response.content_part.added":
            key = (data["output_index"], data["content_index"])
            assert key[0] in open_items and key not in open_parts, f"#{i}: part {key}"
            open_parts.add(key)
        elif name == "response.content_part.done":
            key = (data["output_index"], data["content_index"])
            assert key in open_parts, f"#{i}: part {key} done but not open"
            open_parts.remove(key)
        elif name in ("response.output_text.delta", "response.output_text.done"):
            key = (data["output_index"], data["content_index"])
            assert key in open_parts, f"#{i}: text for part {key} not open"
        elif name.startswith("response.function_call_arguments."):
            assert data["output_index"] in open_items, f"#{i}: arguments outside their item"
            assert open_items[data["output_index"]]["type"] == "function_call"
        elif name.startswith("response.reasoning_summary"):
            assert data["output_index"] in open_items, f"#{i}: reasoning outside its item"
        else:
            raise AssertionError(f"#{i}: unexpected event {name}")
    if names[-1] == "response.completed":
        assert not open_items, f"items left open: {sorted(open_items)}"
        response = events[-1][1]["response"]
        assert response["status"] == "completed"
        assert isinstance(response["usage"]["input_tokens"], int)


class Recorder:
    """An httpx transport for the official SDKs that keeps every streamed body it carries, so
    that a test can check each stream the SDK read against its grammar:

        recorder = Recorder()
        client = anthropic.AsyncAnthropic(..., http_client=recorder.client())
        ...
        for raw in recorder.take(): check_messages(sse_events(raw))
    """

    def __init__(self) -> None:
        self._sinks: list[bytearray] = []

    def client(self) -> Any:
        try:  # the SDKs' HTTP client: httpx2 in their 2026 releases, httpx before
            import httpx2 as httpx
        except ImportError:
            import httpx  # type: ignore[no-redef,import-not-found,unused-ignore]

        recorder = self

        class _Body(httpx.AsyncByteStream):
            def __init__(self, inner: Any, sink: bytearray) -> None:
                self._inner, self._sink = inner, sink

            async def __aiter__(self) -> Any:
                async for chunk in self._inner:
                    self._sink.extend(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await self._inner.aclose()

        class _Transport(httpx.AsyncBaseTransport):
            def __init__(self) -> None:
                self._inner = httpx.AsyncHTTPTransport()

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                response = await self._inner.handle_async_request(request)
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    sink = bytearray()
                    recorder._sinks.append(sink)
                    response.stream = _Body(response.stream, sink)
                return response

            async def aclose(self) -> None:
                await self._inner.aclose()

        return httpx.AsyncClient(transport=_Transport(), timeout=30)

    def take(self) -> list[bytes]:
        """The streams recorded since the last call."""
        out = [bytes(s) for s in self._sinks]
        self._sinks.clear()
        return out
