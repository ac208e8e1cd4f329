"""A client's request (keyrail's neutral request, whatever the dialect) → a Cursor turn.

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
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from drivers.cursor.messages import Image, Tool
from drivers.cursor.wire import WireError, encode_value
from proxy.dialects import neutral as n
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


def _image(image: n.Image) -> Image:
    if image.data:
        media_type, data = image.media_type or "image/png", image.data
    elif image.url.startswith("data:") and "," in image.url:
        head, data = image.url[5:].split(",", 1)
        media_type = head.split(";", 1)[0] or "image/png"
    else:
        raise InvalidRequest("cursor accepts images only as base64 data", param="messages")
    if len(data) > _IMAGE_LIMIT:
        raise InvalidRequest("image too large", param="messages")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image data is not base64", param="messages") from None
    return Image(str(uuid.uuid4()), media_type, raw)


def _tools(request: n.Request) -> list[Tool]:
    out = []
    for tool in request.tools:
        schema = tool.parameters or {"type": "object", "properties": {}}
        try:
            encoded = encode_value(schema)
        except WireError as exc:
            raise InvalidRequest(f"tool {tool.name}: {exc}", param="tools") from None
        out.append(Tool(tool.name, tool.description, encoded))
    return out


def _paragraph(message: n.Message) -> tuple[str, str, list[ToolResult]]:
    """(the paragraph, the user's own text, the tool results) of one message."""
    texts = [p.text for p in message.parts if isinstance(p, n.Text)]
    text = "".join(texts)
    if message.role == "assistant":
        calls = [
            f"[called {p.name}({p.arguments}) call_id: {p.id}]"
            for p in message.parts
            if isinstance(p, n.ToolCall)
        ]
        return "ASSISTANT: " + "\n".join(filter(None, [text, *calls])), "", []
    results = [
        ToolResult(p.call_id, p.content) for p in message.parts if isinstance(p, n.ToolResult)
    ]
    lines = [
        f"TOOL_RESULT (call_id: {r.call_id}): {r.content[:TOOL_RESULT_LIMIT]}" for r in results
    ]
    if texts:
        lines.append(f"USER: {text}")
    return "\n\n".join(lines), text if texts else "", results


def build(request: n.Request) -> TurnInput:
    """The turn for a neutral request (the client's, whatever its dialect)."""
    if not request.messages:
        raise InvalidRequest("the request has no messages", param="messages")
    paragraphs: list[str] = []
    images: list[Image] = []
    current, current_index = "", -1
    results: list[ToolResult] = []
    for message in request.messages:
        paragraph, user_text, results = _paragraph(message)
        if paragraph:
            paragraphs.append(paragraph)
        if user_text:
            current, current_index = user_text, len(paragraphs) - 1
            images = [_image(p) for p in message.parts if isinstance(p, n.Image)] or images
    system_text = "\n".join(s for s in request.system if s) or DEFAULT_SYSTEM
    system_json = orjson.dumps({"role": "system", "content": system_text})
    if current_index >= 0 and paragraphs[current_index].endswith(f"USER: {current}"):
        # the current request leaves the history (a tool result before it stays)
        kept = paragraphs[current_index][: -len(f"USER: {current}")].rstrip("\n")
        earlier = paragraphs[:current_index] + ([kept] if kept else [])
        earlier += paragraphs[current_index + 1 :]
    else:
        earlier = paragraphs
    if earlier:
        text = (
            "\n\n".join(earlier)
            + "\n\nThe above is the previous conversation context including tool call results."
            "\nContinue your response based on this context.\n\nCurrent request: " + current
        )
    else:
        text = current
    first_user = next(
        (_paragraph(m)[1] for m in request.messages if m.role == "user" and _paragraph(m)[1]), ""
    )
    last = request.messages[-1]
    return TurnInput(
        system_json=system_json,
        blob_id=hashlib.sha256(system_json).digest(),
        text=text,
        conversation_id=conversation_id(system_text, first_user),
        tools=_tools(request),
        images=images,
        tool_results=results if last.role == "user" else [],
    )


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
