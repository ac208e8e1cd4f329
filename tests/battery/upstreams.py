"""Well-behaved upstreams for the battery's client-side tests: an OpenAI-compatible one that
answers every request the same way (whatever it was sent), and a Kiro token file."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from aiohttp import web

from proxy.tokens import format_expiry
from tests.fake_kiro import ARN

COMPLETION = {
    "id": "c", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":"ok"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


def steady_app() -> web.Application:
    """Answers every POST with a fixed completion (streamed when the body asks for it)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            stream = orjson.loads(raw).get("stream") is True
        except (orjson.JSONDecodeError, AttributeError):
            stream = False
        if not stream:
            if request.path.endswith("/embeddings"):
                return web.json_response({"object": "list", "data": [], "model": "m"})
            return web.json_response(COMPLETION)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(EVENTS))
        return response

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", handle)
    return app


def kiro_token(path: Path, access: str, refresh: str) -> Path:
    """A token file holding a pair the fake Kiro issued."""
    doc = {
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": format_expiry(time.time() + 3600),
        "profileArn": ARN,
        "authMethod": "social",
        "provider": "Github",
    }
    path.write_bytes(orjson.dumps(doc))
    path.chmod(0o600)
    return path
