"""`echo`: keyrail's driver for the Echo API.

The Echo API (invented for this example) is not OpenAI-shaped:

    POST {base-url}/v1/echo            X-Echo-Key: <key>
    {"voice": "echo-1", "lines": [{"who": "user", "say": "hi"}], "tools": ["get_weather"]}

It answers 200 with NDJSON, one object per line (see stream.py), or an error status with
`{"fault": "...", "wait_ms": 60000}` (`wait_ms`: when to come back, on 429).

Owns: the block's options (`api-keys`: one credential per key), the request mapping (keyrail's
neutral request → Echo `lines`), the HTTP call, and the error mapping (status → keyrail's
decision, via `classify_upstream`, with the `wait_ms` hint). Does not own: the translation of
the answer (stream.py), credential rotation, retries or relaying (keyrail does those), nor any
client dialect: the driver is `NEUTRAL`, so keyrail hands it every client's request (Chat
Completions, Anthropic Messages, Responses) decoded into one neutral `Request`, and encodes the
neutral events it answers with back into the client's dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from keyrail_driver_echo.stream import Answer
from proxy import (
    CHAT,
    NEUTRAL,
    Call,
    Credential,
    Driver,
    ProviderBlock,
    Reply,
    ResponseStream,
    classify_upstream,
    read_error_body,
)
from proxy.dialects import Message, Request, Text, ToolCall, ToolResult


class EchoDriver(Driver):
    endpoints = frozenset({CHAT})
    dialects = NEUTRAL  # the neutral request in (`call.request`), neutral events out
    options = {"api-keys": list}
    required = frozenset({"api-keys"})
    default_base_url = "https://api.echo.invalid"

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        keys = [str(key) for key in block.options.get("api-keys") or ()]
        # The id names the credential in logs and metrics: never the key itself.
        return [
            Credential(id=f"{block.name}/{i}", provider=block.name, secret=key)
            for i, key in enumerate(keys)
        ]

    async def send(self, call: Call, credential: Credential) -> Reply:
        headers = {
            **call.headers,
            "Content-Type": "application/json",
            "X-Echo-Key": credential.secret,
        }
        response = await self.post(
            f"{self.base_url}/v1/echo",
            data=orjson.dumps(echo_request(call)),
            headers=headers,
            credential=credential,
        )
        if response.status != 200:
            data = await read_error_body(response)
            raise classify_upstream(
                response.status,
                dict(response.headers),
                data,
                provider=self.block.name,
                retry_after=_wait_seconds(data),
            )
        # keyrail reads the events up to the first one before the client sees a byte, so an
        # error there still moves on to the next key; streamed or not is keyrail's business.
        return Reply.of_events(Answer(ResponseStream(response, self.block.name), self.block.name))


def echo_request(call: Call) -> dict[str, Any]:
    """keyrail's neutral request as an Echo request."""
    request: Request | None = call.request
    assert request is not None, "keyrail hands a NEUTRAL driver the neutral request"
    lines = [{"who": "system", "say": text} for text in request.system]
    for message in request.messages:
        lines.extend(_lines(message))
    return {"voice": call.model, "lines": lines, "tools": [t.name for t in request.tools]}


def _lines(message: Message) -> list[dict[str, Any]]:
    """One message as Echo lines: tool results each on their own line, the rest on one."""
    if message.role == "assistant":
        line: dict[str, Any] = {"who": "bot", "say": _text(message)}
        calls = [p for p in message.parts if isinstance(p, ToolCall)]
        if calls:
            line["calls"] = [{"ref": c.id, "tool": c.name, "args": c.arguments} for c in calls]
        return [line]
    lines = [
        {"who": "tool", "say": p.content, "ref": p.call_id}
        for p in message.parts
        if isinstance(p, ToolResult)
    ]
    if any(isinstance(p, Text) for p in message.parts):
        lines.append({"who": "user", "say": _text(message)})
    return lines


def _text(message: Message) -> str:
    return "".join(p.text for p in message.parts if isinstance(p, Text))


def _wait_seconds(body: bytes) -> float | None:
    """The Echo API's own retry hint: `wait_ms` in the error body."""
    try:
        wait = orjson.loads(body).get("wait_ms")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return wait / 1000 if isinstance(wait, int | float) and wait >= 0 else None
