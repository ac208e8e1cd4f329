"""`echo`: keyrail's driver for the Echo API.

The Echo API (invented for this example) is not OpenAI-shaped:

    POST {base-url}/v1/echo            X-Echo-Key: <key>
    {"voice": "echo-1", "lines": [{"who": "user", "say": "hi"}], "tools": ["get_weather"]}

It answers 200 with NDJSON, one object per line (see stream.py), or an error status with
`{"fault": "...", "wait_ms": 60000}` (`wait_ms`: when to come back, on 429).

Owns: the block's options (`api-keys`: one credential per key), the request mapping (OpenAI
chat messages → Echo `lines`), the HTTP call, and the error mapping (status → keyrail's
decision, via `classify_upstream`, with the `wait_ms` hint). Does not own: the translation of
the answer (stream.py), credential rotation, retries or relaying (keyrail does those).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from keyrail_driver_echo.stream import Answer
from proxy import (
    CHAT,
    BytesStream,
    Call,
    Credential,
    Driver,
    ProviderBlock,
    Reply,
    ResponseStream,
    classify_upstream,
    read_error_body,
)

_WHO = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "bot",
    "tool": "tool",
}


class EchoDriver(Driver):
    endpoints = frozenset({CHAT})
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
        answer = Answer(ResponseStream(response, self.block.name), call.model, self.block.name)
        if call.stream:
            return Reply(200, {"Content-Type": "text/event-stream"}, answer)
        return Reply(200, {"Content-Type": "application/json"}, BytesStream(await answer.read()))


def echo_request(call: Call) -> dict[str, Any]:
    """An OpenAI chat body as an Echo request."""
    lines = [_line(m) for m in call.body.get("messages") or () if isinstance(m, Mapping)]
    tools = [
        t["function"]["name"]
        for t in call.body.get("tools") or ()
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
    ]
    return {"voice": call.model, "lines": lines, "tools": tools}


def _line(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):  # content parts: the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    line: dict[str, Any] = {"who": _WHO.get(str(message.get("role")), "user"), "say": content or ""}
    if message.get("tool_call_id"):
        line["ref"] = message["tool_call_id"]
    calls = message.get("tool_calls") or ()
    if calls:
        line["calls"] = [
            {"ref": c["id"], "tool": c["function"]["name"], "args": c["function"]["arguments"]}
            for c in calls
        ]
    return line


def _wait_seconds(body: bytes) -> float | None:
    """The Echo API's own retry hint: `wait_ms` in the error body."""
    try:
        wait = orjson.loads(body).get("wait_ms")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return wait / 1000 if isinstance(wait, int | float) and wait >= 0 else None
