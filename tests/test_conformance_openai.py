"""The conformance suite against the built-in openai-compatibility driver.

`OpenAIUpstream` adapts tests/fakes.FakeOpenAI to the kit's scenarios through its `script`.
"""

from __future__ import annotations

from typing import Any

import orjson

from drivers.openai import OpenAICompatibleDriver
from proxy.testing import DriverConformance, FakeUpstream, Scenario
from tests import fakes
from tests.fakes import FakeOpenAI, Script

MODEL = "gpt-4o-mini"


class OpenAIUpstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeOpenAI("conformance", (MODEL,))
        self.fake.script = self._script
        self.app = self.fake.app
        self.started, self.cancelled = self.fake.request_started, self.fake.disconnected

    def secrets_seen(self) -> list[str]:
        return [
            s.headers.get("Authorization", "").removeprefix("Bearer ")
            for s in self.fake.seen
            if s.path.endswith("/chat/completions")
        ]

    def _script(self, seen: fakes.Seen) -> Script:
        secret = seen.headers.get("Authorization", "").removeprefix("Bearer ")
        s = self.scenario_for(secret)
        stream = seen.body.get("stream") is True
        if s.name == "tool_calls":
            calls = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in s.tool_calls
            ]  # fmt: skip
            return Script(tool_calls=calls)
        if s.name in ("text", "usage"):
            return Script(chunks=_text_chunks(s, seen.body)) if stream else Script(json=_reply(s))
        if s.name == "rate_limited":
            return Script(status=429, headers={"Retry-After": str(s.retry_after)})
        if s.name == "unauthorized":  # as OpenAI does, the refused key is quoted back
            message = f"Incorrect API key provided: {secret}."
            error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            return Script(status=s.error_status, json={"error": error})
        if s.name in ("server_error", "bad_request"):
            return Script(status=s.error_status)
        if s.name == "break_mid_stream":
            return Script(chunks=_text_chunks(s, seen.body), break_after=2)
        # silent: nothing at all, or the role chunk and the first piece, then nothing
        if s.after_first_piece:
            return Script(chunks=_text_chunks(s, seen.body), stall_after=2)
        return Script(delay=3600)


def _usage(s: Scenario) -> dict[str, int]:
    total = s.prompt_tokens + s.completion_tokens
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": total}  # fmt: skip


def _reply(s: Scenario) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(s.text_pieces)}
    return {"id": "chatcmpl-kit", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": _usage(s)}  # fmt: skip


def _text_chunks(s: Scenario, body: dict[str, Any]) -> list[bytes]:
    out = [fakes.chunk(MODEL, {"role": "assistant", "content": ""})]
    out += [fakes.chunk(MODEL, {"content": piece}) for piece in s.text_pieces]
    out.append(fakes.chunk(MODEL, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        data = {"id": "chatcmpl-kit", "object": "chat.completion.chunk", "created": 1,
                "model": MODEL, "choices": [], "usage": _usage(s)}  # fmt: skip
        out.append(b"data: " + orjson.dumps(data) + b"\n\n")
    return [*out, b"data: [DONE]\n\n"]


class TestOpenAICompatibleConformance(DriverConformance):
    driver = "openai-compatibility"
    driver_class = OpenAICompatibleDriver
    model = MODEL
    # `dialects: [chat]`: the fake serves no /responses, so Responses clients are translated
    block_template = (
        "base-url: {base_url}/v1\napi-key-entries: [{{api-key: {secret}}}]\ndialects: [chat]\n"
    )

    def make_upstream(self) -> FakeUpstream:
        return OpenAIUpstream()
