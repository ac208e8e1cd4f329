"""Kiro events → neutral events (proxy/dialects/neutral.py).

Owns: what each event payload means (text, tool-use fragments, reasoning with its signature or
redacted content and, with thinking on, the inline `<thinking>` text split out as reasoning by
thinking.py, context usage, token metadata; unknown events ignored), tool calls with one
index per tool use (start with id and name, arguments as they come, an end on `stop`,
duplicates dropped), the finish reason, usage (when Kiro reports no token counts, the input is
estimated from `contextUsagePercentage` or the request size, the output from characters, and
the usage says `estimated`), and `KiroException` for exception/error frames.
Does not own: the binary framing (eventstream.py), the HTTP call and its errors (driver.py),
any client dialect (keyrail's assembler encodes the events for the client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from drivers.kiro.eventstream import Message
from drivers.kiro.thinking import REASONING, Splitter
from proxy.dialects import neutral as n

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
    """Feed decoded messages; get neutral events. `last()` gives the closing ones."""

    def __init__(
        self, model: str, *, context_window: int, request_chars: int, thinking: bool = False
    ) -> None:
        self.model = model
        self._window = context_window
        self._request_chars = request_chars
        self._chars = 0  # output characters, for the estimate
        self._tools: dict[str, _ToolCall] = {}
        self._truncated = False
        self._context_percent: float | None = None
        self._token_usage: Mapping[str, Any] | None = None
        self._splitter = Splitter() if thinking else None

    # -- input ------------------------------------------------------------------------------

    def feed(self, message: Message) -> list[n.Event]:
        """The events this message adds (often one, sometimes none)."""
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

    def _event(self, event: str, payload: dict[str, Any]) -> list[n.Event]:
        if event == "assistantResponseEvent":
            out: list[n.Event] = []
            content = payload.get("content")
            if isinstance(content, str) and content:
                self._chars += len(content)
                if self._splitter is None:
                    out.append(n.TextDelta(content))
                else:
                    out.extend(_said(kind, piece) for kind, piece in self._splitter.feed(content))
            for use in payload.get("toolUses") or ():
                if isinstance(use, dict):
                    out.extend(self._tool_use({**use, "stop": True}))
            return out
        if event == "toolUseEvent":
            return self._tool_use(payload)
        if event == "reasoningContentEvent":
            text, signature = payload.get("text"), payload.get("signature")
            redacted = payload.get("redactedContent")
            delta = n.ReasoningDelta(
                text if isinstance(text, str) else "",
                signature if isinstance(signature, str) else "",
                redacted if isinstance(redacted, str) else "",
            )
            self._chars += len(delta.text)
            return [delta] if delta.text or delta.signature or delta.opaque else []
        if event == "contextUsageEvent":
            percent = payload.get("contextUsagePercentage")
            if isinstance(percent, int | float):
                self._context_percent = float(percent)
        elif event in ("messageMetadataEvent", "metadataEvent"):
            usage = payload.get("tokenUsage")
            if isinstance(usage, dict):
                self._token_usage = usage
        return []

    def _tool_use(self, payload: Mapping[str, Any]) -> list[n.Event]:
        use_id = str(payload.get("toolUseId") or "")
        call = self._tools.get(use_id)
        if call is not None and call.done:
            return []  # Kiro sometimes repeats a finished tool use
        out: list[n.Event] = []
        if call is None:
            call = _ToolCall(len(self._tools), use_id, str(payload.get("name") or ""))
            self._tools[use_id] = call
            self._chars += len(call.name)
            out.append(n.ToolCallStart(call.index, use_id, call.name))
        piece = payload.get("input")
        if isinstance(piece, dict):
            piece = "" if call.arguments else orjson.dumps(piece).decode()
        if payload.get("stop") and not call.arguments and not piece:
            piece = "{}"
        if isinstance(piece, str) and piece:
            call.arguments += piece
            self._chars += len(piece)
            out.append(n.ToolCallDelta(call.index, piece))
        if payload.get("stop"):
            call.done = True
            out.append(n.ToolCallEnd(call.index))
        return out

    # -- output -----------------------------------------------------------------------------

    @property
    def finish_reason(self) -> n.FinishReason:
        if self._truncated or (self._context_percent or 0) >= 100:
            return "length"
        return "tool_calls" if self._tools else "stop"

    def usage(self) -> n.UsageUpdate:
        reported = self._token_usage or {}
        output = reported.get("outputTokens")
        uncached = reported.get("uncachedInputTokens")
        if isinstance(output, int) and isinstance(uncached, int):
            cache_read = int(reported.get("cacheReadInputTokens") or 0)
            cache_write = int(reported.get("cacheWriteInputTokens") or 0)
            return n.UsageUpdate(
                uncached + cache_read + cache_write, output, cache_read, cache_write
            )
        if self._context_percent is not None:
            prompt = round(self._context_percent * self._window / 100)
        else:
            prompt = self._request_chars // 4
        return n.UsageUpdate(prompt, max(1, self._chars // 4), estimated=True)

    def last(self) -> list[n.Event]:
        """The closing events: what the thinking splitter held back, ends of unfinished tool
        calls, the usage, the finish."""
        out: list[n.Event] = []
        if self._splitter is not None:
            out.extend(_said(kind, piece) for kind, piece in self._splitter.end())
        out.extend(n.ToolCallEnd(c.index) for c in self._tools.values() if not c.done)
        for call in self._tools.values():
            call.done = True
        out.append(self.usage())
        out.append(n.Finish(self.finish_reason))
        return out


def _said(kind: str, piece: str) -> n.Event:
    return n.ReasoningDelta(piece) if kind == REASONING else n.TextDelta(piece)


def _message_of(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or "")[:300]
    return ""
