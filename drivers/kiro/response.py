"""Kiro events → OpenAI `chat.completion.chunk`s, or one `chat.completion`.

Owns: what each event payload means (text, tool-use fragments, reasoning events and, with
thinking on, the inline `<thinking>` text split out as reasoning by thinking.py, context usage,
token metadata; unknown events ignored), tool calls with one index per tool use (id and name
on the first fragment, arguments streamed as they come, duplicates dropped), the
`finish_reason`, usage (Kiro reports no token counts: the input is estimated from
`contextUsagePercentage` or the request size, the output from characters, and the usage says
`"estimated": true`), and `KiroException` for exception/error frames.
Does not own: the binary framing (eventstream.py), the HTTP call and its errors (driver.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from drivers.kiro.eventstream import Message
from drivers.kiro.thinking import REASONING, Splitter

#: Exception frames that mean "the answer was cut at the output limit", not a failure.
_TRUNCATED = "ContentLengthExceededException"


class KiroException(Exception):
    """An exception or error frame: `kind` is its `:exception-type` / `:error-code`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


@dataclass(slots=True)
class _ToolCall:
    index: int
    id: str
    name: str
    arguments: str = ""
    done: bool = False


class Translator:
    """Feed decoded messages; get OpenAI chunks. `completion()` sums them up when it ends."""

    def __init__(
        self, model: str, *, context_window: int, request_chars: int, thinking: bool = False
    ) -> None:
        self.model = model
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self._window = context_window
        self._request_chars = request_chars
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[str, _ToolCall] = {}
        self._truncated = False
        self._context_percent: float | None = None
        self._token_usage: Mapping[str, Any] | None = None
        self._splitter = Splitter() if thinking else None

    # -- input ------------------------------------------------------------------------------

    def feed(self, message: Message) -> list[dict[str, Any]]:
        """The chunks this message adds (often one, sometimes none)."""
        kind = message.header(":message-type") or "event"
        if kind in ("exception", "error"):
            name = message.header(":exception-type") or message.header(":error-code") or kind
            text = message.header(":error-message") or _message_of(message.payload)
            if name == _TRUNCATED:
                self._truncated = True
                return []
            raise KiroException(name, text)
        try:
            payload = orjson.loads(message.payload) if message.payload else {}
        except orjson.JSONDecodeError:
            return []
        if not isinstance(payload, dict):
            return []
        event = message.header(":event-type")
        inner = payload.get(event)
        if isinstance(inner, dict):  # the wrapped form some gateways see
            payload = inner
        if str(payload.get("_type", "")).endswith("Exception") or payload.get("type") in (
            "error",
            "exception",
        ):
            raise KiroException(str(payload.get("_type") or "error"), _message_of(message.payload))
        return self._event(event, payload)

    def _event(self, event: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if event == "assistantResponseEvent":
            out = []
            content = payload.get("content")
            if isinstance(content, str) and content:
                if self._splitter is None:
                    out.append(self._say("text", content))
                else:
                    out.extend(
                        self._say(kind, piece) for kind, piece in self._splitter.feed(content)
                    )
            for use in payload.get("toolUses") or ():
                if isinstance(use, dict):
                    out.extend(self._tool_use({**use, "stop": True}))
            return out
        if event == "toolUseEvent":
            return self._tool_use(payload)
        if event == "reasoningContentEvent":
            text = payload.get("text")
            if isinstance(text, str) and text:
                self._reasoning.append(text)
                return [self.chunk({"reasoning_content": text})]
        elif event == "contextUsageEvent":
            percent = payload.get("contextUsagePercentage")
            if isinstance(percent, int | float):
                self._context_percent = float(percent)
        elif event in ("messageMetadataEvent", "metadataEvent"):
            usage = payload.get("tokenUsage")
            if isinstance(usage, dict):
                self._token_usage = usage
        return []

    def _say(self, kind: str, piece: str) -> dict[str, Any]:
        if kind == REASONING:
            self._reasoning.append(piece)
            return self.chunk({"reasoning_content": piece})
        self._text.append(piece)
        return self.chunk({"content": piece})

    def _flush(self) -> list[dict[str, Any]]:
        """What the thinking splitter still held (an unclosed tag at the end)."""
        if self._splitter is None:
            return []
        return [self._say(kind, piece) for kind, piece in self._splitter.end()]

    def _tool_use(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        use_id = str(payload.get("toolUseId") or "")
        call = self._tools.get(use_id)
        if call is not None and call.done:
            return []  # Kiro sometimes repeats a finished tool use
        out: list[dict[str, Any]] = []
        if call is None:
            call = _ToolCall(len(self._tools), use_id, str(payload.get("name") or ""))
            self._tools[use_id] = call
            first = {
                "index": call.index,
                "id": use_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            out.append(self.chunk({"tool_calls": [first]}))
        piece = payload.get("input")
        if isinstance(piece, dict):
            piece = "" if call.arguments else orjson.dumps(piece).decode()
        if payload.get("stop") and not call.arguments and not piece:
            piece = "{}"
        if isinstance(piece, str) and piece:
            call.arguments += piece
            delta = {"index": call.index, "function": {"arguments": piece}}
            out.append(self.chunk({"tool_calls": [delta]}))
        if payload.get("stop"):
            call.done = True
        return out

    # -- output -----------------------------------------------------------------------------

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def first(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    @property
    def finish_reason(self) -> str:
        if self._truncated or (self._context_percent or 0) >= 100:
            return "length"
        return "tool_calls" if self._tools else "stop"

    def usage(self) -> dict[str, Any]:
        reported = self._token_usage or {}
        output = reported.get("outputTokens")
        uncached = reported.get("uncachedInputTokens")
        estimated = not (isinstance(output, int) and isinstance(uncached, int))
        if not estimated:
            assert isinstance(output, int) and isinstance(uncached, int)
            prompt = uncached + sum(
                int(reported.get(k) or 0) for k in ("cacheReadInputTokens", "cacheWriteInputTokens")
            )
            completion = output
        else:
            if self._context_percent is not None:
                prompt = round(self._context_percent * self._window / 100)
            else:
                prompt = self._request_chars // 4
            chars = sum(map(len, self._text)) + sum(map(len, self._reasoning))
            chars += sum(len(c.arguments) + len(c.name) for c in self._tools.values())
            completion = max(1, chars // 4)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if estimated:
            usage["estimated"] = True
        return usage

    def last(self) -> list[dict[str, Any]]:
        """What was held back, the finish chunk and the usage chunk (`choices: []`)."""
        held = self._flush()
        finish = self.chunk({}, self.finish_reason)
        usage = {**self.chunk({}), "choices": [], "usage": self.usage()}
        return [*held, finish, usage]

    def completion(self) -> dict[str, Any]:
        self._flush()
        text = "".join(self._text)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._tools:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments or "{}"},
                }
                for c in self._tools.values()
            ]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }


def _message_of(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or "")[:300]
    return ""
