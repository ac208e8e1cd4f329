"""Anthropic Messages (`/v1/messages`) ⇄ the neutral model.

Owns, for the Messages dialect: decoding a client's request (system as a string or blocks,
`cache_control` accepted and dropped; text, image, `tool_use`, `tool_result` with `is_error`,
`thinking` / `redacted_thinking` blocks; custom tools with `input_schema`; `tool_choice`
auto/any/tool/none; `thinking` enabled with `budget_tokens`, adaptive, disabled;
`output_config.effort`; `stop_sequences`; `metadata.user_id`), the stream grammar
(`message_start`, per block `content_block_start` / `_delta` / `_stop` with `text_delta`,
`input_json_delta`, `thinking_delta`, `signature_delta`; `message_delta` with `stop_reason` and
usage; `message_stop`; `ping` as the keepalive; `event: error` in-band), the non-streamed
`message`, the error body `{"type":"error","error":{"type","message"}}` with Anthropic's types,
and the local token estimate behind `/v1/messages/count_tokens`.
Does not own: the other dialects, deciding when to translate (bridge.py).

Usage: `message_start` carries the input tokens the upstream reported before the first output
when it did, else an estimate from the request's size (characters / 4); `message_delta` carries
the final counts, input included. Anthropic's `input_tokens` excludes cached tokens: the cache
reads and writes go in `cache_read_input_tokens` / `cache_creation_input_tokens`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.dialects import neutral as n
from proxy.dialects.assembler import Codec, StreamEncoder
from proxy.errors import InvalidRequest, NoCredential, ProxyError

log = logging.getLogger("keyrail.dialects")

STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "stop_sequence": "stop_sequence",
    "content_filter": "refusal",
}
ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")

# -- requests ---------------------------------------------------------------------------------


def _bad(message: str, param: str = "messages") -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _image(block: Mapping[str, Any]) -> n.Image | None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        return None
    if source.get("type") == "base64":
        return n.Image(str(source.get("media_type") or "image/png"), str(source.get("data") or ""))
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return n.Image(url=source["url"])
    return None


def _result_content(content: Any) -> tuple[str, list[n.Image]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[n.Image] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "image" and (image := _image(block)):
            images.append(image)
    return "\n".join(texts), images


def _parts(role: str, content: Any) -> list[n.Part]:
    if isinstance(content, str):
        return [n.Text(content)]
    if not isinstance(content, list):
        raise _bad("Each message's 'content' must be a string or an array of content blocks.")
    parts: list[n.Part] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise _bad("Each content block must be an object.")
        kind = block.get("type")
        if kind == "text":
            parts.append(n.Text(str(block.get("text") or "")))
        elif kind == "image":
            if (image := _image(block)) is not None:
                parts.append(image)
        elif kind == "tool_use":
            args = block.get("input")
            parts.append(
                n.ToolCall(
                    str(block.get("id") or ""),
                    str(block.get("name") or ""),
                    orjson.dumps(args if isinstance(args, Mapping) else {}).decode(),
                )
            )
        elif kind == "tool_result":
            text, images = _result_content(block.get("content"))
            parts.append(
                n.ToolResult(
                    str(block.get("tool_use_id") or ""), text, block.get("is_error") is True, images
                )
            )
        elif kind == "thinking":
            parts.append(
                n.Reasoning(str(block.get("thinking") or ""), str(block.get("signature") or ""))
            )
        elif kind == "redacted_thinking":
            parts.append(n.Reasoning(opaque=str(block.get("data") or "")))
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, Mapping) and source.get("type") == "text":
                parts.append(n.Text(str(source.get("data") or "")))
        # other block kinds (server tool results, search results...) have no neutral form
    return parts


def decode_request(body: dict[str, Any]) -> n.Request:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages: Field required (an array of messages).")
    req = n.Request(model=str(body.get("model") or ""), stream=body.get("stream") is True)
    system = body.get("system")
    if isinstance(system, str):
        req.system.append(system)
    elif isinstance(system, list):
        req.system.extend(
            str(b.get("text") or "")
            for b in system
            if isinstance(b, Mapping) and b.get("type") == "text"
        )
    elif system is not None:
        raise _bad("system: must be a string or an array of text blocks.", "system")
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
            raise _bad("messages: each message needs a role of 'user' or 'assistant'.")
        role = m["role"]
        parts = _parts(role, m.get("content"))
        if req.messages and req.messages[-1].role == role:
            req.messages[-1].parts.extend(parts)
        else:
            req.messages.append(n.Message(role, parts))
    dropped = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, Mapping):
            continue
        if tool.get("type") not in (None, "custom"):  # server tools the upstream cannot run
            dropped.append(str(tool.get("type")))
            continue
        schema = tool.get("input_schema")
        req.tools.append(
            n.Tool(
                str(tool.get("name") or ""),
                str(tool.get("description") or ""),
                dict(schema) if isinstance(schema, Mapping) else {},
            )
        )
    if dropped:
        log.info("dropped server tools the upstream cannot run: %s", ", ".join(dropped))
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "auto":
            req.tool_choice = n.ToolChoice("auto")
        elif kind == "any":
            req.tool_choice = n.ToolChoice("required")
        elif kind == "none":
            req.tool_choice = n.ToolChoice("none")
        elif kind == "tool":
            req.tool_choice = n.ToolChoice("tool", str(choice.get("name") or ""))
        if choice.get("disable_parallel_tool_use") is True:
            req.parallel_tool_calls = False
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        if max_tokens < 1:
            raise _bad("max_tokens: must be greater than or equal to 1", "max_tokens")
        req.max_tokens = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(req, key, float(value))
    stops = body.get("stop_sequences")
    if isinstance(stops, list):
        req.stop = [s for s in stops if isinstance(s, str)]
    req.reasoning = _reasoning(body)
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        req.metadata = {"user_id": metadata["user_id"]}
    for key in ("context_management", "container", "mcp_servers", "service_tier"):
        if key in body:
            req.extra[key] = body[key]
    return req


def _reasoning(body: Mapping[str, Any]) -> n.ReasoningControl | None:
    thinking = body.get("thinking")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, Mapping) else None
    effort = effort if effort in _EFFORTS else None
    if isinstance(thinking, Mapping):
        kind = thinking.get("type")
        if kind == "disabled":
            return n.ReasoningControl(enabled=False)
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) and not isinstance(budget, bool) else None
        if kind in ("enabled", "adaptive"):
            return n.ReasoningControl(effort=effort, budget=budget)
    if effort is not None:
        return n.ReasoningControl(effort=effort)
    return None


def effort_budget(effort: str) -> int:
    """An effort level as a thinking budget (the table in docs/dialects.md)."""
    return {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}.get(effort, 31999)


def estimate_tokens(req: n.Request) -> int:
    """The local estimate: characters / 4 over the system text, the messages and the tools."""
    chars = sum(len(s) for s in req.system)
    for m in req.messages:
        for p in m.parts:
            if isinstance(p, n.Text):
                chars += len(p.text)
            elif isinstance(p, n.ToolCall):
                chars += len(p.name) + len(p.arguments)
            elif isinstance(p, n.ToolResult):
                chars += len(p.content)
            elif isinstance(p, n.Reasoning):
                chars += len(p.text)
            elif isinstance(p, n.Image):
                chars += 6000  # ~1,500 tokens, Anthropic's figure for a ~1 megapixel image
    for t in req.tools:
        chars += len(t.name) + len(t.description) + len(orjson.dumps(t.parameters))
    return max(1, chars // 4)


# -- answers ----------------------------------------------------------------------------------


def usage_body(u: n.UsageUpdate, estimate: int = 0) -> dict[str, Any]:
    total = u.input_tokens if u.input_tokens is not None else estimate
    return {
        "input_tokens": max(0, total - u.cache_read - u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output_tokens or 0,
    }


def _event(name: bytes, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_BLOCK = {"type": "text", "text": ""}
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'


class MessagesEncoder(StreamEncoder):
    """Neutral events → the Messages stream grammar."""

    keepalive = PING

    def __init__(self, model: str, request: n.Request) -> None:
        self.model = model
        self.request = request
        self.usage = n.UsageUpdate()
        self.finish: n.Finish | None = None
        self._started = False
        self._index = -1  # the open block's index; -1: none open
        self._open = ""  # its kind: text | thinking | tool_use
        self._blocks = 0
        self._tool_block: dict[int, int] = {}  # tool-call index → block index

    def _start(self) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": "msg_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage_body(self.usage, self._estimate()), "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _estimate(self) -> int:
        return estimate_tokens(self.request) if self.usage.input_tokens is None else 0

    def _open_block(self, kind: str, block: Mapping[str, Any]) -> bytes:
        out = self._close()
        if not self._started:
            out = self._start() + out
        self._index = self._blocks
        self._blocks += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + _event(b"content_block_start", start)

    def _close(self) -> bytes:
        if self._index < 0:
            return b""
        out = _STOP + str(self._index).encode() + b"}\n\n"
        self._index, self._open = -1, ""
        return out

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        return (
            _TEXT_DELTA + str(self._index).encode() + b',"delta":' + orjson.dumps(delta) + b"}\n\n"
        )

    def event(self, event: n.Event) -> bytes:
        if isinstance(event, n.TextDelta):
            out = b"" if self._open == "text" else self._open_block("text", _TEXT_BLOCK)
            return out + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, n.ReasoningDelta):
            return self._reasoning(event)
        if isinstance(event, n.ToolCallStart):
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            out = self._open_block("tool_use", block)
            self._tool_block[event.index] = self._index
            return out
        if isinstance(event, n.ToolCallDelta):
            if self._open != "tool_use" or self._tool_block.get(event.index) != self._index:
                return b""  # a fragment of a call already closed: cannot be placed (rare)
            return self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        if isinstance(event, n.ToolCallEnd):
            if self._open == "tool_use" and self._tool_block.get(event.index) == self._index:
                return self._close()
            return b""
        return self.note(event)  # usage and finish: said by the closing events

    def _reasoning(self, event: n.ReasoningDelta) -> bytes:
        out = b""
        if event.opaque:
            out = self._open_block("redacted_thinking", {"type": "redacted_thinking",
                                                         "data": event.opaque})  # fmt: skip
            return out + self._close()
        if self._open != "thinking":
            out = self._open_block("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""})  # fmt: skip
        if event.text:
            out += self._delta({"type": "thinking_delta", "thinking": event.text})
        if event.signature:
            out += self._delta({"type": "signature_delta", "signature": event.signature})
            out += self._close()
        return out

    def end(self) -> bytes:
        out = self._close() if self._started else self._start()
        finish = self.finish or n.Finish("tool_calls" if self._tool_block else "stop")
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": STOP_REASON.get(finish.reason, "end_turn"),
                "stop_sequence": finish.stop_sequence,
            },
            "usage": usage_body(self.usage, self._estimate()),
        }
        return (
            out
            + _event(b"message_delta", delta)
            + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )

    def fail(self, error: ProxyError) -> bytes:
        return b"event: error\ndata: " + error_body(error)[1] + b"\n\n"


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def render(c: n.Completion, model: str, request: n.Request) -> bytes:
    content: list[dict[str, Any]] = []
    for b in c.blocks:
        if b.kind == "text":
            content.append({"type": "text", "text": b.text})
        elif b.kind == "reasoning":
            if b.opaque:
                content.append({"type": "redacted_thinking", "data": b.opaque})
            else:
                content.append({"type": "thinking", "thinking": b.text, "signature": b.signature})
        else:
            content.append({"type": "tool_use", "id": b.id, "name": b.name,
                            "input": _input(b.text)})  # fmt: skip
    finish = c.finish or n.Finish(c.finish_reason)
    estimate = estimate_tokens(request) if c.usage.input_tokens is None else 0
    return orjson.dumps(
        {
            "id": "msg_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": STOP_REASON.get(finish.reason, "end_turn"),
            "stop_sequence": finish.stop_sequence,
            "usage": usage_body(c.usage, estimate),
        }
    )


def error_body(error: ProxyError) -> tuple[int, bytes]:
    """Anthropic's error shape and status: a pool with nothing available is `overloaded_error`
    529 (what the SDK and Claude Code retry), a quota cooldown `rate_limit_error` 429."""
    status = error.status
    if isinstance(error, NoCredential) and status == 503:
        status = 529
    kind = ERROR_TYPE.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": error.message}}
    return status, orjson.dumps(body)


class MessagesCodec(Codec):
    name = "messages"
    keepalive = PING

    def decode_request(self, body: dict[str, Any]) -> n.Request:
        return decode_request(body)

    def encoder(self, model: str, request: n.Request) -> StreamEncoder:
        return MessagesEncoder(model, request)

    def render(self, completion: n.Completion, model: str, request: n.Request) -> bytes:
        return render(completion, model, request)

    def error(self, error: ProxyError) -> tuple[int, bytes]:
        return error_body(error)

    def stream_error(self, error: ProxyError) -> bytes:
        return b"event: error\ndata: " + error_body(error)[1] + b"\n\n"


CODEC = MessagesCodec()
