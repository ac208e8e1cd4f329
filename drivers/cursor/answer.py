"""A turn's output → keyrail's neutral events (the client's dialect is keyrail's business).

Owns: the events of one answer (thinking → `ReasoningDelta`, text → `TextDelta`, each MCP tool
call → `ToolCallStart` / one `ToolCallDelta` with its whole arguments / `ToolCallEnd`, Cursor's
heartbeats → `Heartbeat`), the finish (`tool_calls` when the model called a client tool, else
`stop`) and usage (output tokens summed from Cursor's token deltas, else estimated from
characters; input estimated from the request size: Cursor reports none, so `estimated`).
Does not own: reading the turn (session.py), HTTP (driver.py).
"""

from __future__ import annotations

from drivers.cursor import messages as m
from drivers.cursor.session import ToolCall
from proxy.dialects import neutral as n


class Answer:
    def __init__(self, *, request_bytes: int) -> None:
        self._request_bytes = request_bytes
        self.chars = 0
        self.tool_calls = 0
        self.tokens = 0

    def feed(self, event: m.Text | m.Thinking | m.Tokens | m.Heartbeat | ToolCall) -> list[n.Event]:
        if isinstance(event, m.Text):
            self.chars += len(event.text)
            return [n.TextDelta(event.text)] if event.text else []
        if isinstance(event, m.Thinking):
            self.chars += len(event.text)
            return [n.ReasoningDelta(event.text)] if event.text else []
        if isinstance(event, m.Tokens):
            self.tokens += max(0, event.count)
            return []
        if isinstance(event, m.Heartbeat):
            return [n.Heartbeat()]
        index = self.tool_calls
        self.tool_calls += 1
        self.chars += len(event.arguments) + len(event.name)
        return [
            n.ToolCallStart(index, event.call_id, event.name),
            n.ToolCallDelta(index, event.arguments),
            n.ToolCallEnd(index),
        ]

    def last(self) -> list[n.Event]:
        prompt = max(1, self._request_bytes // 4)
        output = self.tokens or max(1, self.chars // 4)
        usage = n.UsageUpdate(input_tokens=prompt, output_tokens=output, estimated=True)
        return [usage, n.Finish("tool_calls" if self.tool_calls else "stop")]
