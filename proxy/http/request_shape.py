"""The types of the request fields that keyrail and its drivers read.

Owns: one check per request that the OpenAI fields drivers read have the types the API gives
them (`messages` a list of objects, each `content` a string, a list or null, `tool_calls` a
list of objects, `tools` a list of objects, `stream_options` an object...), so that a wrong
type is a 400 naming the field, not a driver's TypeError (a 500). Does not own: what the
fields mean (drivers, dialects), parsing JSON (handlers.py).

Cheap: a few type checks on the top level and a few per message.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest

_OBJECT_OR_NULL = ("stream_options", "response_format", "metadata", "reasoning", "text")
_LIST_OF_OBJECTS = ("messages", "tools", "functions")
_TEXT_OR_LIST = ("content",)


def check(body: dict[str, Any]) -> None:
    """Raise InvalidRequest (400, naming the field) for a field of the wrong type."""
    for name in _OBJECT_OR_NULL:
        value = body.get(name)
        if value is not None and not isinstance(value, dict):
            raise _wrong(name, "an object")
    for name in _LIST_OF_OBJECTS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, list):
            raise _wrong(name, "an array of objects")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _wrong(f"{name}[{i}]", "an object")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise _wrong("tool_choice", "a string or an object")
    prompt = body.get("input")
    if prompt is not None and not isinstance(prompt, str | list):
        raise _wrong("input", "a string or an array")
    for i, message in enumerate(body.get("messages") or ()):
        _check_message(i, message)


def _check_message(i: int, message: dict[str, Any]) -> None:
    role = message.get("role")
    if role is not None and not isinstance(role, str):
        raise _wrong(f"messages[{i}].role", "a string")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _wrong(f"messages[{i}].content", "a string or an array")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict | str):
                raise _wrong(f"messages[{i}].content[{j}]", "an object")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _wrong(f"messages[{i}].tool_calls", "an array of objects")
        for j, call in enumerate(calls):
            if not isinstance(call, dict):
                raise _wrong(f"messages[{i}].tool_calls[{j}]", "an object")
            function = call.get("function")
            if function is not None and not isinstance(function, dict):
                raise _wrong(f"messages[{i}].tool_calls[{j}].function", "an object")


def _wrong(field: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"'{field}' must be {expected}.", param=field)
