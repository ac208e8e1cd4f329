"""A client's chat request → what MiniMax's OpenAI-compatible endpoint accepts.

Owns: the body rewrite (protocols/minimax.md §3, M2, M3, M5): `reasoning_split: true` always;
the fields MiniMax rejects or ignores removed (`reasoning_effort`, `reasoning`, `tool_choice`,
`response_format`, `parallel_tool_calls`, `seed`, the penalties, a tool's `strict`);
`max_tokens` → `max_completion_tokens`; `temperature` and `top_p` kept inside (0, 1] (0 becomes
the smallest accepted value; anything else outside is a 400 to the client); an earlier
assistant turn's reasoning (`reasoning_content`, or remembered by the driver for its tool
calls) sent back as `reasoning_details`, which MiniMax needs on tool turns; lowercase model
aliases spelt the way MiniMax documents them. Does not own: the answer (chunks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.errors import InvalidRequest

#: Documented model ids; a client may spell them in any case (`minimax-m2.5`).
MODELS = (
    "MiniMax-M3", "MiniMax-M2.7", "MiniMax-M2.7-highspeed", "MiniMax-M2.5",
    "MiniMax-M2.5-highspeed", "MiniMax-M2.1", "MiniMax-M2.1-highspeed", "MiniMax-M2",
)  # fmt: skip
_CANONICAL = {m.lower(): m for m in (*MODELS, "MiniMax-M2.1-lightning", "MiniMax-M2-Stable")}
DROPPED = frozenset({
    "reasoning_effort", "reasoning", "variant", "tool_choice", "response_format",
    "parallel_tool_calls", "seed", "frequency_penalty", "presence_penalty",
})  # fmt: skip
#: Smallest temperature / top_p sent for a client's 0 (MiniMax rejects 0 with 2013).
FLOOR = 0.01

#: Reasoning the driver remembers for an assistant tool call id, when the client dropped it.
Recall = Callable[[str], str | None]


def upstream_model(model: str) -> str:
    return _CANONICAL.get(model.lower(), model)


def build(body: Mapping[str, Any], model: str, recall: Recall | None = None) -> dict[str, Any]:
    """The body to send. Raises `InvalidRequest` for a value MiniMax cannot take."""
    out = {k: v for k, v in body.items() if k not in DROPPED}
    out["model"] = upstream_model(model)
    out["reasoning_split"] = True
    if body.get("reasoning_effort") == "none" and "thinking" not in body:
        out["thinking"] = {"type": "disabled"}  # MiniMax-M3's switch; M2.x think anyway
    if "max_tokens" in out:
        limit = out.pop("max_tokens")
        out.setdefault("max_completion_tokens", limit)
    for name in ("temperature", "top_p"):
        if name in out and out[name] is not None:
            out[name] = _unit_interval(name, out[name])
    tools = out.get("tools")
    if isinstance(tools, list):
        out["tools"] = [_without_strict(t) for t in tools]
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [_replayed(m, recall) for m in messages]
    return out


def _unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{name}' must be a number.", param=name)
    if value == 0:
        return FLOOR
    if not 0 < value <= 1:
        raise InvalidRequest(
            f"MiniMax accepts '{name}' between 0 and 1 (got {value:g}).", param=name
        )
    return float(value)


def _without_strict(tool: Any) -> Any:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        function = tool["function"]
        if "strict" in function:
            return {**tool, "function": {k: v for k, v in function.items() if k != "strict"}}
    return tool


def _replayed(message: Any, recall: Recall | None) -> Any:
    """An assistant turn with its reasoning as `reasoning_details` (what MiniMax reads)."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return message
    if isinstance(message.get("reasoning_details"), list):
        return {k: v for k, v in message.items() if k not in ("reasoning_content", "reasoning")}
    text = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(text, str) or not text:
        text = None
        calls = message.get("tool_calls")
        if recall is not None and isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    text = recall(call["id"])
                    if text:
                        break
    out = {k: v for k, v in message.items() if k not in ("reasoning_content", "reasoning")}
    if text:
        out["reasoning_details"] = [{"type": "reasoning.text", "text": text}]
    return out
