"""A fake Kiro on 127.0.0.1: `generateAssistantResponse` answering real event-stream frames, and
the social (`/refreshToken`) and OIDC (`/token`) refresh endpoints, with rotating refresh tokens.

Each of Kiro's hosts is a path prefix with its own rules (kiro.md, December 2026), so a block
points `base-urls` / `management-url` at them:

    /runtime/...        profileArn required (400 without), the agent fields refused with
                        400 REQUEST_BODY_INVALID, no X-Amz-Target
    /codewhisperer/...  X-Amz-Target required, profileArn for social logins only
    /q/...              profileArn for social logins only
    /...                (no prefix) the same as /q, for blocks with one `base-url`
    /management/...     ListAvailableProfiles, getUsageLimits, ListAvailableModels

A persona in `retired` answers every chat with its scripted answer (`NOT_FOUND`, `RETIRED`).
The model list is served in pages (`model_pages`), the usage answer from `usage`, and every
call to the management operations is counted.

It checks what the real service is known to insist on (bearer token it issued, the Kiro headers,
the body shape: non-empty content, alternating history, tool results answering a tool use,
`profileArn` only for social logins) and records every violation in `problems`. Answers are
scripted per request; frames are built with correct CRCs and written cut at random byte
boundaries (1-byte pieces, pieces straddling frames, several frames in one write).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from drivers.kiro import eventstream

BAD_TOKEN = {"message": "The bearer token included in the request is invalid.", "reason": None}
ARN = "arn:aws:codewhisperer:us-east-1:123456789012:profile/FAKEPROFILE"
TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
PERSONAS = ("runtime", "codewhisperer", "q")
AGENT_FIELDS = ("agentTaskType", "agentContinuationId")
RETIRED = (
    403,
    {"message": "This endpoint has been retired. Use runtime.us-east-1.kiro.dev instead.",
     "reason": None},
)  # fmt: skip
NOT_FOUND = (404, {"message": "Not Found", "reason": None})


def text_frames(*parts: str, context: float = 12.5) -> list[bytes]:
    frames = [
        eventstream.event("assistantResponseEvent", orjson.dumps({"content": p})) for p in parts
    ]
    frames.append(eventstream.event("meteringEvent", b'{"unit":"credit","usage":0.25}'))
    frames.append(
        eventstream.event("contextUsageEvent", orjson.dumps({"contextUsagePercentage": context}))
    )
    return frames


def tool_frames(tool_id: str, name: str, pieces: list[str]) -> list[bytes]:
    """One tool use: its input in `pieces` (stop:false), then the empty stop:true frame."""
    frames = [
        eventstream.event(
            "toolUseEvent",
            orjson.dumps({"name": name, "toolUseId": tool_id, "input": p, "stop": False}),
        )
        for p in pieces
    ]
    stop = {"name": name, "toolUseId": tool_id, "input": "", "stop": True}
    frames.append(eventstream.event("toolUseEvent", orjson.dumps(stop)))
    return frames


@dataclass
class Answer:
    """One scripted answer: an HTTP error (`status`, `json`), or event-stream `frames`."""

    frames: list[bytes] = field(default_factory=lambda: text_frames("Hello", " from", " Kiro."))
    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: bytes appended after the frames (e.g. a corrupted frame)
    tail: bytes = b""
    #: drop the connection after this many bytes
    cut_at: int | None = None
    #: when set, the 200 headers go out, then nothing until it is set (a hung upstream)
    hold: asyncio.Event | None = None


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]
    persona: str = "q"

    @property
    def token(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")

    @property
    def current(self) -> dict[str, Any]:
        return dict(self.body["conversationState"]["currentMessage"]["userInputMessage"])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.body["conversationState"].get("history", []))


class FakeKiro:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.chats: list[Seen] = []
        self.refreshes: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.script: Callable[[Seen], Answer] = lambda seen: Answer()
        self.access_tokens: set[str] = set()
        self.refresh_tokens: set[str] = set()
        self.oidc_clients: dict[str, str] = {}  # client id → secret
        #: access tokens of social logins: profileArn must come with them, and only with them
        self.social_tokens: set[str] = set()
        #: when set, a refresh waits for it before answering
        self.refresh_gate: asyncio.Event | None = None
        self.refresh_started = asyncio.Event()
        self._serial = itertools.count(1)
        #: persona → the (status, JSON body) it answers every chat with (a moved host)
        self.retired: dict[str, tuple[int, Any]] = {}
        #: access token → the profile ARN ListAvailableProfiles gives (missing: no profile)
        self.profiles: dict[str, str] = {}
        self.profile_status = 200
        #: ListAvailableModels answers these pages, joined by nextToken; None: a 500
        self.model_pages: list[list[str]] | None = [["auto", "claude-sonnet-4.5"]]
        self.usage: dict[str, Any] = {"used": 12, "limit": 50, "reset": 1_893_456_000}
        self.usage_status = 200
        #: (path, query) of every management call
        self.management_calls: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_post("/generateAssistantResponse", self._chat)
        for persona in PERSONAS:
            self.app.router.add_post(f"/{persona}/generateAssistantResponse", self._chat)
        for prefix in ("", "/management", "/runtime"):
            self.app.router.add_get(f"{prefix}/ListAvailableModels", self._models)
            self.app.router.add_get(f"{prefix}/getUsageLimits", self._usage)
            self.app.router.add_post(f"{prefix}/ListAvailableProfiles", self._profiles)
        self.app.router.add_post("/refreshToken", self._social_refresh)
        self.app.router.add_post("/token", self._oidc_refresh)

    def chats_at(self, persona: str) -> list[Seen]:
        return [seen for seen in self.chats if seen.persona == persona]

    def issue(self, name: str, *, social: bool = True) -> tuple[str, str]:
        """A valid (access, refresh) pair, as the IDE's login would leave it."""
        access, refresh = f"at-{name}", f"rt-{name}"
        self.access_tokens.add(access)
        if social:
            self.social_tokens.add(access)
        self.refresh_tokens.add(refresh)
        return access, refresh

    # -- chat --------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        persona = request.path.split("/")[1] if request.path.count("/") > 1 else "q"
        seen = Seen(dict(request.headers), orjson.loads(await request.read()), persona)
        self.chats.append(seen)
        if persona in self.retired:
            status, body = self.retired[persona]
            return web.json_response(body, status=status)
        if seen.token not in self.access_tokens:
            return web.json_response(BAD_TOKEN, status=403)
        refused = self._host_rules(seen)
        if refused is not None:
            return refused
        problem = self._check(seen)
        if problem:
            self.problems.append(problem)
            return web.json_response(
                {"message": "Improperly formed request.", "reason": None}, status=400
            )
        answer = self.script(seen)
        if answer.status != 200:
            return web.json_response(answer.json, status=answer.status, headers=answer.headers)
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        if answer.hold is not None:
            await answer.hold.wait()
        data = b"".join(answer.frames) + answer.tail
        if answer.cut_at is not None:
            data = data[: answer.cut_at]
        for piece in self._cut(data):
            await response.write(piece)
        if answer.cut_at is not None:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    def _cut(self, data: bytes) -> list[bytes]:
        pieces, pos = [], 0
        while pos < len(data):
            size = self.rng.choice((1, 1, 3, 7, 16, 50, 200, 1000))
            pieces.append(data[pos : pos + size])
            pos += size
        return pieces

    def _check(self, seen: Seen) -> str | None:
        h = seen.headers
        for name, value in (
            ("Content-Type", "application/json"),
            ("x-amzn-codewhisperer-optout", "true"),
            ("x-amzn-kiro-agent-mode", "vibe"),
        ):
            if h.get(name) != value:
                return f"header {name} is {h.get(name)!r}"
        if not h.get("amz-sdk-invocation-id"):
            return "no amz-sdk-invocation-id"
        state = seen.body.get("conversationState") or {}
        if not state.get("conversationId"):
            return "no conversationId"
        current = seen.current
        if not current.get("content") or not current.get("modelId"):
            return "currentMessage without content or modelId"
        roles = []
        uses: set[str] = set()
        for item in seen.history:
            if len(item) != 1:
                return f"history item with keys {sorted(item)}"
            role = next(iter(item))
            roles.append(role)
            msg = item[role]
            if not msg.get("content"):
                return "empty history content"
            uses.update(u["toolUseId"] for u in msg.get("toolUses", []))
            if role == "userInputMessage" and not self._results_ok(msg, uses):
                return "orphan tool result in history"
        expected = itertools.cycle(["userInputMessage", "assistantResponseMessage"])
        if any(r != e for r, e in zip(roles, expected, strict=False)) or len(roles) % 2:
            return f"history does not alternate: {roles}"
        if not self._results_ok(current, uses):
            return "orphan tool result"
        if seen.persona == "runtime":
            return None  # the runtime host's own rules are in _host_rules
        social = seen.token in self.social_tokens
        if social != ("profileArn" in seen.body):
            return f"profileArn {'missing' if social else 'sent'} for this login"
        return None

    def _host_rules(self, seen: Seen) -> web.Response | None:
        """What one host refuses that another accepts (kiro.md K3, K4)."""
        target = seen.headers.get("X-Amz-Target")
        if seen.persona == "codewhisperer" and target != TARGET:
            self.problems.append(f"X-Amz-Target {target!r} on codewhisperer")
            return web.json_response({"message": "Unknown operation", "reason": None}, status=400)
        if seen.persona != "codewhisperer" and target is not None:
            self.problems.append(f"X-Amz-Target sent to {seen.persona}")
        if seen.persona != "runtime":
            return None
        state = seen.body.get("conversationState") or {}
        for name in AGENT_FIELDS:
            if name in state:
                return web.json_response(
                    {
                        "message": f"Invalid request body: conversationState.{name} is not "
                        "a recognised field",
                        "reason": "REQUEST_BODY_INVALID",
                    },
                    status=400,
                )
        if "agentMode" in seen.body:
            return web.json_response(
                {"message": "Invalid request body: agentMode", "reason": "REQUEST_BODY_INVALID"},
                status=400,
            )
        if not seen.body.get("profileArn"):
            return web.json_response({"message": "profileArn is required", "reason": None},
                                     status=400)  # fmt: skip
        return None

    # -- management --------------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    async def _profiles(self, request: web.Request) -> web.Response:
        self.management_calls.append((request.path, dict(request.query)))
        if self._bearer(request) not in self.access_tokens:
            return web.json_response(BAD_TOKEN, status=403)
        if self.profile_status != 200:
            return web.json_response({"message": "Access denied", "reason": None},
                                     status=self.profile_status)  # fmt: skip
        arn = self.profiles.get(self._bearer(request))
        profiles = [{"arn": arn, "profileName": "KiroProfile"}] if arn else []
        return web.json_response({"profiles": profiles})

    async def _models(self, request: web.Request) -> web.Response:
        self.management_calls.append((request.path, dict(request.query)))
        if self._bearer(request) not in self.access_tokens:
            return web.json_response(BAD_TOKEN, status=403)
        if self.model_pages is None:
            return web.json_response({"message": "Internal error", "reason": None}, status=500)
        token = request.query.get("nextToken", "page-0")
        index = int(token.removeprefix("page-"))
        page: dict[str, Any] = {
            "models": [
                {"modelId": m, "modelName": m, "description": f"{m} model", "rateMultiplier": 1.0,
                 "rateUnit": "Credit", "tokenLimits": {"maxInputTokens": 200000}}
                for m in self.model_pages[index]
            ]
        }  # fmt: skip
        if index + 1 < len(self.model_pages):
            page["nextToken"] = f"page-{index + 1}"
        return web.json_response(page)

    async def _usage(self, request: web.Request) -> web.Response:
        self.management_calls.append((request.path, dict(request.query)))
        if self._bearer(request) not in self.access_tokens:
            return web.json_response(BAD_TOKEN, status=403)
        if self.usage_status != 200:
            return web.json_response({"message": "Throttled", "reason": None},
                                     status=self.usage_status)  # fmt: skip
        u = self.usage
        return web.json_response(
            {
                "daysUntilReset": 12,
                "nextDateReset": u["reset"],
                "userInfo": {"email": "user@example.com", "userId": "u-1"},
                "subscriptionInfo": {
                    "subscriptionTitle": "KIRO FREE",
                    "type": "Q_DEVELOPER_STANDALONE_FREE",
                },
                "usageBreakdownList": [
                    {
                        "resourceType": "AGENTIC_REQUEST",
                        "displayName": "Credits",
                        "usageLimitWithPrecision": u["limit"],
                        "currentUsageWithPrecision": u["used"],
                        "usageLimit": int(u["limit"]),
                        "currentUsage": int(u["used"]),
                        "nextDateReset": u["reset"],
                    }
                ],
            }
        )

    @staticmethod
    def _results_ok(message: dict[str, Any], uses: set[str]) -> bool:
        context = message.get("userInputMessageContext") or {}
        return all(r["toolUseId"] in uses for r in context.get("toolResults", []))

    # -- refresh -----------------------------------------------------------------------------

    async def _rotate(self, refresh: str, social: bool) -> web.Response:
        self.refresh_started.set()
        if self.refresh_gate is not None:
            await self.refresh_gate.wait()
        if refresh not in self.refresh_tokens:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid refresh token provided"},
                status=400,
            )
        self.refresh_tokens.discard(refresh)  # rotation: a refresh token works once
        n = next(self._serial)
        access, new_refresh = f"at-refreshed-{n}", f"rt-refreshed-{n}"
        self.access_tokens.add(access)
        self.refresh_tokens.add(new_refresh)
        answer: dict[str, Any] = {
            "accessToken": access,
            "refreshToken": new_refresh,
            "expiresIn": 3600,
        }
        if social:
            self.social_tokens.add(access)
            answer["profileArn"] = ARN
        else:
            answer["tokenType"] = "Bearer"
        return web.json_response(answer)

    async def _social_refresh(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.refreshes.append({"path": request.path, **body})
        if set(body) != {"refreshToken"}:
            self.problems.append(f"social refresh body keys {sorted(body)}")
        return await self._rotate(str(body.get("refreshToken")), social=True)

    async def _oidc_refresh(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.refreshes.append({"path": request.path, **body})
        if body.get("grantType") != "refresh_token" or self.oidc_clients.get(
            str(body.get("clientId"))
        ) != body.get("clientSecret"):
            return web.json_response({"error": "invalid_client"}, status=400)
        return await self._rotate(str(body.get("refreshToken")), social=False)
