"""An OpenAI chat request → what a Cursor turn needs.

Owns: the system prompt as a blob (`{"role":"system","content":…}` JSON, id = SHA-256 of it,
`You are a helpful assistant.` when the client sends none), the conversation flattened into
the one user message Cursor reads reliably (`USER:` / `ASSISTANT:` / `TOOL_RESULT (call_id:
…)` paragraphs, tool results cut at 8000 characters, then `Current request: …`), images from
`data:` URLs, tools as MCP definitions, the deterministic conversation id, the trailing tool
results a parked turn resumes with, and `reasoning_effort` → a suffixed model id.
Does not own: protobuf bytes (messages.py), the turn itself (session.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from drivers.cursor.messages import Image, Tool
from drivers.cursor.wire import WireError, encode_value
from proxy.errors import InvalidRequest

DEFAULT_SYSTEM = "You are a helpful assistant."
TOOL_RESULT_LIMIT = 8000
_IMAGE_LIMIT = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    content: str


@dataclass(slots=True)
class TurnInput:
    system_json: bytes
    blob_id: bytes
    text: str
    conversation_id: str
    tools: list[Tool] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    #: tool results after the last assistant message: what a parked turn waits for
    tool_results: list[ToolResult] = field(default_factory=list)


def content_text(content: Any) -> str:
    """Text of an OpenAI `content`: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
        )
    return ""


def _images(content: Any) -> list[Image]:
    out: list[Image] = []
    if not isinstance(content, list):
        return out
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "image_url":
            continue
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
            raise InvalidRequest("cursor accepts images only as data: URLs", param="messages")
        head, data = url[5:].split(",", 1)
        mime = head.split(";", 1)[0] or "image/png"
        if len(data) > _IMAGE_LIMIT:
            raise InvalidRequest("image too large", param="messages")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("image data URL is not base64", param="messages") from None
        out.append(Image(str(uuid.uuid4()), mime, raw))
    return out


def _tools(body: Mapping[str, Any]) -> list[Tool]:
    out = []
    for tool in body.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            encoded = encode_value(schema)
        except WireError as exc:
            raise InvalidRequest(f"tool {fn['name']}: {exc}", param="tools") from None
        out.append(Tool(fn["name"], str(fn.get("description") or ""), encoded))
    return out


def build(body: Mapping[str, Any]) -> TurnInput:
    """Read an OpenAI chat body (already validated as a JSON object by the core)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    system: list[str] = []
    paragraphs: list[str] = []
    images: list[Image] = []
    last_user = ""
    last_user_index = -1
    for msg in messages:
        if not isinstance(msg, dict):
            raise InvalidRequest("each message must be an object", param="messages")
        role, content = msg.get("role"), msg.get("content")
        text = content_text(content)
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            paragraphs.append(f"USER: {text}")
            last_user, last_user_index = text, len(paragraphs) - 1
            images = _images(content) or images
        elif role == "assistant":
            calls = [
                f"[called {c['function'].get('name')}({c['function'].get('arguments', '')})"
                f" call_id: {c.get('id')}]"
                for c in msg.get("tool_calls") or ()
                if isinstance(c, dict) and isinstance(c.get("function"), dict)
            ]
            paragraphs.append("ASSISTANT: " + "\n".join(filter(None, [text, *calls])))
        elif role == "tool":
            result = text[:TOOL_RESULT_LIMIT]
            paragraphs.append(f"TOOL_RESULT (call_id: {msg.get('tool_call_id')}): {result}")
    system_text = "\n".join(s for s in system if s) or DEFAULT_SYSTEM
    system_json = orjson.dumps({"role": "system", "content": system_text})
    current = last_user
    earlier = paragraphs[:last_user_index] + paragraphs[last_user_index + 1 :]
    if earlier:
        text = (
            "\n\n".join(earlier)
            + "\n\nThe above is the previous conversation context including tool call results."
            "\nContinue your response based on this context.\n\nCurrent request: " + current
        )
    else:
        text = current
    first_user = next(
        (content_text(m.get("content")) for m in messages if m.get("role") == "user"), ""
    )
    return TurnInput(
        system_json=system_json,
        blob_id=hashlib.sha256(system_json).digest(),
        text=text,
        conversation_id=conversation_id(system_text, first_user),
        tools=_tools(body),
        images=images,
        tool_results=_trailing_tool_results(messages),
    )


def _trailing_tool_results(messages: Sequence[Any]) -> list[ToolResult]:
    out: list[ToolResult] = []
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "tool":
            break
        out.append(ToolResult(str(msg.get("tool_call_id") or ""), content_text(msg.get("content"))))
    return out[::-1]


def conversation_id(system_text: str, first_user: str) -> str:
    """UUID-shaped, stable for one conversation: the same system prompt and first message."""
    seed = f"cursor-conv:{system_text[:500]}:{first_user[:500]}".encode()
    return str(uuid.UUID(bytes=hashlib.sha256(seed).digest()[:16]))


EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")


def model_for_effort(model: str, effort: Any, known: Collection[str]) -> str:
    """`gpt-5.5` + effort `high` → `gpt-5.5-high` when Cursor lists that id; else `model`.

    A `-fast` speed suffix stays last (`gpt-5.5-fast` → `gpt-5.5-high-fast`)."""
    if not isinstance(effort, str) or effort not in EFFORTS or not known:
        return model
    base, fast = (model[: -len("-fast")], "-fast") if model.endswith("-fast") else (model, "")
    candidate = f"{base}-{effort}{fast}"
    return candidate if candidate in known else model
