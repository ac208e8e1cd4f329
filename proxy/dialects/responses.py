"""OpenAI Responses (`/v1/responses`) ⇄ the neutral model, for upstreams without it.

Owns, for the Responses dialect on a translated path: decoding a request (`instructions`;
`input` as a string or items: messages of any role, `function_call`, `function_call_output`,
`reasoning` with `encrypted_content` kept opaque; function tools, other tool types dropped and
logged, as Codex sends `web_search` and namespaces on every request; `tool_choice`;
`reasoning.effort`; `max_output_tokens`), the stream (`response.created`, `.in_progress`, per
item `output_item.added` … `.done` with content parts, `output_text.delta` / `.done`,
`function_call_arguments.delta` / `.done`, `reasoning_summary_part` / `_text` events, and
`response.completed` with usage, `response.incomplete` at the output limit, or
`response.failed`; every event with its `sequence_number`), the non-streamed `response`, and
the OpenAI error body.
Does not own: the passthrough to an upstream that serves Responses itself (bridge.py decides).

`previous_response_id` cannot be honoured on a translated path (keyrail keeps no responses):
it is a 400 saying to send the whole conversation in `input` (Codex does, with `store: false`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.dialects import neutral as n
from proxy.dialects.assembler import Codec, StreamEncoder
from proxy.dialects.chat import image_from_url
from proxy.errors import InvalidRequest, ProxyError

log = logging.getLogger("keyrail.dialects")
_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
_TEXT_KINDS = ("input_text", "output_text", "text", "summary_text")

# -- requests ---------------------------------------------------------------------------------


def _content(content: Any) -> list[n.Part]:
    if isinstance(content, str):
        return [n.Text(content)] if content else []
    parts: list[n.Part] = []
    for c in content if isinstance(content, list) else ():
        if not isinstance(c, Mapping):
            continue
        if c.get("type") in _TEXT_KINDS and isinstance(c.get("text"), str):
            parts.append(n.Text(c["text"]))
        elif c.get("type") == "input_image":
            url = c.get("image_url")
            if isinstance(url, str):
                parts.append(image_from_url(url))
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return "".join(p.text for p in _content(output) if isinstance(p, n.Text))


def decode_request(body: dict[str, Any]) -> n.Request:
    if body.get("previous_response_id"):
        raise InvalidRequest(
            "previous_response_id is not supported for this model: keyrail translates it for an "
            "upstream without a Responses API and keeps no stored responses. Send the whole "
            "conversation in 'input' (and 'store': false).",
            param="previous_response_id",
        )
    req = n.Request(model=str(body.get("model") or ""), stream=body.get("stream") is True)
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        req.system.append(body["instructions"])
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidRequest("'input' must be a string or an array of items.", param="input")

    def add(role: Any, part: n.Part) -> None:
        if req.messages and req.messages[-1].role == role:
            req.messages[-1].parts.append(part)
        else:
            req.messages.append(n.Message(role, [part]))

    for item in items:
        if not isinstance(item, Mapping):
            raise InvalidRequest("Each input item must be an object.", param="input")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            parts = _content(item.get("content"))
            if role in ("system", "developer"):
                req.system.append("".join(p.text for p in parts if isinstance(p, n.Text)))
            elif role in ("user", "assistant"):
                for part in parts:
                    add(role, part)
            else:
                raise InvalidRequest(f"Unknown input message role: {role!r}.", param="input")
        elif kind == "function_call":
            call = n.ToolCall(
                str(item.get("call_id") or item.get("id") or ""),
                str(item.get("name") or ""),
                str(item.get("arguments") or "{}"),
            )
            add("assistant", call)
        elif kind == "function_call_output":
            add(
                "user",
                n.ToolResult(str(item.get("call_id") or ""), _output_text(item.get("output"))),
            )
        elif kind == "reasoning":
            summary = item.get("summary")
            text = "".join(
                str(s.get("text") or "") for s in summary or () if isinstance(s, Mapping)
            )
            opaque = item.get("encrypted_content")
            add("assistant", n.Reasoning(text, opaque=opaque if isinstance(opaque, str) else ""))
        # item_reference and built-in tool call items have no neutral form: skipped
    dropped = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, Mapping):
            continue
        if tool.get("type") != "function":
            dropped.append(str(tool.get("type")))
            continue
        params = tool.get("parameters")
        req.tools.append(
            n.Tool(
                str(tool.get("name") or ""),
                str(tool.get("description") or ""),
                dict(params) if isinstance(params, Mapping) else {},
            )
        )
    if dropped:  # what the upstream cannot run; the rest of the request still works
        log.info("dropped tools the upstream cannot run: %s", ", ".join(dropped))
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        req.tool_choice = n.ToolChoice(choice)
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        req.tool_choice = n.ToolChoice("tool", str(choice.get("name") or ""))
    if isinstance(body.get("parallel_tool_calls"), bool):
        req.parallel_tool_calls = body["parallel_tool_calls"]
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool):
        req.max_tokens = limit
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(req, key, float(value))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
        req.reasoning = n.ReasoningControl(
            enabled=effort != "none",
            effort=effort if effort in _EFFORTS else None,
            summary=bool(reasoning.get("summary")),
        )
    if isinstance(body.get("user"), str):
        req.user = body["user"]
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        req.metadata = {str(k): str(v) for k, v in metadata.items()}
    return req


# -- answers ----------------------------------------------------------------------------------


def usage_body(u: n.UsageUpdate) -> dict[str, Any]:
    prompt, output = u.input_tokens or 0, u.output_tokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": prompt + output,
    }


def _response(rid: str, created: int, model: str, status: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }


def _message_item(iid: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status else []
    return {"id": iid, "type": "message", "status": status or "in_progress",
            "role": "assistant", "content": content}  # fmt: skip


def _reasoning_item(iid: str, text: str, opaque: str, done: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"id": iid, "type": "reasoning", "summary": []}
    if done and text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    if done and opaque:
        item["encrypted_content"] = opaque
    return item


def _call_item(iid: str, call_id: str, name: str, arguments: str, done: bool) -> dict[str, Any]:
    return {"id": iid, "type": "function_call", "status": "completed" if done else "in_progress",
            "call_id": call_id, "name": name, "arguments": arguments}  # fmt: skip


def _finish_status(finish: n.Finish | None) -> tuple[str, dict[str, Any] | None]:
    if finish is not None and finish.reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish is not None and finish.reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class ResponsesEncoder(StreamEncoder):
    """Neutral events → the Responses stream, `sequence_number` counting from 0."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "resp_" + secrets.token_hex(16)
        self.created = int(time.time())
        self.usage = n.UsageUpdate()
        self.finish: n.Finish | None = None
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self._started = False
        self._kind = ""  # the open item's type: message | reasoning | function_call
        self._item_id = ""
        self._text: list[str] = []
        self._opaque = ""
        self._call: tuple[int, str, str] = (-1, "", "")  # neutral index, call id, name

    def _emit(self, kind: str, data: dict[str, Any]) -> bytes:
        data["type"] = kind
        data["sequence_number"] = self.seq
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        self._started = True
        r = _response(self.id, self.created, self.model, "in_progress")
        return self._emit("response.created", {"response": r}) + self._emit(
            "response.in_progress", {"response": r}
        )

    @property
    def _index(self) -> int:
        return len(self.output)

    def _open(self, kind: str, item: dict[str, Any]) -> bytes:
        out = self._close()
        if not self._started:
            out = self._start() + out
        self._kind, self._item_id, self._text, self._opaque = kind, item["id"], [], ""
        out += self._emit("response.output_item.added", {"output_index": self._index, "item": item})
        where = {"item_id": self._item_id, "output_index": self._index}
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._emit("response.content_part.added", {**where, "content_index": 0,
                                                              "part": part})  # fmt: skip
        return out

    def _close(self) -> bytes:
        kind = self._kind
        if not kind:
            return b""
        where = {"item_id": self._item_id, "output_index": self._index}
        text = "".join(self._text)
        out = b""
        if kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            done = {**where, "content_index": 0, "text": text, "logprobs": []}
            out += self._emit("response.output_text.done", done)
            out += self._emit("response.content_part.done", {**where, "content_index": 0,
                                                             "part": part})  # fmt: skip
            item = _message_item(self._item_id, text, "completed")
        elif kind == "reasoning":
            if self._text:
                part = {"type": "summary_text", "text": text}
                out += self._emit("response.reasoning_summary_text.done",
                                  {**where, "summary_index": 0, "text": text})  # fmt: skip
                out += self._emit("response.reasoning_summary_part.done",
                                  {**where, "summary_index": 0, "part": part})  # fmt: skip
            item = _reasoning_item(self._item_id, text, self._opaque, True)
        else:
            _, call_id, name = self._call
            out += self._emit("response.function_call_arguments.done",
                              {**where, "arguments": text})  # fmt: skip
            item = _call_item(self._item_id, call_id, name, text, True)
        out += self._emit("response.output_item.done", {"output_index": self._index,
                                                        "item": item})  # fmt: skip
        self.output.append(item)
        self._kind = ""
        return out

    def event(self, event: n.Event) -> bytes:
        if isinstance(event, n.TextDelta):
            out = b""
            if self._kind != "message":
                iid = "msg_" + secrets.token_hex(12)
                out = self._open("message", _message_item(iid, "", ""))
            self._text.append(event.text)
            return out + self._emit("response.output_text.delta", {
                "item_id": self._item_id, "output_index": self._index, "content_index": 0,
                "delta": event.text, "logprobs": []})  # fmt: skip
        if isinstance(event, n.ReasoningDelta):
            return self._reasoning(event)
        if isinstance(event, n.ToolCallStart):
            iid = "fc_" + secrets.token_hex(12)
            out = self._open("function_call",
                             _call_item(iid, event.id, event.name, "", False))  # fmt: skip
            self._call = (event.index, event.id, event.name)
            return out
        if isinstance(event, n.ToolCallDelta):
            if self._kind != "function_call" or self._call[0] != event.index:
                return b""  # a fragment of a call already closed: cannot be placed (rare)
            self._text.append(event.arguments)
            return self._emit("response.function_call_arguments.delta", {
                "item_id": self._item_id, "output_index": self._index,
                "delta": event.arguments})  # fmt: skip
        if isinstance(event, n.ToolCallEnd):
            if self._kind == "function_call" and self._call[0] == event.index:
                return self._close()
            return b""
        return self.note(event)  # usage and finish: said by the closing events

    def _reasoning(self, event: n.ReasoningDelta) -> bytes:
        out = b""
        if self._kind != "reasoning" or self._opaque:
            iid = "rs_" + secrets.token_hex(12)
            out = self._open("reasoning", _reasoning_item(iid, "", "", False))
        where = {"item_id": self._item_id, "output_index": self._index, "summary_index": 0}
        if event.text:
            if not self._text:
                part = {"type": "summary_text", "text": ""}
                out += self._emit("response.reasoning_summary_part.added", {**where, "part": part})
            self._text.append(event.text)
            delta = {**where, "delta": event.text}
            out += self._emit("response.reasoning_summary_text.delta", delta)
        if event.opaque or event.signature:
            # Kept opaque for the client to send back: the upstream's encrypted reasoning,
            # or Anthropic's signature over the thinking text.
            self._opaque = event.opaque or event.signature
            out += self._close()
        return out

    def _final(self, status: str) -> dict[str, Any]:
        r = _response(self.id, self.created, self.model, status)
        r["output"] = self.output
        r["usage"] = usage_body(self.usage)
        return r

    def end(self) -> bytes:
        out = self._close() if self._started else self._start()
        status, details = _finish_status(self.finish)
        r = self._final(status)
        r["incomplete_details"] = details
        return out + self._emit(f"response.{status}", {"response": r})

    def fail(self, error: ProxyError) -> bytes:
        out = self._close() if self._started else self._start()
        r = self._final("failed")
        r["error"] = {"code": error.code or "server_error", "message": error.message}
        return out + self._emit("response.failed", {"response": r})


def render(c: n.Completion, model: str) -> bytes:
    output: list[dict[str, Any]] = []
    for b in c.blocks:
        if b.kind == "text":
            output.append(_message_item("msg_" + secrets.token_hex(12), b.text, "completed"))
        elif b.kind == "reasoning":
            output.append(_reasoning_item("rs_" + secrets.token_hex(12), b.text,
                                          b.opaque or b.signature, True))  # fmt: skip
        else:
            output.append(
                _call_item("fc_" + secrets.token_hex(12), b.id, b.name, b.text or "{}", True)
            )
    status, details = _finish_status(c.finish)
    r = _response("resp_" + secrets.token_hex(16), int(time.time()), model, status)
    r["output"], r["usage"], r["incomplete_details"] = output, usage_body(c.usage), details
    return orjson.dumps(r)


class ResponsesCodec(Codec):
    name = "responses"

    def decode_request(self, body: dict[str, Any]) -> n.Request:
        return decode_request(body)

    def encoder(self, model: str, request: n.Request) -> StreamEncoder:
        return ResponsesEncoder(model)

    def render(self, completion: n.Completion, model: str, request: n.Request) -> bytes:
        return render(completion, model)

    def stream_error(self, error: ProxyError) -> bytes:
        """`response.failed` for a passthrough stream that broke after its first byte: a
        Responses client reads its stream's end there. The upstream's own response id and
        sequence numbers are not tracked on the passthrough path (that would parse every
        event), so the event names a response of its own and carries no sequence number."""
        r = _response("resp_" + secrets.token_hex(16), int(time.time()), "", "failed")
        r["error"] = {"code": error.code or "server_error", "message": error.message}
        payload = orjson.dumps({"type": "response.failed", "response": r})
        return b"event: response.failed\ndata: " + payload + b"\n\n"

    def error(self, error: ProxyError) -> tuple[int, bytes]:
        return error.status, error.body()


CODEC = ResponsesCodec()
