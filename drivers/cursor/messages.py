"""Cursor's agent messages (package `agent.v1`): the few the driver sends and reads.

Owns: the field numbers (from the reverse-engineered descriptor, see docs/cursor.md), building
`AgentClientMessage`s (the run request, heartbeats, blob and request-context replies, MCP tool
results, refusals of Cursor's built-in file and shell tools) and reading `AgentServerMessage`s
into small event values. One server message may carry several of its oneof fields at once (a
request and a trailing update): every one becomes an event, in order, none overwrites another.
Does not own: the wire codec (wire.py), framing (connect.py), what a turn does with the events
(session.py), the OpenAI side (request.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from drivers.cursor.wire import LEN, Fields, WireError, decode_value, message, varint

# AgentClientMessage fields
_RUN_REQUEST, _EXEC_CLIENT, _KV_CLIENT, _HEARTBEAT = 1, 2, 3, 7
# AgentServerMessage fields
_INTERACTION, _EXEC_SERVER, _CHECKPOINT, _KV_SERVER, _EXEC_CONTROL = 1, 2, 3, 4, 5
# InteractionUpdate fields
_TEXT, _THINKING, _THINKING_DONE, _TOKENS, _HEARTBEAT_UPDATE, _TURN_ENDED = 1, 4, 5, 8, 13, 14

#: ExecServerMessage args field → the refusal its result carries (result field = args field).
#: ("rejected", n): a `rejected` sub-message at n with path/command and reason;
#: ("error", n): an `error` sub-message at n; ("empty", 0): an empty result.
SHELL, WRITE, DELETE, GREP, READ, LS, DIAGNOSTICS = 2, 3, 4, 5, 7, 8, 9
REQUEST_CONTEXT, MCP, SHELL_STREAM, BACKGROUND_SHELL, FETCH, WRITE_STDIN = 10, 11, 14, 16, 20, 23
BUILTIN_TOOLS: dict[int, tuple[str, int]] = {
    READ: ("path", 3),
    WRITE: ("path", 5),
    DELETE: ("path", 3),
    LS: ("path", 3),
    SHELL: ("shell", 5),
    SHELL_STREAM: ("shell", 5),
    BACKGROUND_SHELL: ("shell", 2),
    GREP: ("error", 2),
    FETCH: ("fetch", 2),
    WRITE_STDIN: ("error", 2),
    DIAGNOSTICS: ("empty", 0),
}
REFUSAL = "Tool not available in this environment. Use the MCP tools provided instead."


# -- client → server -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    schema: bytes  # a serialized google.protobuf.Value of the JSON schema


@dataclass(frozen=True, slots=True)
class Image:
    uuid: str
    mime_type: str
    data: bytes


def tool_definition(tool: Tool) -> bytes:
    """McpToolDefinition{1 name, 2 description, 3 input_schema, 4 provider, 5 tool_name}."""
    return message(
        (1, tool.name), (2, tool.description), (3, tool.schema), (4, "proxy"), (5, tool.name)
    )


def run_request(
    *,
    model: str,
    text: str,
    message_id: str,
    conversation_id: str,
    system_blob_id: bytes,
    tools: Sequence[Tool],
    images: Sequence[Image] = (),
    thinking: bool = False,
) -> bytes:
    """AgentClientMessage{run_request}: a new turn whose whole history is in `text`."""
    state = message((1, system_blob_id))
    selected = message(*((1, message((8, i.data), (2, i.uuid), (7, i.mime_type))) for i in images))
    user = message((1, text), (2, message_id), (3, selected if images else None))
    action = message((1, message((1, user))))
    details = message(
        (1, model),
        (2, message() if thinking else None),
        (3, model),
        (4, model),
    )
    mcp = message(*((1, tool_definition(t)) for t in tools))
    run = message((1, state), (2, action), (3, details), (4, mcp), (5, conversation_id))
    return message((_RUN_REQUEST, run))


def heartbeat() -> bytes:
    """AgentClientMessage{client_heartbeat{}}: the bytes `3a 00`."""
    return message((_HEARTBEAT, b""))


def blob_result(kv_id: int, data: bytes | None) -> bytes:
    """kv_client_message{1 id, 2 get_blob_result{1 blob_data?}}."""
    return message((_KV_CLIENT, message((1, kv_id), (2, message((1, data))))))


def set_blob_result(kv_id: int) -> bytes:
    return message((_KV_CLIENT, message((1, kv_id), (3, b""))))


def _exec_reply(exec_id: int, exec_key: str, field: int, result: bytes) -> bytes:
    # exec_id (15) is always written, even empty: Cursor requires the field.
    body = message((1, exec_id), (field, result)) + _always(15, exec_key)
    return message((_EXEC_CLIENT, body))


def _always(number: int, text: str) -> bytes:
    """A string field written even when empty (`message` leaves nothing out, but be explicit)."""
    data = text.encode()
    return varint(number << 3 | LEN) + varint(len(data)) + data


def request_context_result(exec_id: int, exec_key: str, tools: Sequence[Tool]) -> bytes:
    """request_context_result{1 success{1 request_context{7 tools}}}."""
    context = message(*((7, tool_definition(t)) for t in tools))
    return _exec_reply(exec_id, exec_key, REQUEST_CONTEXT, message((1, message((1, context)))))


def mcp_result(exec_id: int, exec_key: str, text: str, *, is_error: bool = False) -> bytes:
    """mcp_result{1 success{1 content [{1 text{1 text}}], 2 is_error}}."""
    content = message((1, message((1, text))))
    success = message((1, content), (2, is_error or None))
    return _exec_reply(exec_id, exec_key, MCP, message((1, success)))


def refusal(exec_id: int, exec_key: str, kind: int, args: Fields) -> bytes:
    """The refusal of a built-in tool Cursor asked to run on this machine."""
    shape, sub = BUILTIN_TOOLS[kind]
    if shape == "path":
        result = message((sub, message((1, args.text(1)), (2, REFUSAL))))
    elif shape == "shell":
        rejected = message((1, args.text(1)), (2, args.text(2)), (3, REFUSAL), (4, False))
        result = message((sub, rejected))
    elif shape == "fetch":
        result = message((sub, message((1, args.text(1)), (2, REFUSAL))))
    elif shape == "error":
        result = message((sub, message((1, REFUSAL))))
    else:
        result = b""
    return _exec_reply(exec_id, exec_key, kind, result)


def bidi_request_id(request_id: str) -> bytes:
    """BidiRequestId{1 request_id}: the whole initial body of a RunSSE call."""
    return message((1, request_id))


# -- server → client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Thinking:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDone:
    pass


@dataclass(frozen=True, slots=True)
class Tokens:
    count: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class TurnEnded:
    pass


@dataclass(frozen=True, slots=True)
class GetBlob:
    kv_id: int
    blob_id: bytes


@dataclass(frozen=True, slots=True)
class SetBlob:
    kv_id: int
    blob_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Exec:
    """An exec request: `kind` is the args field (MCP, REQUEST_CONTEXT, READ, ...)."""

    exec_id: int
    exec_key: str
    kind: int
    args: bytes


@dataclass(frozen=True, slots=True)
class ExecAbort:
    """`exec_server_control_message{abort{id}}`: Cursor withdrew the exec request `exec_id`."""

    exec_id: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    state: bytes


Event = Text | Thinking | ThinkingDone | Tokens | Heartbeat | TurnEnded | GetBlob | SetBlob
ServerEvent = Event | Exec | ExecAbort | Checkpoint


def parse_server(payload: bytes) -> list[ServerEvent]:
    """Every event one AgentServerMessage carries (unknown fields are skipped)."""
    out: list[ServerEvent] = []
    top = Fields(payload)
    for number in top.numbers():
        for raw in top.all_raw(number):
            if number == _INTERACTION:
                out.extend(_interaction(Fields(raw)))
            elif number == _EXEC_SERVER:
                out.extend(_exec(Fields(raw)))
            elif number == _KV_SERVER:
                out.extend(_kv(Fields(raw)))
            elif number == _CHECKPOINT:
                out.append(Checkpoint(raw))
            elif number == _EXEC_CONTROL:
                control = Fields(raw)
                if 1 in control:
                    out.append(ExecAbort(control.sub(1).uint(1)))
    return out


def _interaction(update: Fields) -> list[ServerEvent]:
    out: list[ServerEvent] = []
    for number in update.numbers():
        if number == _TEXT:
            out.append(Text(update.sub(_TEXT).text(1)))
        elif number == _THINKING:
            out.append(Thinking(update.sub(_THINKING).text(1)))
        elif number == _THINKING_DONE:
            out.append(ThinkingDone())
        elif number == _TOKENS:
            out.append(Tokens(update.sub(_TOKENS).uint(1)))
        elif number == _HEARTBEAT_UPDATE:
            out.append(Heartbeat())
        elif number == _TURN_ENDED:
            out.append(TurnEnded())
    return out


def _exec(request: Fields) -> list[ServerEvent]:
    exec_id, exec_key = request.uint(1), request.text(15)
    return [
        Exec(exec_id, exec_key, number, request.raw(number))
        for number in request.numbers()
        if number not in (1, 15) and (number in BUILTIN_TOOLS or number in (MCP, REQUEST_CONTEXT))
    ]


def _kv(request: Fields) -> list[ServerEvent]:
    kv_id = request.uint(1)
    if 2 in request:
        return [GetBlob(kv_id, request.sub(2).raw(1))]
    if 3 in request:
        args = request.sub(3)
        return [SetBlob(kv_id, args.raw(1), args.raw(2))]
    return []


@dataclass(frozen=True, slots=True)
class McpCall:
    """An `mcp_args`: the tool the model calls and its arguments as a JSON object text."""

    name: str
    call_id: str
    arguments: str


def mcp_call(args: bytes) -> McpCall:
    """McpArgs{1 name, 2 args map<string, Value bytes>, 3 tool_call_id, 5 tool_name}."""
    fields = Fields(args)
    arguments: dict[str, object] = {}
    for entry in fields.all_raw(2):
        pair = Fields(entry)
        raw = pair.raw(2)
        try:
            arguments[pair.text(1)] = decode_value(raw)
        except WireError:  # not a Value: keep it as JSON if it is, else as text
            try:
                arguments[pair.text(1)] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                arguments[pair.text(1)] = raw.decode("utf-8", "replace")
    return McpCall(
        name=fields.text(5) or fields.text(1),
        call_id=fields.text(3) or f"call_{uuid.uuid4().hex[:24]}",
        arguments=orjson.dumps(arguments).decode(),
    )


def model_list(payload: bytes) -> list[tuple[str, bool]]:
    """GetUsableModelsResponse{1 repeated ModelDetails}: (model id, has thinking) pairs."""
    out = []
    for raw in Fields(payload).all_raw(1):
        details = Fields(raw)
        model_id = details.text(1)
        if model_id:
            out.append((model_id, 2 in details))
    return out
