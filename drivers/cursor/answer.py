"""A turn's output → the client's answer (OpenAI chat chunks, or one chat completion).

Owns: the chunk sequence (role chunk first, `reasoning_content` for thinking, `content` for
text, each tool call as one chunk with its whole arguments, then the finish chunk and a usage
chunk), `finish_reason` (`tool_calls` when the model called a client tool, else `stop`), and
usage (output tokens summed from Cursor's token deltas, else estimated from characters; input
estimated from the request size: Cursor reports none, so usage says `"estimated": true`).
Does not own: reading the turn (session.py), HTTP (driver.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from drivers.cursor import messages as m
from drivers.cursor.session import ToolCall


class Answer:
    def __init__(self, model: str, *, request_bytes: int) -> None:
        self.model = model
        self.id = "chatcmpl-" + secrets.token_hex(14)
        self.created = int(time.time())
        self._request_bytes = request_bytes
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: list[ToolCall] = []
        self.tokens = 0

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

    def feed(self, event: m.Text | m.Thinking | m.Tokens | ToolCall) -> list[dict[str, Any]]:
        if isinstance(event, m.Text):
            if not event.text:
                return []
            self.text.append(event.text)
            return [self.chunk({"content": event.text})]
        if isinstance(event, m.Thinking):
            if not event.text:
                return []
            self.reasoning.append(event.text)
            return [self.chunk({"reasoning_content": event.text})]
        if isinstance(event, m.Tokens):
            self.tokens += max(0, event.count)
            return []
        index = len(self.tools)
        self.tools.append(event)
        call = {
            "index": index,
            "id": event.call_id,
            "type": "function",
            "function": {"name": event.name, "arguments": event.arguments},
        }
        return [self.chunk({"tool_calls": [call]})]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tools else "stop"

    def usage(self) -> dict[str, Any]:
        prompt = max(1, self._request_bytes // 4)
        if self.tokens:
            completion = self.tokens
        else:
            chars = sum(map(len, self.text)) + sum(map(len, self.reasoning))
            chars += sum(len(t.arguments) + len(t.name) for t in self.tools)
            completion = max(1, chars // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "estimated": True,
        }

    def last(self) -> list[dict[str, Any]]:
        finish = self.chunk({}, self.finish_reason)
        return [finish, {**self.chunk({}), "choices": [], "usage": self.usage()}]

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {
                    "id": t.call_id,
                    "type": "function",
                    "function": {"name": t.name, "arguments": t.arguments},
                }
                for t in self.tools
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage(),
        }
