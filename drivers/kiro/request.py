"""OpenAI chat request → Kiro `generateAssistantResponse` body.

Owns: system prompts (wrapped and put before the current message), user text and images
(`data:` URLs), assistant text and `tool_calls` (→ `toolUses`), `tool` messages (→ the next
user message's `toolResults`, orphans dropped), merging same-role neighbours so history
alternates user/assistant, the last message as `currentMessage`, tool definitions,
`inferenceConfig`, thinking (the `<thinking_mode>` prefix on the system prompt, with its
budget), and `profileArn` when the caller passes one.
The body is minimal: the runtime host answers `REQUEST_BODY_INVALID` to the optional agent
fields (`agentMode`, `agentTaskType`, `agentContinuationId`), so `agentTaskType` is sent only
when the block opts in (`agent-task-type`). Does not own: the model-name table (models.py),
which host gets `profileArn` (hosts.py), the HTTP call (driver.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

ORIGIN = "AI_EDITOR"
CONTINUE = "Continue"
TOOL_RESULTS_ONLY = "Tool results provided."
_DESCRIPTION_LIMIT = 10237  # bytes; longer tool descriptions get 400 "Improperly formed request."
#: Thinking budget (tokens) when a client turns thinking on without one ([F] uses 16000).
THINKING_BUDGET = 16000
_EFFORT_BUDGETS = {"minimal": 2048, "low": 4096, "medium": 16000, "high": 32000, "xhigh": 32000}
#: Fields the runtime host refuses; keyrail sends none of them unless told to.
AGENT_FIELDS = ("agentMode", "agentTaskType", "agentContinuationId")


@dataclass(slots=True)
class _Turn:
    role: str  # "user" | "assistant"
    text: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    tool_uses: list[dict[str, Any]] = field(default_factory=list)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, Mapping) and p.get("type") in ("text", "input_text")
        )
    return ""


def _image(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """An `image_url` part with a `data:image/<fmt>;base64,` URL; remote URLs are dropped."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    meta, _, data = url[5:].partition(",")
    if ";base64" not in meta or not data:
        return None
    fmt = meta.split(";")[0].rpartition("/")[2] or "png"
    return {"format": "jpeg" if fmt == "jpg" else fmt, "source": {"bytes": data}}


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"raw": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def _turns(messages: Sequence[Any]) -> tuple[str, list[_Turn]]:
    """The system text, and the other messages as alternating user/assistant turns."""
    system: list[str] = []
    turns: list[_Turn] = []

    def turn(role: str) -> _Turn:
        if turns and turns[-1].role == role:
            return turns[-1]
        turns.append(_Turn(role))
        return turns[-1]

    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text_of(content))
        elif role == "user":
            current = turn("user")
            text = _text_of(content)
            if text:
                current.text.append(text)
            if isinstance(content, Sequence) and not isinstance(content, str):
                for part in content:
                    if isinstance(part, Mapping) and part.get("type") == "image_url":
                        image = _image(part)
                        if image:
                            current.images.append(image)
        elif role == "tool":
            turn("user").tool_results.append(
                {
                    "toolUseId": str(message.get("tool_call_id") or ""),
                    "content": [{"text": _text_of(content) or "(empty)"}],
                    "status": "success",
                }
            )
        elif role == "assistant":
            current = turn("assistant")
            text = _text_of(content)
            if text:
                current.text.append(text)
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping):
                    current.tool_uses.append(
                        {
                            "toolUseId": str(call.get("id") or ""),
                            "name": str(function.get("name") or ""),
                            "input": _tool_input(function.get("arguments")),
                        }
                    )
    return "\n".join(s for s in system if s), turns


def _tool_spec(tool: Mapping[str, Any]) -> dict[str, Any] | None:
    function = tool.get("function")
    if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
        return None
    name = str(function.get("name") or "")
    description = str(function.get("description") or "") or f"Tool: {name}"
    raw = description.encode("utf-8")
    if len(raw) > _DESCRIPTION_LIMIT:
        description = raw[:_DESCRIPTION_LIMIT].decode("utf-8", "ignore")
    schema = function.get("parameters")
    if not isinstance(schema, Mapping) or not schema:
        schema = {"type": "object", "properties": {}}
    return {
        "toolSpecification": {
            "name": name,
            "description": description,
            "inputSchema": {"json": schema},
        }
    }


def _user_message(turn: _Turn, model_id: str) -> dict[str, Any]:
    text = "\n\n".join(turn.text)
    message: dict[str, Any] = {
        "content": text or (TOOL_RESULTS_ONLY if turn.tool_results else CONTINUE),
        "modelId": model_id,
        "origin": ORIGIN,
    }
    if turn.images:
        message["images"] = turn.images
    if turn.tool_results:
        message["userInputMessageContext"] = {"toolResults": turn.tool_results}
    return message


def _assistant_message(turn: _Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"content": "\n\n".join(turn.text) or "."}
    if turn.tool_uses:
        message["toolUses"] = turn.tool_uses
    return message


def thinking_budget(body: Mapping[str, Any], model: str) -> int | None:
    """The thinking budget the client asked for, or None (thinking off).

    On: `reasoning_effort` (or `reasoning.effort`) other than none, an Anthropic-style
    `thinking: {type: enabled, budget_tokens}`, or a model name with `thinking` in it.
    """
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive"):
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
            return budget
        return THINKING_BUDGET
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
    if isinstance(effort, str) and effort.lower() not in ("none", ""):
        return _EFFORT_BUDGETS.get(effort.lower(), THINKING_BUDGET)
    if "thinking" in model.lower():
        return THINKING_BUDGET
    return None


def thinking_prefix(budget: int) -> str:
    """What turns Kiro's thinking on: tags before the system prompt (kiro.md §2.4)."""
    return (
        f"<thinking_mode>enabled</thinking_mode><max_thinking_length>{budget}</max_thinking_length>"
    )


def build(
    body: Mapping[str, Any],
    model_id: str,
    *,
    profile_arn: str | None = None,
    thinking: int | None = None,
    agent_task_type: str | None = None,
) -> dict[str, Any]:
    """The Kiro request for an OpenAI chat body: minimal (no agent fields) unless
    `agent_task_type` is given; `thinking` is a budget in tokens (None: off)."""
    system, turns = _turns(body.get("messages") or ())
    if thinking:
        system = thinking_prefix(thinking) + ("\n" + system if system else "")
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user"))
    if turns[-1].role != "user":
        turns.append(_Turn("user"))
    # Tool results must answer a tool use still in the history, or Kiro answers 400.
    used = {u["toolUseId"] for t in turns for u in t.tool_uses}
    for t in turns:
        t.tool_results = [r for r in t.tool_results if r["toolUseId"] in used]
    *past, last = turns
    current = _user_message(last, model_id)
    if system:
        current["content"] = (
            f"--- SYSTEM PROMPT ---\n{system}\n--- END SYSTEM PROMPT ---\n\n{current['content']}"
        )
    specs = [s for t in body.get("tools") or () if isinstance(t, Mapping) and (s := _tool_spec(t))]
    if specs:
        current.setdefault("userInputMessageContext", {})["tools"] = specs
    history = [
        {"userInputMessage": _user_message(t, model_id)}
        if t.role == "user"
        else {"assistantResponseMessage": _assistant_message(t)}
        for t in past
    ]
    state: dict[str, Any] = {
        "chatTriggerType": "MANUAL",
        "conversationId": str(uuid.uuid4()),
        "currentMessage": {"userInputMessage": current},
    }
    if history:
        state["history"] = history
    if agent_task_type:
        state["agentTaskType"] = agent_task_type
    request: dict[str, Any] = {"conversationState": state}
    if profile_arn:
        request["profileArn"] = profile_arn
    inference = _inference_config(body)
    if inference:
        request["inferenceConfig"] = inference
    return request


def _inference_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        config["maxTokens"] = max_tokens
    for source, target in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(source)
        if isinstance(value, int | float) and not isinstance(value, bool):
            config[target] = value
    return config
