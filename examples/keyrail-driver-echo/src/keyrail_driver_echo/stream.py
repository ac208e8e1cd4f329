"""The Echo API's NDJSON answer → keyrail's neutral events.

Each line is one JSON object:

    {"say": "Hello"}                                            a piece of text
    {"call": {"ref": "c1", "tool": "get_weather", "args": ""}}  a tool call's first piece
    {"call": {"ref": "c1", "args": "{\\"city\\": "}}            more of its arguments
    {"end": "done", "words_in": 11, "words_out": 7}             the last line: done|called|cut
    {"fault": "overloaded"}                                     the answer failed mid-way

Owns: line splitting wherever the network cut the bytes, the translation into neutral events
(one tool-call index per `ref`, a start with id and name on its first fragment), the finish
reason and usage, and turning a fault or a missing `end` line into `StreamInterrupted`.
Does not own: the HTTP call (driver.py), nor any client dialect: keyrail's assembler turns
these events into Chat Completions chunks, Anthropic Messages events or Responses events,
streamed or as one body, whichever the client asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy import ByteStream, StreamInterrupted
from proxy.dialects import (
    Event,
    Finish,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageUpdate,
)

_FINISH = {"done": "stop", "called": "tool_calls", "cut": "length"}


class Answer:
    """An `EventStream` (keyrail's neutral events) over the upstream's NDJSON."""

    def __init__(self, upstream: ByteStream, provider: str) -> None:
        self._upstream = upstream
        self._provider = provider
        self._calls: dict[str, int] = {}  # ref → index
        self._ended = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def _events(self) -> AsyncIterator[Event]:
        async for line in self._lines():
            for event in self._translate(line):
                yield event

    async def _lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON line of the answer, up to and including its `end` line."""
        rest = b""
        async for data in self._upstream:
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                if line.strip():
                    yield self._parse(line)
        if rest.strip():
            yield self._parse(rest)
        if not self._ended:
            raise self._broken("the answer ended before its end line")

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise self._broken("a line that is not JSON") from None
        return parsed if isinstance(parsed, dict) else {}

    def _translate(self, line: dict[str, Any]) -> list[Event]:
        if isinstance(line.get("say"), str):
            return [TextDelta(line["say"])]
        if isinstance(line.get("call"), dict):
            return self._call(line["call"])
        if isinstance(line.get("end"), str):
            self._ended = True
            words_in, words_out = int(line.get("words_in", 0)), int(line.get("words_out", 0))
            ends: list[Event] = [ToolCallEnd(index) for index in self._calls.values()]
            finish = Finish(_FINISH.get(line["end"], "stop"))  # type: ignore[arg-type]
            return [*ends, UsageUpdate(words_in, words_out), finish]
        if "fault" in line:
            raise self._broken(f"the upstream failed mid-answer: {line['fault']}")
        return []  # a line kind this driver does not know yet: ignored

    def _call(self, piece: dict[str, Any]) -> list[Event]:
        ref, args = str(piece.get("ref", "")), str(piece.get("args", ""))
        out: list[Event] = []
        index = self._calls.get(ref)
        if index is None:  # the first fragment of a call carries its id and name
            index = self._calls[ref] = len(self._calls)
            out.append(ToolCallStart(index, ref, str(piece.get("tool", ""))))
        if args:
            out.append(ToolCallDelta(index, args))
        return out

    def _broken(self, why: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"upstream {self._provider}: {why}", status=502, provider=self._provider
        )
