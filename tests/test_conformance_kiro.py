"""The conformance suite against the built-in kiro driver.

`KiroUpstream` adapts tests/fake_kiro.FakeKiro (binary AWS event-stream answers, OAuth token
files with rotating refresh tokens) to the kit's scenarios: through its `script`, by revoking
tokens for `unauthorized`, and with one middleware for `silent`, which FakeKiro cannot do.
Each credential is one block with its own token file (Kiro has one login per block).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from drivers.kiro import eventstream
from proxy.testing import DriverConformance, FakeUpstream, Scenario, watch
from proxy.testing.upstream import Handler
from tests.fake_kiro import Answer, FakeKiro, Seen, text_frames, tool_frames
from tests.test_kiro import write_token


def _usage_frame(s: Scenario) -> bytes:
    usage = {"outputTokens": s.completion_tokens, "uncachedInputTokens": s.prompt_tokens}
    return eventstream.event("messageMetadataEvent", orjson.dumps({"tokenUsage": usage}))


class KiroUpstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.fake = FakeKiro()
        self.fake.script = self._script
        self.app = self.fake.app
        self.refresh_of: dict[str, str] = {}
        watch(self.app, self.started, self.cancelled)
        self.app.middlewares.append(self._silent)

    def issue_secret(self, index: int) -> str:
        access, refresh = self.fake.issue(f"kit-{index}")
        self.refresh_of[access] = refresh
        self.issued += [access, refresh]
        return access

    def secrets_seen(self) -> list[str]:
        return [seen.token for seen in self.fake.chats]

    def set_scenario(self, name: str, *, secret: str | None = None, **params: Any) -> None:
        super().set_scenario(name, secret=secret, **params)
        if name == "unauthorized":  # the access token is refused and cannot be refreshed
            for access in [secret] if secret else list(self.refresh_of):
                self.fake.access_tokens.discard(access)
                self.fake.refresh_tokens.discard(self.refresh_of[access])

    def _script(self, seen: Seen) -> Answer:
        s = self.scenario_for(seen.token)
        if s.name in ("text", "usage"):
            return Answer(frames=[*text_frames(*s.text_pieces)[:-2], _usage_frame(s)])
        if s.name == "tool_calls":
            frames = [
                frame
                for c in s.tool_calls
                for frame in tool_frames(c["id"], c["name"], Scenario.fragments(c["arguments"]))
            ]
            return Answer(frames=[*frames, _usage_frame(s)])
        if s.name == "break_mid_stream":
            frames = text_frames(*s.text_pieces)
            return Answer(frames=frames, cut_at=len(frames[0]) + 5)
        headers = {"Retry-After": str(s.retry_after)} if s.name == "rate_limited" else {}
        message = {"rate_limited": "Rate exceeded", "bad_request": "Improperly formed request."}
        return Answer(
            status=s.error_status,
            json={"message": message.get(s.name, "Service unavailable"), "reason": None},
            headers=headers,
        )

    @web.middleware
    async def _silent(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        s = self.scenario_for(token)
        if request.path != "/generateAssistantResponse" or s.name != "silent":
            return await handler(request)
        if s.after_first_piece:
            response = web.StreamResponse(
                headers={"Content-Type": "application/vnd.amazon.eventstream"}
            )
            await response.prepare(request)
            await response.write(text_frames(s.text_pieces[0])[0])
        await asyncio.Event().wait()  # until the request is cancelled
        raise AssertionError("unreachable")


class TestKiroConformance(DriverConformance):
    driver = "kiro"
    model = "kiro-claude-sonnet-4-5"  # the installed entry point is used (no driver_class)

    def make_upstream(self) -> FakeUpstream:
        return KiroUpstream()

    def block_yaml(
        self, upstream: FakeUpstream, *, name: str, base_url: str, secret: str, tmp_path: Path
    ) -> str:
        assert isinstance(upstream, KiroUpstream)
        path = write_token(tmp_path / f"{name}.json", secret, upstream.refresh_of[secret])
        return f"token-file: {path}\nbase-url: {base_url}\nrefresh-url: {base_url}\n"
