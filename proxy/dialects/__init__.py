"""Client dialects through one neutral model (a hub, not a translator per pair).

    neutral.py    the neutral request, the neutral events, `Completion` (events summed up)
    assembler.py  `Codec` / `StreamEncoder` interfaces; neutral events → a dialect's bytes
    chat.py       OpenAI Chat Completions (also: decoding a chat upstream's answer)
    messages.py   Anthropic Messages
    responses.py  OpenAI Responses
    bridge.py     per attempt: passthrough, or translate through the hub
    routes.py     each client path → its dialect

For driver authors (see docs/plugins.md): set `dialects = NEUTRAL` on the driver, read the
neutral request from `call.request`, and return `Reply.of_events(...)` with an `EventStream`
of the events below; keyrail answers the client in its own dialect, streamed or not.
"""

from proxy.dialects.assembler import Codec, EventStream, IteratorEvents, StreamEncoder
from proxy.dialects.neutral import (
    Completion,
    Event,
    Failure,
    Finish,
    Heartbeat,
    Image,
    Message,
    Part,
    Reasoning,
    ReasoningControl,
    ReasoningDelta,
    Request,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    UsageUpdate,
)

#: Dialect names, as in `Driver.dialects`, access lines and metrics labels.
CHAT, MESSAGES, RESPONSES = "chat", "messages", "responses"

__all__ = [
    "CHAT",
    "MESSAGES",
    "RESPONSES",
    "Codec",
    "Completion",
    "Event",
    "EventStream",
    "Failure",
    "Finish",
    "Heartbeat",
    "Image",
    "IteratorEvents",
    "Message",
    "Part",
    "Reasoning",
    "ReasoningControl",
    "ReasoningDelta",
    "Request",
    "StreamEncoder",
    "Text",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolChoice",
    "ToolResult",
    "UsageUpdate",
]
