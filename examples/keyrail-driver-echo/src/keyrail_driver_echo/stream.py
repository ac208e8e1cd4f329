"""The Echo API's NDJSON answer → OpenAI chat chunks (SSE) or one chat completion.

Each line is one JSON object:

    {"say": "Hello"}                                            a piece of text
    {"call": {"ref": "c1", "tool": "get_weather", "args": ""}}  a tool call's first piece
    {"call": {"ref": "c1", "args": "{\\"city\\": "}}            more of its arguments
    {"end": "done", "words_in": 11, "words_out": 7}             the last line: done|called|cut
    {"fault": "overloaded"}                                     the answer failed mid-way

Owns: line splitting wherever the network cut the bytes, the translation (one tool-call index
per `ref`, id and name on its first fragment), the finish reason and usage, and turning a
fault or a missing `end` line into `StreamInterrupted`. Does not own: the HTTP call
(driver.py), nor hiding the usage chunk from clients that did not ask (keyrail does).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy import ByteStream, StreamInterrupted, data_event

_FINISH = {"done": "stop", "called": "tool_calls", "cut": "length"}


class Answer:
    """A `ByteStream` of OpenAI SSE over the upstream's NDJSON; `read()` for one completion."""

    def __init__(self, upstream: ByteStream, model: str, provider: str) -> None:
        self._upstream = upstream
        self._model = model
        self._provider = provider
        self._id = "chatcmpl-echo-" + secrets.token_hex(8)
        self._created = int(time.time())
        self._text: list[str] = []
        self._calls: dict[str, dict[str, Any]] = {}  # ref → {index, id, name, arguments}
        self._finish = ""
        self._usage: dict[str, int] = {}

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._sse()

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def _sse(self) -> AsyncIterator[bytes]:
        # The role chunk goes out with the first real output, so that a fault before any
        # output still lets keyrail try another credential.
        head = [self._chunk({"role": "assistant", "content": ""})]
        async for line in self._lines():
            chunks = head + self._translate(line)
            if chunks:
                head = []
                yield b"".join(data_event(orjson.dumps(c)) for c in chunks)
        yield data_event(b"[DONE]")

    async def read(self) -> bytes:
        """The whole answer as one `chat.completion`."""
        try:
            async for line in self._lines():
                self._translate(line)
        finally:
            await self.aclose()
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text)}
        if self._calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self._calls.values()
            ]  # fmt: skip
        return orjson.dumps(
            {
                "id": self._id,
                "object": "chat.completion",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "message": message, "finish_reason": self._finish}],
                "usage": self._usage,
            }
        )

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
        if not self._finish:
            raise self._broken("the answer ended before its end line")

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise self._broken("a line that is not JSON") from None
        return parsed if isinstance(parsed, dict) else {}

    def _translate(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(line.get("say"), str):
            self._text.append(line["say"])
            return [self._chunk({"content": line["say"]})]
        if isinstance(line.get("call"), dict):
            return [self._call(line["call"])]
        if isinstance(line.get("end"), str):
            self._finish = _FINISH.get(line["end"], "stop")
            prompt, completion = int(line.get("words_in", 0)), int(line.get("words_out", 0))
            self._usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}  # fmt: skip
            usage_chunk = {**self._chunk({}), "choices": [], "usage": self._usage}
            return [self._chunk({}, self._finish), usage_chunk]
        if "fault" in line:
            raise self._broken(f"the upstream failed mid-answer: {line['fault']}")
        return []  # a line kind this driver does not know yet: ignored

    def _call(self, piece: dict[str, Any]) -> dict[str, Any]:
        ref, args = str(piece.get("ref", "")), str(piece.get("args", ""))
        call = self._calls.get(ref)
        if call is None:  # the first fragment of a call carries its id and name
            call = {"index": len(self._calls), "id": ref, "name": str(piece.get("tool", ""))}
            call["arguments"] = args
            self._calls[ref] = call
            first = {"index": call["index"], "id": ref, "type": "function",
                     "function": {"name": call["name"], "arguments": args}}  # fmt: skip
            return self._chunk({"tool_calls": [first]})
        call["arguments"] += args
        return self._chunk(
            {"tool_calls": [{"index": call["index"], "function": {"arguments": args}}]}
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _broken(self, why: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"upstream {self._provider}: {why}", status=502, provider=self._provider
        )
