"""A fake MiniMax on 127.0.0.1: the OpenAI-compatible chat endpoint with MiniMax's quirks, the
Coding Plan quota endpoint, and the portal's OAuth refresh grant.

It checks what the driver must send (a Bearer key it issued, `reasoning_split: true`, none of
the fields MiniMax rejects, `max_completion_tokens` rather than `max_tokens`, temperature in
(0, 1], reasoning replayed as `reasoning_details` on tool turns) and records violations in
`problems`. Answers are scripted per request (`Answer`): reasoning in `reasoning_details`
deltas (incremental), or in `<think>` tags in content, or mirrored in both, or with an orphan
`</think>`; tool calls (id and name first, then argument fragments); zero-usage placeholders on
every chunk and a last frame that is a whole `chat.completion` with the real usage; errors as
`base_resp.status_code` inside a 200 (streamed or not) or as an HTTP error envelope. Streams
are written cut at small byte boundaries.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

REJECTED = ("reasoning_effort", "tool_choice", "response_format", "parallel_tool_calls", "seed",
            "frequency_penalty", "presence_penalty", "max_tokens")  # fmt: skip
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
USAGE = {"prompt_tokens": 26, "completion_tokens": 40, "total_tokens": 66,
         "completion_tokens_details": {"reasoning_tokens": 12}, "total_characters": 0}  # fmt: skip


@dataclass
class Answer:
    """What one request gets. `shape`: how reasoning travels ("details", "think", "mirror",
    "orphan", "none"); `error`: a MiniMax code inside a 200; `http`: an HTTP error status."""

    content: str = "Hello from MiniMax."
    reasoning: str = "The user greets me; I greet back."
    shape: str = "details"
    tool_calls: list[dict[str, Any]] | None = None
    error: int | None = None
    error_after_content: bool = False  # the 200-with-error arrives after some content ...
    release: asyncio.Event | None = None  # ... once this is set (the client saw the content)
    http: int | None = None
    http_code: int = 2013
    final_frame: bool = True  # end with a whole chat.completion frame carrying the usage
    piece: int = 7  # bytes per write


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


@dataclass
class FakeMinimax:
    keys: set[str] = field(default_factory=lambda: {"mm-key-1"})
    script: Callable[[Seen], Answer] = lambda _seen: Answer()
    seen: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: per key: the `model_remains` entries the quota endpoint answers
    quotas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    quota_calls: list[str] = field(default_factory=list)
    refreshes: list[dict[str, str]] = field(default_factory=list)
    _issued: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/api/openplatform/coding_plan/remains", self._quota)
        self.app.router.add_post("/oauth/token", self._token)

    # -- chat -------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        seen = Seen(dict(request.headers), body)
        self.seen.append(seen)
        if seen.key not in self.keys:
            msg = "login fail: Please carry the API secret key in the 'Authorization' field"
            return _json({"base_resp": {"status_code": 1004, "status_msg": msg}})
        self._inspect(body)
        answer = self.script(seen)
        if answer.http is not None:
            message = f"invalid params, something is wrong ({answer.http_code})"
            envelope = {"type": "error", "error": {"type": "bad_request_error", "message": message,
                        "http_code": str(answer.http)}, "request_id": "req-1"}  # fmt: skip
            return _json(envelope, status=answer.http)
        if answer.error is not None and not answer.error_after_content:
            error = {"id": "", "choices": None, "base_resp": {"status_code": answer.error,
                     "status_msg": f"fake error {answer.error}"}}  # fmt: skip
            if body.get("stream"):
                return await _sse(request, [orjson.dumps(error)], answer.piece)
            return _json(error)
        if body.get("stream"):
            return await _sse(request, stream_frames(body, answer), answer.piece, answer.release)
        return _json(completion(body, answer))

    def _inspect(self, body: dict[str, Any]) -> None:
        if body.get("reasoning_split") is not True:
            self.problems.append("reasoning_split is not true")
        for name in REJECTED:
            if name in body:
                self.problems.append(f"{name} was sent")
        for tool in body.get("tools") or []:
            if "strict" in tool.get("function", {}):
                self.problems.append("tool strict was sent")
        temperature = body.get("temperature")
        if temperature is not None and not 0 < temperature <= 1:
            self.problems.append(f"temperature {temperature} out of (0, 1]")
        messages = body.get("messages") or []
        for i, m in enumerate(messages):
            if m.get("role") == "assistant" and m.get("tool_calls"):
                if not m.get("reasoning_details"):
                    self.problems.append(f"message {i}: tool turn without reasoning_details")
                if "reasoning_content" in m:
                    self.problems.append(f"message {i}: reasoning_content sent")

    # -- quota and OAuth --------------------------------------------------------------------

    async def _quota(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.quota_calls.append(key)
        if key not in self.quotas:
            return _json({"base_resp": {"status_code": 1004, "status_msg": "no coding plan"}})
        return _json({"model_remains": self.quotas[key],
                      "base_resp": {"status_code": 0, "status_msg": "success"}})  # fmt: skip

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.refreshes.append({k: str(v) for k, v in form.items()})
        if form.get("grant_type") != "refresh_token" or not str(form.get("refresh_token", "")):
            return _json({"status": "error", "base_resp": {"status_code": 1004}}, status=400)
        n = next(self._issued)
        access = f"mm-oauth-{n}"
        self.keys.add(access)
        return _json({"status": "success", "access_token": access,
                      "refresh_token": f"mm-refresh-{n}", "expired_in": 3600,
                      "token_type": "Bearer"})  # fmt: skip


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _sse(
    request: web.Request, payloads: list[bytes], piece: int, release: asyncio.Event | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    late = [p for p in payloads if p.startswith(b'{"base_resp"')] if release else []
    whole = b"".join(b"data: " + p + b"\n\n" for p in payloads if p not in late)
    for i in range(0, len(whole), piece):
        await response.write(whole[i : i + piece])
    if release is not None and late:
        await release.wait()
        await response.write(b"".join(b"data: " + p + b"\n\n" for p in late))
    await response.write_eof()
    return response


def _content_with_reasoning(answer: Answer) -> str:
    if answer.shape in ("think", "mirror"):
        return f"<think>{answer.reasoning}</think>\n\n{answer.content}"
    if answer.shape == "orphan":
        return f"</think>\n\n{answer.content}"
    return answer.content


def completion(body: dict[str, Any], answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": _content_with_reasoning(answer)}
    if answer.shape in ("details", "mirror", "orphan"):
        message["reasoning_details"] = [{"type": "reasoning.text", "id": "r1",
                                         "text": answer.reasoning}]  # fmt: skip
    finish = "stop"
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
        finish = "tool_calls"
    return {"id": "04ecb5d9fake", "object": "chat.completion", "created": 1755153113,
            "model": body["model"], "choices": [{"index": 0, "message": message,
                                                 "finish_reason": finish}],
            "usage": USAGE, "input_sensitive": False, "output_sensitive": False,
            "input_sensitive_type": 0, "output_sensitive_type": 0,
            "base_resp": {"status_code": 0, "status_msg": ""}}  # fmt: skip


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return orjson.dumps({"id": "04ecb5d9fake", "object": "chat.completion.chunk",
                         "created": 1755153113, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                         "usage": ZERO_USAGE, "base_resp": {"status_code": 0}})  # fmt: skip


def stream_frames(body: dict[str, Any], answer: Answer) -> list[bytes]:
    model = body["model"]
    out = [_chunk(model, {"role": "assistant", "content": ""})]
    if answer.shape in ("details", "mirror", "orphan"):
        words = answer.reasoning.split(" ")
        for i, word in enumerate(words):  # incremental, not cumulative
            text = word if i == len(words) - 1 else word + " "
            detail = {"type": "reasoning.text", "id": "r1", "text": text}
            out.append(_chunk(model, {"reasoning_details": [detail]}))
    content = _content_with_reasoning(answer)
    for i in range(0, len(content), 5):
        out.append(_chunk(model, {"content": content[i : i + 5]}))
    if answer.error is not None and answer.error_after_content:
        out.append(orjson.dumps({"base_resp": {"status_code": answer.error,
                                               "status_msg": "fake late error"}}))  # fmt: skip
        return out
    finish = "stop"
    for i, call in enumerate(answer.tool_calls or []):
        first = {"index": i, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
        out.append(_chunk(model, {"tool_calls": [first]}))
        args = call["function"]["arguments"]
        for j in range(0, len(args), 4):
            piece = {"index": i, "function": {"arguments": args[j : j + 4]}}
            out.append(_chunk(model, {"tool_calls": [piece]}))
        finish = "tool_calls"
    out.append(_chunk(model, {}, finish))
    if answer.final_frame:
        out.append(orjson.dumps(completion(body, answer)))
    out.append(b"[DONE]")
    return out
