"""The neutral model: the hub every chat dialect decodes into and encodes from.

Owns: the neutral request (`Request`: system text, `Message`s made of parts, tools, tool
choice, sampling, limits, stop sequences, reasoning control, metadata) and the neutral events
an answer is made of (`TextDelta`, `ReasoningDelta`, `ToolCallStart` / `ToolCallDelta` /
`ToolCallEnd`, `UsageUpdate`, `Finish`, `Failure`; `Heartbeat` says only "still alive"),
and `Completion`, the events of one answer summed up (what a non-streamed answer is rendered
from).
Does not own: any wire format (chat.py, messages.py, responses.py), nor turning events into a
stream (assembler.py). Imports nothing from keyrail but the error classes.

Conventions a codec and a driver can rely on:
- Tool results travel in user messages (`ToolResult` parts), as Anthropic has them; the chat
  codec turns them into `tool` messages and back.
- `ToolCall.arguments` is JSON text (what OpenAI sends), never a parsed object.
- Reasoning is kept with what is needed to send it back: Anthropic's `signature`, or an
  opaque blob (`Reasoning.opaque`: a `redacted_thinking` block's data, a Responses item's
  `encrypted_content`), never decoded or changed.
- Tool call `index` counts the calls of one answer from 0, in the order they started.
- Token counts are None when unknown; `UsageUpdate.estimated` says a count was guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.errors import UpstreamError

#: Finish reasons, in the neutral spelling (each codec maps them onto its own).
STOP, LENGTH, TOOL_CALLS, STOP_SEQUENCE, CONTENT_FILTER = (
    "stop",
    "length",
    "tool_calls",
    "stop_sequence",
    "content_filter",
)
FinishReason = Literal["stop", "length", "tool_calls", "stop_sequence", "content_filter"]
Effort = Literal["minimal", "low", "medium", "high", "xhigh"]

# -- the request ------------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image: base64 `data` with its `media_type`, or a `url` (remote or `data:` URL)."""

    media_type: str = ""
    data: str = ""
    url: str = ""

    def data_url(self) -> str:
        return self.url or f"data:{self.media_type or 'image/png'};base64,{self.data}"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = "{}"  # JSON text


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: str = ""
    is_error: bool = False
    images: list[Image] = field(default_factory=list)


@dataclass(slots=True)
class Reasoning:
    """The model's reasoning: readable `text` (a summary, for some upstreams) with Anthropic's
    `signature`, or an `opaque` blob (redacted thinking, encrypted content) kept as it came."""

    text: str = ""
    signature: str = ""
    opaque: str = ""


Part = Text | Image | ToolCall | ToolResult | Reasoning


@dataclass(slots=True)
class Message:
    role: Literal["user", "assistant"]
    parts: list[Part] = field(default_factory=list)


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema; {} when none given


@dataclass(slots=True)
class ToolChoice:
    """`auto`, `none`, `required` (some tool), or `tool` (the one named)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str = ""


@dataclass(slots=True)
class ReasoningControl:
    """How much to think: an `effort` level, a token `budget`, or both; `enabled` False turns
    thinking off where the dialect can say so."""

    enabled: bool = True
    effort: Effort | None = None
    budget: int | None = None
    summary: bool = False  # the client asked to see a summary (Responses `reasoning.summary`)


@dataclass(slots=True)
class Request:
    """One chat request, whatever dialect it came in. `extra` keeps fields no dialect maps
    (e.g. Messages `context_management`) for drivers that care; codecs ignore it."""

    model: str
    messages: list[Message] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    reasoning: ReasoningControl | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    user: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def system_text(self) -> str:
        return "\n\n".join(s for s in self.system if s)


# -- the answer -------------------------------------------------------------------------------


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """More reasoning text; or its `signature` (sent once, at the end of a thinking block); or
    a whole opaque block. A new block starts after a signature or an opaque one."""

    text: str = ""
    signature: str = ""
    opaque: str = ""


@dataclass(slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a fragment of JSON text


@dataclass(slots=True)
class ToolCallEnd:
    index: int


@dataclass(slots=True)
class UsageUpdate:
    """Token counts so far (the latest known wins, field by field). `input_tokens` counts the
    whole prompt, cached parts included; `cache_read` / `cache_write` say how much of it."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class Finish:
    reason: FinishReason = "stop"
    stop_sequence: str | None = None


@dataclass(slots=True)
class Failure:
    """The answer failed after it started (equivalent to the event iterator raising it)."""

    error: UpstreamError


@dataclass(slots=True)
class Heartbeat:
    """The upstream is alive but has nothing to say yet (Cursor sends these while a model
    thinks). No output: the stream gets its dialect's keepalive, which feeds the relay's idle
    watchdog, so a long silent pause with heartbeats is not taken for a dead upstream."""


Event = (
    TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | UsageUpdate
    | Finish | Failure | Heartbeat
)  # fmt: skip


@dataclass(slots=True)
class Block:
    """One block of a finished answer: text, reasoning, or a tool call, in order."""

    kind: Literal["text", "reasoning", "tool_call"]
    text: str = ""  # text, reasoning text, or tool-call arguments
    signature: str = ""
    opaque: str = ""
    id: str = ""
    name: str = ""


@dataclass(slots=True)
class Completion:
    """Every event of one answer summed up: its blocks in order, usage and finish reason."""

    blocks: list[Block] = field(default_factory=list)
    usage: UsageUpdate = field(default_factory=UsageUpdate)
    finish: Finish | None = None
    _calls: dict[int, Block] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        blocks = self.blocks
        if isinstance(event, TextDelta):
            if blocks and blocks[-1].kind == "text":
                blocks[-1].text += event.text
            else:
                blocks.append(Block("text", event.text))
        elif isinstance(event, ReasoningDelta):
            last = blocks[-1] if blocks else None
            open_block = (
                last is not None
                and last.kind == "reasoning"
                and not last.signature
                and not last.opaque
            )
            if event.opaque:
                blocks.append(Block("reasoning", opaque=event.opaque))
            elif open_block:
                assert last is not None
                last.text += event.text
                last.signature = event.signature
            else:
                blocks.append(Block("reasoning", event.text, signature=event.signature))
        elif isinstance(event, ToolCallStart):
            block = Block("tool_call", id=event.id, name=event.name)
            self._calls[event.index] = block
            blocks.append(block)
        elif isinstance(event, ToolCallDelta):
            call = self._calls.get(event.index)
            if call is not None:
                call.text += event.arguments
        elif isinstance(event, UsageUpdate):
            merge_usage(self.usage, event)
        elif isinstance(event, Finish):
            self.finish = event
        elif isinstance(event, Failure):
            raise event.error

    @property
    def finish_reason(self) -> FinishReason:
        if self.finish is not None:
            return self.finish.reason
        return "tool_calls" if self._calls else "stop"

    def text(self) -> str:
        return "".join(b.text for b in self.blocks if b.kind == "text")

    def tool_calls(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "tool_call"]


def merge_usage(into: UsageUpdate, update: UsageUpdate) -> None:
    """Fold a newer usage report into `into`, field by field."""
    if update.input_tokens is not None:
        into.input_tokens = update.input_tokens
    if update.output_tokens is not None:
        into.output_tokens = update.output_tokens
    into.cache_read = update.cache_read or into.cache_read
    into.cache_write = update.cache_write or into.cache_write
    into.reasoning_tokens = update.reasoning_tokens or into.reasoning_tokens
    into.estimated = into.estimated or update.estimated
