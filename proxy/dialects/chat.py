"""OpenAI Chat Completions (`/v1/chat/completions`) ⇄ the neutral model.

Owns, for the chat dialect: decoding a client's request into a neutral `Request`; encoding a
neutral request into a chat body (for an upstream that speaks chat, when the client does not);
encoding neutral events into `chat.completion.chunk` SSE (role chunk first, a finish chunk,
a usage chunk with `choices: []`, `data: [DONE]`) or one `chat.completion`; decoding a chat
upstream's SSE or JSON answer back into neutral events; the OpenAI error body.
Does not own: the passthrough path (a chat client and a chat upstream never come here), the
other dialects.

Reasoning: `reasoning_content` (DeepSeek, vLLM, Kiro through keyrail) carries the text;
`reasoning_details` (OpenRouter's spelling) carries signatures and opaque blocks both ways.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.dialects import neutral as n
from proxy.dialects.assembler import Codec, StreamEncoder
from proxy.driver import ByteStream
from proxy.errors import InvalidRequest, ProxyError, StreamInterrupted, classify_upstream
from proxy.sse import SSEParser, event_data

_FINISH_OUT = {"stop_sequence": "stop"}
_FINISH_IN: dict[str, n.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}

# -- requests ---------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, Mapping) and p.get("type") in ("text", "input_text", "output_text")
        )
    return ""


def _parts(content: Any) -> list[n.Part]:
    if isinstance(content, str):
        return [n.Text(content)] if content else []
    parts: list[n.Part] = []
    if isinstance(content, list):
        for p in content:
            if not isinstance(p, Mapping):
                continue
            kind = p.get("type")
            if kind in ("text", "input_text", "output_text") and isinstance(p.get("text"), str):
                parts.append(n.Text(p["text"]))
            elif kind == "image_url":
                ref = p.get("image_url")
                url = ref.get("url") if isinstance(ref, Mapping) else ref
                if isinstance(url, str):
                    parts.append(image_from_url(url))
    return parts


def image_from_url(url: str) -> n.Image:
    """A `data:` URL split into media type and base64 data; any other URL kept as a URL."""
    if url.startswith("data:"):
        meta, _, data = url[5:].partition(",")
        if ";base64" in meta:
            return n.Image(media_type=meta.split(";")[0] or "image/png", data=data)
    return n.Image(url=url)


def _reasoning_parts(message: Mapping[str, Any]) -> list[n.Part]:
    details = message.get("reasoning_details")
    if isinstance(details, list) and details:
        out: list[n.Part] = []
        for d in details:
            if not isinstance(d, Mapping):
                continue
            if d.get("type") == "reasoning.encrypted" and isinstance(d.get("data"), str):
                out.append(n.Reasoning(opaque=d["data"]))
            elif isinstance(d.get("text") or d.get("summary"), str):
                text = str(d.get("text") or d.get("summary"))
                out.append(n.Reasoning(text, signature=str(d.get("signature") or "")))
        return out
    plain = message.get("reasoning_content") or message.get("reasoning")
    return [n.Reasoning(plain)] if isinstance(plain, str) and plain else []


def _effort(value: Any) -> n.Effort | None:
    return value if value in _EFFORTS else None


def _int(body: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def decode_request(body: dict[str, Any]) -> n.Request:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array.", param="messages")
    req = n.Request(model=str(body.get("model") or ""), stream=body.get("stream") is True)
    out = req.messages

    def turn(role: Any) -> n.Message:
        if out and out[-1].role == role:
            return out[-1]
        out.append(n.Message(role))
        return out[-1]

    for m in messages:
        if not isinstance(m, Mapping):
            raise InvalidRequest("Each message must be an object.", param="messages")
        role, content = m.get("role"), m.get("content")
        if role in ("system", "developer"):
            req.system.append(_text(content))
        elif role == "user":
            turn("user").parts.extend(_parts(content))
        elif role == "tool":
            turn("user").parts.append(
                n.ToolResult(str(m.get("tool_call_id") or ""), _text(content))
            )
        elif role == "assistant":
            parts = turn("assistant").parts
            parts.extend(_reasoning_parts(m))
            parts.extend(_parts(content))
            for call in m.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    args = fn.get("arguments")
                    parts.append(
                        n.ToolCall(
                            str(call.get("id") or ""),
                            str(fn.get("name") or ""),
                            args if isinstance(args, str) else orjson.dumps(args or {}).decode(),
                        )
                    )
        else:
            raise InvalidRequest(f"Unknown message role: {role!r}.", param="messages")
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and tool.get("type", "function") == "function":
            params = fn.get("parameters")
            req.tools.append(
                n.Tool(
                    str(fn.get("name") or ""),
                    str(fn.get("description") or ""),
                    dict(params) if isinstance(params, Mapping) else {},
                )
            )
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        req.tool_choice = n.ToolChoice(choice)
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        req.tool_choice = n.ToolChoice("tool", str(choice["function"].get("name") or ""))
    if isinstance(body.get("parallel_tool_calls"), bool):
        req.parallel_tool_calls = body["parallel_tool_calls"]
    req.max_tokens = _int(body, "max_completion_tokens", "max_tokens")
    req.temperature, req.top_p = _float(body.get("temperature")), _float(body.get("top_p"))
    stop = body.get("stop")
    req.stop = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    if (effort := _effort(body.get("reasoning_effort"))) is not None:
        req.reasoning = n.ReasoningControl(effort=effort)
    if isinstance(body.get("user"), str):
        req.user = body["user"]
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        req.metadata = {str(k): str(v) for k, v in metadata.items()}
    return req


def budget_effort(budget: int) -> n.Effort:
    """A thinking budget as an effort level (the table in docs/dialects.md)."""
    if budget < 4096:
        return "low"
    return "medium" if budget < 16384 else "high"


def encode_request(req: n.Request) -> dict[str, Any]:
    """A neutral request as a chat body, for an upstream that speaks chat."""
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system_text()})
    for m in req.messages:
        if m.role == "assistant":
            messages.append(_assistant_message(m))
            continue
        content: list[dict[str, Any]] = []
        for part in m.parts:
            if isinstance(part, n.ToolResult):  # must follow the assistant's tool calls
                messages.append(
                    {"role": "tool", "tool_call_id": part.call_id, "content": part.content}
                )
            elif isinstance(part, n.Text):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, n.Image):
                content.append({"type": "image_url", "image_url": {"url": part.data_url()}})
        if content:
            only_text = all(c["type"] == "text" for c in content)
            text = "\n\n".join(c["text"] for c in content) if only_text else None
            messages.append({"role": "user", "content": text if only_text else content})
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description,
                             "parameters": t.parameters or EMPTY_SCHEMA},
            }
            for t in req.tools
        ]  # fmt: skip
    if req.tool_choice is not None:
        mode = req.tool_choice.mode
        body["tool_choice"] = (
            {"type": "function", "function": {"name": req.tool_choice.name}}
            if mode == "tool"
            else mode
        )
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = req.stop[:4]
    r = req.reasoning
    if r is not None and r.enabled and (r.effort or r.budget):
        body["reasoning_effort"] = r.effort or budget_effort(r.budget or 0)
    if req.user:
        body["user"] = req.user
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _assistant_message(m: n.Message) -> dict[str, Any]:
    text = "".join(p.text for p in m.parts if isinstance(p, n.Text))
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    thoughts = [p for p in m.parts if isinstance(p, n.Reasoning)]
    if thoughts:
        reasoning = "".join(p.text for p in thoughts)
        if reasoning:
            out["reasoning_content"] = reasoning
        if any(p.signature or p.opaque for p in thoughts):
            out["reasoning_details"] = [_detail(p, i) for i, p in enumerate(thoughts)]
    calls = [p for p in m.parts if isinstance(p, n.ToolCall)]
    if calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in calls
        ]  # fmt: skip
    elif out["content"] is None:
        out["content"] = ""
    return out


def _detail(part: n.Reasoning, index: int) -> dict[str, Any]:
    if part.opaque:
        return {"type": "reasoning.encrypted", "data": part.opaque, "index": index}
    detail: dict[str, Any] = {"type": "reasoning.text", "text": part.text, "index": index}
    if part.signature:
        detail["signature"] = part.signature
    return detail


# -- answers out ------------------------------------------------------------------------------


def usage_body(u: n.UsageUpdate) -> dict[str, Any]:
    prompt, completion = u.input_tokens or 0, u.output_tokens or 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if u.cache_read:
        usage["prompt_tokens_details"] = {"cached_tokens": u.cache_read}
    if u.cache_write:
        usage["cache_creation_input_tokens"] = u.cache_write
    if u.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": u.reasoning_tokens}
    if u.estimated:
        usage["estimated"] = True
    return usage


class ChatEncoder(StreamEncoder):
    """Neutral events → `chat.completion.chunk` SSE."""

    __slots__ = ("_head", "_prefix", "_started", "finish", "usage")

    def __init__(self, model: str) -> None:
        created = int(time.time())
        self._prefix = (
            b'data: {"id":"chatcmpl-' + secrets.token_hex(12).encode()
            + b'","object":"chat.completion.chunk","created":' + str(created).encode()
            + b',"model":' + orjson.dumps(model) + b',"choices":'
        )  # fmt: skip
        self._started = False
        self.usage = n.UsageUpdate()
        self.finish: n.Finish | None = None

    def _chunk(self, delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return self._prefix + orjson.dumps([choice]) + b"}\n\n"

    def _first(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: n.Event) -> bytes:
        if isinstance(event, n.TextDelta):
            return self._first() + self._chunk({"content": event.text})
        if isinstance(event, n.ReasoningDelta):
            delta: dict[str, Any] = {}
            if event.text:
                delta["reasoning_content"] = event.text
            if event.signature or event.opaque:
                part = n.Reasoning(event.text, event.signature, event.opaque)
                delta["reasoning_details"] = [_detail(part, 0)]
            return self._first() + self._chunk(delta) if delta else b""
        if isinstance(event, n.ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function",
                    "function": {"name": event.name, "arguments": ""}}  # fmt: skip
            return self._first() + self._chunk({"tool_calls": [call]})
        if isinstance(event, n.ToolCallDelta):
            piece = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [piece]})
        if isinstance(event, n.UsageUpdate):
            n.merge_usage(self.usage, event)
        elif isinstance(event, n.Finish):
            self.finish = event
        return b""

    def end(self) -> bytes:
        reason = self.finish.reason if self.finish else "stop"
        finish = self._chunk({}, _FINISH_OUT.get(reason, reason))
        usage = self._prefix + b'[],"usage":' + orjson.dumps(usage_body(self.usage)) + b"}\n\n"
        return self._first() + finish + usage + b"data: [DONE]\n\n"

    def fail(self, error: ProxyError) -> bytes:
        return b"data: " + error.body() + b"\n\n"


def render(c: n.Completion, model: str) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": c.text() or None}
    thoughts = [b for b in c.blocks if b.kind == "reasoning"]
    if thoughts:
        message["reasoning_content"] = "".join(b.text for b in thoughts)
        if any(b.signature or b.opaque for b in thoughts):
            message["reasoning_details"] = [
                _detail(n.Reasoning(b.text, b.signature, b.opaque), i)
                for i, b in enumerate(thoughts)
            ]
    calls = c.tool_calls()
    if calls:
        message["tool_calls"] = [
            {"id": b.id, "type": "function",
             "function": {"name": b.name, "arguments": b.text or "{}"}}
            for b in calls
        ]  # fmt: skip
    elif message["content"] is None:
        message["content"] = ""
    reason = c.finish_reason
    return orjson.dumps(
        {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message,
                 "finish_reason": _FINISH_OUT.get(reason, reason)}
            ],
            "usage": usage_body(c.usage),
        }
    )  # fmt: skip


# -- answers in (from a chat upstream) --------------------------------------------------------


def _usage_in(usage: Mapping[str, Any]) -> n.UsageUpdate:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    out_details = usage.get("completion_tokens_details")
    return n.UsageUpdate(
        input_tokens=prompt if isinstance(prompt, int) else None,
        output_tokens=completion if isinstance(completion, int) else None,
        cache_read=int((details or {}).get("cached_tokens") or 0)
        if isinstance(details, Mapping)
        else 0,
        cache_write=int(usage.get("cache_creation_input_tokens") or 0),
        reasoning_tokens=int((out_details or {}).get("reasoning_tokens") or 0)
        if isinstance(out_details, Mapping)
        else 0,
        estimated=usage.get("estimated") is True,
    )


class ChunkDecoder:
    """Chat chunks (parsed JSON) → neutral events, tracking tool-call indexes."""

    __slots__ = ("_calls", "_ended")

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # the upstream's tool-call index → ours (0, 1, ...)
        self._ended = 0  # how many calls have had their ToolCallEnd

    def feed(self, chunk: Mapping[str, Any]) -> list[n.Event]:
        out: list[n.Event] = []
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            choice = choices[0]
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(delta, Mapping):
                self._delta(delta, out)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                out.extend(n.ToolCallEnd(i) for i in range(self._ended, len(self._calls)))
                self._ended = len(self._calls)
                out.append(n.Finish(_FINISH_IN.get(reason, "stop")))
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            out.append(_usage_in(usage))
        return out

    def _delta(self, delta: Mapping[str, Any], out: list[n.Event]) -> None:
        details = delta.get("reasoning_details")
        if isinstance(details, list) and details:
            for part in _reasoning_parts(delta):
                assert isinstance(part, n.Reasoning)
                out.append(n.ReasoningDelta(part.text, part.signature, part.opaque))
        else:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(n.ReasoningDelta(reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(n.TextDelta(content))
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, Mapping):
                continue
            fn = call.get("function")
            fn = fn if isinstance(fn, Mapping) else {}
            index = call.get("index")
            if not isinstance(index, int):  # some upstreams leave it out: one call per id
                index = len(self._calls) if call.get("id") else max(len(self._calls) - 1, 0)
            position = self._calls.get(index)
            if position is None:
                position = self._calls[index] = len(self._calls)
                cid = str(call.get("id") or f"call_{secrets.token_hex(8)}")
                out.append(n.ToolCallStart(position, cid, str(fn.get("name") or "")))
            args = fn.get("arguments")
            if isinstance(args, str) and args:
                out.append(n.ToolCallDelta(position, args))
            elif isinstance(args, Mapping):
                out.append(n.ToolCallDelta(position, orjson.dumps(args).decode()))


async def decode_stream(body: ByteStream, provider: str) -> AsyncIterator[list[n.Event]]:
    """A chat upstream's SSE as neutral events, a list per network read (one async step per
    read, not per event: this is the translated path's hot loop). An in-band `{"error"}`
    raises. A stream that ends without `data: [DONE]`, or in the middle of an event, raises
    `StreamInterrupted`: the client's stream then ends with an error event, never a made-up
    end."""
    parser = SSEParser()
    decoder = ChunkDecoder()
    async for data in body:
        try:
            events = parser.feed(data)
        except StreamInterrupted as exc:  # past the parser's limits: name the provider
            message = exc.message.replace("upstream sent", f"upstream {provider} sent", 1)
            raise StreamInterrupted(message, status=502, provider=provider) from None
        out: list[n.Event] = []
        for event in events:
            payload = event_data(event)
            if payload == b"[DONE]":
                if out:
                    yield out
                return
            if payload is not None:
                out += _decode_payload(payload, decoder, provider)
        if out:
            yield out
    tail = parser.flush()
    if tail and event_data(tail) == b"[DONE]":
        return
    why = "cut its stream in the middle of an event" if tail else "ended its stream without [DONE]"
    raise StreamInterrupted(f"upstream {provider} {why}", status=502, provider=provider)


def _decode_payload(payload: bytes, decoder: ChunkDecoder, provider: str) -> list[n.Event]:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(chunk, dict):
        return []
    if "error" in chunk and not chunk.get("choices"):
        status = 502
        err = chunk.get("error")
        code = err.get("code") if isinstance(err, Mapping) else None
        if isinstance(code, int) and 400 <= code < 600:
            status = code
        raise classify_upstream(status, {}, payload, provider=provider)
    return decoder.feed(chunk)


def decode_completion(data: bytes) -> list[n.Event]:
    """A chat upstream's `chat.completion` as neutral events."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(body, dict):
        return []
    return ChunkDecoder().feed(body)


# -- the codec --------------------------------------------------------------------------------


class ChatCodec(Codec):
    name = "chat"

    def decode_request(self, body: dict[str, Any]) -> n.Request:
        return decode_request(body)

    def encoder(self, model: str, request: n.Request) -> StreamEncoder:
        return ChatEncoder(model)

    def render(self, completion: n.Completion, model: str, request: n.Request) -> bytes:
        return render(completion, model)

    def error(self, error: ProxyError) -> tuple[int, bytes]:
        return error.status, error.body()


CODEC = ChatCodec()
