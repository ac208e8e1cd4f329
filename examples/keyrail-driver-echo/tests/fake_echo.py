"""A fake Echo API on 127.0.0.1 that the conformance suite can put into its scenarios.

It knows the keys it issued (any other gets 401), records each request, and renders each
scenario as the real API would: NDJSON lines, or an error status with a `fault` body.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.testing import ScriptedUpstream, Seen


class FakeEcho(ScriptedUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_post("/v1/echo", self.handle)
        #: how `break_mid_stream` breaks: the connection drops, a `fault` line, or no `end` line
        self.break_with = "drop"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        return await self.answer(request, request.headers.get("X-Echo-Key", ""), True, body)

    async def render(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        s = seen.scenario
        if seen.secret not in self.issued or s.name == "unauthorized":
            # as some real APIs do, the refused key is quoted back: keyrail must not relay it
            return _fault(401, f"unknown key {seen.secret}")
        if s.name == "rate_limited":
            return _fault(429, "busy", wait_ms=s.retry_after * 1000)
        if s.name in ("server_error", "bad_request"):
            return _fault(s.error_status, "overloaded" if s.name == "server_error" else "no lines")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if s.name == "tool_calls":
            for call in s.tool_calls:
                pieces = s.fragments(call["arguments"])
                await _write(response, {"call": {"ref": call["id"], "tool": call["name"],
                                                 "args": pieces[0]}})  # fmt: skip
                for piece in pieces[1:]:
                    await _write(response, {"call": {"ref": call["id"], "args": piece}})
            end = "called"
        else:
            for i, piece in enumerate(s.text_pieces):
                await _write(response, {"say": piece})
                if i == 0 and s.name == "break_mid_stream" and self.break_with == "drop":
                    return self.drop(request, response)
                if i == 0 and s.name == "break_mid_stream" and self.break_with == "fault":
                    await _write(response, {"fault": f"overloaded (key {seen.secret})"})
                    break
                if i == 0 and s.name == "silent":
                    await self.hang()
            end = "done"
        if s.name != "break_mid_stream":
            await _write(response, {"end": end, "words_in": s.prompt_tokens,
                                    "words_out": s.completion_tokens})  # fmt: skip
        await response.write_eof()
        return response


def _fault(status: int, fault: str, **extra: int) -> web.Response:
    return web.json_response({"fault": fault, **extra}, status=status)


async def _write(response: web.StreamResponse, line: dict[str, object]) -> None:
    await response.write(orjson.dumps(line) + b"\n")
