"""The neutral request → Kiro `generateAssistantResponse` body.

Owns: system prompts (wrapped and put before the current message), user text and images
(base64 only), assistant text and tool calls (→ `toolUses`), tool results (→ the user
message's `toolResults`, orphans dropped), merging same-role neighbours so history alternates
user/assistant, the last message as `currentMessage`, tool definitions, `inferenceConfig`,
thinking (the `<thinking_mode>` prefix on the system prompt, with its budget), and
`profileArn` when the caller passes one. Whatever dialect the client spoke, keyrail hands the
driver its request in the neutral model (proxy/dialects/neutral.py).
The body is minimal: the runtime host answers `REQUEST_BODY_INVALID` to the optional agent
fields (`agentMode`, `agentTaskType`, `agentContinuationId`), so `agentTaskType` is sent only
when the block opts in (`agent-task-type`). Does not own: the model-name table (models.py),
which host gets `profileArn` (hosts.py), the HTTP call (driver.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.dialects import neutral as n

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


def _image(image: n.Image) -> dict[str, Any] | None:
    """A base64 image in Kiro's shape; images given only by remote URL are dropped."""
    if not image.data:
        return None
    fmt = image.media_type.rpartition("/")[2] or "png"
    return {"format": "jpeg" if fmt == "jpg" else fmt, "source": {"bytes": image.data}}


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def _turns(messages: list[n.Message]) -> list[_Turn]:
    """The messages as alternating user/assistant turns."""
    turns: list[_Turn] = []
    for message in messages:
        if turns and turns[-1].role == message.role:
            current = turns[-1]
        else:
            current = _Turn(message.role)
            turns.append(current)
        for part in message.parts:
            if isinstance(part, n.Text):
                if part.text:
                    current.text.append(part.text)
            elif isinstance(part, n.Image) and (image := _image(part)):
                current.images.append(image)
            elif isinstance(part, n.ToolResult):
                current.tool_results.append(
                    {
                        "toolUseId": part.call_id,
                        "content": [{"text": part.content or "(empty)"}],
                        "status": "error" if part.is_error else "success",
                    }
                )
            elif isinstance(part, n.ToolCall):
                current.tool_uses.append(
                    {"toolUseId": part.id, "name": part.name, "input": _tool_input(part.arguments)}
                )
    return turns


def _tool_spec(tool: n.Tool) -> dict[str, Any]:
    name = tool.name
    description = tool.description or f"Tool: {name}"
    raw = description.encode("utf-8")
    if len(raw) > _DESCRIPTION_LIMIT:
        description = raw[:_DESCRIPTION_LIMIT].decode("utf-8", "ignore")
    schema: Mapping[str, Any] = tool.parameters
    if not schema:
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


def thinking_budget(req: n.Request, model: str) -> int | None:
    """The thinking budget the client asked for, or None (thinking off): a reasoning control
    (effort or budget, from `reasoning_effort`, `reasoning` or Anthropic's `thinking`), or a
    model name with `thinking` in it."""
    control = req.reasoning
    if control is not None and control.enabled:
        if control.budget:
            return control.budget
        effort = str(control.effort or "").lower()
        if effort != "none":
            return _EFFORT_BUDGETS.get(effort, THINKING_BUDGET)
        return None
    return THINKING_BUDGET if "thinking" in model.lower() else None


def thinking_prefix(budget: int) -> str:
    """What turns Kiro's thinking on: tags before the system prompt (kiro.md §2.4)."""
    return (
        f"<thinking_mode>enabled</thinking_mode><max_thinking_length>{budget}</max_thinking_length>"
    )


def build(
    req: n.Request,
    model_id: str,
    *,
    profile_arn: str | None = None,
    thinking: int | None = None,
    agent_task_type: str | None = None,
) -> dict[str, Any]:
    """The Kiro request for a neutral request: minimal (no agent fields) unless
    `agent_task_type` is given; `thinking` is a budget in tokens (None: off)."""
    system = "\n".join(s for s in req.system if s)
    if thinking:
        system = thinking_prefix(thinking) + ("\n" + system if system else "")
    turns = _turns(req.messages)
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
    specs = [_tool_spec(t) for t in req.tools]
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
    inference = _inference_config(req)
    if inference:
        request["inferenceConfig"] = inference
    return request


def _inference_config(req: n.Request) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if req.max_tokens is not None and req.max_tokens > 0:
        config["maxTokens"] = req.max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    return config
