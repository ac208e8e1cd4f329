"""Cursor's auth pieces on their own: PKCE values, JWT expiry, the exchanged-token cache,
the login refresh keeping a refresh token Cursor did not rotate, polling failures, and the
small parsers (server config, unary answers, MCP arguments, conversation ids)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drivers.cursor import auth, messages
from drivers.cursor.driver import HEARTBEAT_SECONDS, server_config
from drivers.cursor.request import conversation_id, model_for_effort
from drivers.cursor.wire import message
from proxy.errors import CredentialRejected, UpstreamError
from proxy.testing.plugin import StartApp
from proxy.tokens import Token, parse_expiry
from tests.fake_cursor import jwt


def test_pkce_values() -> None:
    login = auth.new_login()
    assert len(login.verifier) == 128 and "=" not in login.verifier  # 96 bytes, base64url
    digest = hashlib.sha256(login.verifier.encode()).digest()
    assert login.challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert str(uuid.UUID(login.uuid)) == login.uuid
    assert login.url() == (
        f"https://cursor.com/loginDeepControl?challenge={login.challenge}&uuid={login.uuid}"
        "&mode=login&redirectTarget=cli"
    )


def test_expiry_is_exp_or_an_hour() -> None:
    assert auth.expires_at(jwt(2_000_000_000.0), 0) == 2_000_000_000.0
    assert auth.expires_at("not-a-jwt", 100.0) == 3700.0
    assert auth.jwt_claims(jwt(1.0, sub="auth0|user_x"))["sub"] == "auth0|user_x"


async def test_key_tokens_single_flight_and_margin() -> None:
    now = [1000.0]
    cache = auth.KeyTokens(clock=lambda: now[0])
    calls = 0
    gate = asyncio.Event()

    async def run() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"accessToken": jwt(now[0] + 3600)}

    waiters = [asyncio.ensure_future(cache.get("crsr_k", "u", run)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    tokens = await asyncio.gather(*waiters)
    assert calls == 1 and len(set(tokens)) == 1
    now[0] += 3600 - 301  # still outside the 5-minute margin
    assert await cache.get("crsr_k", "u", run) == tokens[0] and calls == 1
    now[0] += 2  # inside it: exchanged again
    assert await cache.get("crsr_k", "u", run) != tokens[0] and calls == 2
    cache.reject("crsr_k", "u", "some-older-token")  # not the held one: kept
    assert await cache.get("crsr_k", "u", run) and calls == 2


async def test_refresh_keeps_a_refresh_token_cursor_did_not_rotate(
    start_upstream_app: StartApp,
) -> None:
    seen: list[tuple[str, bytes]] = []

    async def exchange(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], await request.read()))
        return web.json_response({"accessToken": jwt(2_000_000_000.0)})

    app = web.Application()
    app.router.add_post("/auth/exchange_user_api_key", exchange)
    url = await start_upstream_app(app)
    token = Token("old-access", "rt-1", None, {})
    async with aiohttp.ClientSession() as session:
        fields = await auth.refresh_login(
            session, token, auth_url=url, provider="cursor", proxy=None, headers={}
        )
    assert seen == [("Bearer rt-1", b"{}")]
    assert fields["refresh_token"] == "rt-1"
    expires = parse_expiry(fields["expires_at"])
    assert expires is not None and abs(expires - (2_000_000_000.0 - 300)) < 1


async def test_exchange_refusal_and_poll_failure(start_upstream_app: StartApp) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": "bad key crsr_secret"}, status=401)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/auth/exchange_user_api_key", refuse)
    app.router.add_get("/auth/poll", broken)
    url = await start_upstream_app(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CredentialRejected) as caught:
            await auth.exchange(session, url, "crsr_secret", provider="c", proxy=None, headers={})
        assert "crsr_secret" not in caught.value.message
        with pytest.raises(UpstreamError):
            await auth.poll(session, url, auth.new_login(), first_wait=0.01)


def test_server_config_agent_url_and_http1() -> None:
    payload = message((2, "https://telemetry.example"), (3, "https://agentn.global.api5.cursor.sh"))
    assert server_config(payload + message((7, 1))) == (
        "https://agentn.global.api5.cursor.sh",
        True,
    )
    assert server_config(payload) == ("https://agentn.global.api5.cursor.sh", False)
    assert server_config(b"\xff") == ("", False)


def test_mcp_call_without_id_gets_one_and_raw_values_survive() -> None:
    entry = message((1, "q"), (2, b'{"raw": 1}'))  # not a Value: kept as the JSON it is
    call = messages.mcp_call(message((1, "search"), (2, entry)))
    assert call.name == "search" and call.call_id.startswith("call_")
    assert call.arguments == '{"q":{"raw":1}}'


def test_conversation_id_is_stable_and_uuid_shaped() -> None:
    a = conversation_id("sys", "hello")
    assert a == conversation_id("sys", "hello") != conversation_id("sys", "other")
    assert str(uuid.UUID(a)) == a


def test_effort_suffix_and_speed() -> None:
    known = {"gpt-5.5", "gpt-5.5-high", "gpt-5.5-high-fast", "grok-4.5-xhigh"}
    assert model_for_effort("gpt-5.5-fast", "high", known) == "gpt-5.5-high-fast"
    assert model_for_effort("grok-4.5", "xhigh", known) == "grok-4.5-xhigh"
    assert model_for_effort("gpt-5.5", None, known) == "gpt-5.5"
    assert model_for_effort("gpt-5.5", "high", set()) == "gpt-5.5"


def test_heartbeat_every_five_seconds() -> None:
    assert HEARTBEAT_SECONDS == 5.0 and messages.heartbeat() == b"\x3a\x00"


async def test_a_parked_turn_nobody_resumes_is_aborted_when_its_time_is_up() -> None:
    from drivers.cursor.session import Parked, Turn
    from drivers.cursor.transport import Channel

    class Quiet(Channel):
        def __init__(self) -> None:
            self.reset_done = asyncio.Event()

        async def send(self, message: bytes) -> None:
            return None

        async def receive(self) -> bytes:
            await asyncio.Event().wait()
            return b""

        async def close(self) -> None:
            return None

        def reset(self) -> None:
            self.reset_done.set()

    channel = Quiet()
    turn = Turn(channel, blobs={}, tools=[], heartbeat_seconds=60)
    turn.start()
    turn.pending["call_1"] = (1, "exec-1")
    turn.asked.append("call_1")
    Parked(ttl=0.05).park(turn)
    async with asyncio.timeout(5):
        await channel.reset_done.wait()
    assert turn.done
