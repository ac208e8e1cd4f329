"""A fake Roo Code Router on 127.0.0.1, under `/proxy/v1` (a driver that forgets `/proxy`
gets 404s), in two moods: alive (protocols/roo.md §3-§6: Bearer token it knows, `reasoning`
object, Roo's headers recorded, `reasoning_details` fragments, a tool call over three chunks,
a usage chunk with `cost` and cache fields) and sunset (every call answered with the notice
the real router gives since 2026-05-15, in the shape `sunset_shape` says)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SUNSET = (
    "As part of our decision to sunset the Roo Code extension, we also ended the Roo Code "
    "Router. Please select a different provider."
)
USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
         "prompt_tokens_details": {"cached_tokens": 800}, "cache_creation_input_tokens": 100,
         "cost": 0.00123}  # fmt: skip


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeRoo:
    tokens: set[str] = field(default_factory=lambda: {"roo-token"})
    sunset: bool = False
    #: how the sunset notice comes: "error" (HTTP 400 OpenAI error), "gone" (410, plain
    #: text), "content" (a 200 answer whose text is the notice)
    sunset_shape: str = "error"
    seen: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/proxy/v1/chat/completions", self._chat)
        self.app.router.add_get("/proxy/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        if self.sunset:
            return self._sunset(stream=False, model="")
        data = [{"id": "xai/grok-code-fast-1", "object": "model", "owned_by": "xai",
                 "tags": ["reasoning"], "pricing": {"input": "0.0000002"}},
                {"id": "roo/free-model", "object": "model", "owned_by": "roo",
                 "tags": ["free"]}]  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.seen.append(Seen(dict(request.headers), body))
        if self.sunset:
            return self._sunset(stream=bool(body.get("stream")), model=body.get("model", ""))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            error = {"error": {"message": "Unauthorized", "type": "auth", "code": 401}}
            return web.json_response(error, status=401)
        for header in ("X-Roo-App-Version", "X-Title", "HTTP-Referer"):
            if header not in request.headers:
                self.problems.append(f"{header} missing")
        if "reasoning_effort" in body:
            self.problems.append("reasoning_effort sent instead of the reasoning object")
        if body.get("stream"):
            return await self._stream(request, body)
        message = {"role": "assistant", "content": "Hello from Roo.",
                   "reasoning_details": [{"type": "reasoning.text", "text": "Thinking.",
                                          "index": 0}]}  # fmt: skip
        return web.json_response({"id": "gen-1", "object": "chat.completion", "created": 1,
                                  "model": body["model"], "usage": USAGE,
                                  "choices": [{"index": 0, "message": message,
                                               "finish_reason": "stop"}]})  # fmt: skip

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}]}  # fmt: skip

        def detail(**d: Any) -> dict[str, Any]:
            return chunk({"reasoning_details": [d]})

        if body.get("tools"):  # one tool call over three chunks
            call = {"index": 0, "id": "call_roo_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
            events = [
                chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
                chunk({}, "tool_calls"),
            ]
        else:
            events = self._text_events(chunk, detail)
        events.append({"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [], "usage": USAGE})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def _text_events(chunk: Any, detail: Any) -> list[dict[str, Any]]:
        return [
            chunk({"role": "assistant", "content": ""}),
            detail(type="reasoning.text", text="Think", index=0),
            detail(type="reasoning.text", text="ing.", index=0),
            detail(type="reasoning.encrypted", data="opaque==", index=1),
            chunk({"content": "Hello"}), chunk({"content": " from Roo."}),
            chunk({}, "stop"),
        ]  # fmt: skip

    def _sunset(self, *, stream: bool, model: str) -> web.Response:
        if self.sunset_shape == "gone":
            return web.Response(status=410, text=SUNSET)
        if self.sunset_shape == "content" and stream:
            chunk = {"id": "gen-x", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": SUNSET},
                                  "finish_reason": "stop"}]}  # fmt: skip
            body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
            return web.Response(body=body, content_type="text/event-stream")
        if self.sunset_shape == "content":
            message = {"role": "assistant", "content": SUNSET}
            return web.json_response({"id": "gen-x", "object": "chat.completion", "model": model,
                                      "choices": [{"index": 0, "message": message,
                                                   "finish_reason": "stop"}]})  # fmt: skip
        error = {"error": {"message": SUNSET, "type": "invalid_request_error", "code": 400}}
        return web.json_response(error, status=400)
