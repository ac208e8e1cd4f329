"""Cursor credentials: user API keys exchanged for tokens, login tokens refreshed, PKCE login.

Owns: `POST {auth}/auth/exchange_user_api_key` (Bearer = a `crsr_…` key or a login's refresh
token, body `{}`, answer `{accessToken, refreshToken?}`), the JWT `exp` read without checking
the signature (the token is Cursor's to judge; we only need its expiry), `KeyTokens` (one
exchanged token per API key, re-exchanged 5 minutes before `exp` or after a rejection, one
exchange at a time per key however many requests wait), the token-file refresher for
proxy/tokens.py, and the PKCE login (`keyrail login cursor`): the browser URL and the polling.
Does not own: holding or saving login tokens (proxy/tokens.py), the agent calls (driver.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.errors import CredentialRejected, UpstreamError, UpstreamUnavailable, classify_upstream
from proxy.redact import REDACTOR
from proxy.tokens import Token, format_expiry

DEFAULT_AUTH_URL = "https://api2.cursor.sh"
LOGIN_URL = "https://cursor.com/loginDeepControl"
EXCHANGE_PATH = "/auth/exchange_user_api_key"
POLL_PATH = "/auth/poll"
#: Re-exchange or refresh this long before the token's `exp`.
EXPIRY_MARGIN = 300.0
#: Assumed lifetime of a token whose `exp` cannot be read.
DEFAULT_LIFETIME = 3600.0
_TIMEOUT = aiohttp.ClientTimeout(total=30)
_LIMIT = 64 * 1024


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT's payload, unverified; {} when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def expires_at(token: str, now: float) -> float:
    exp = jwt_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) else now + DEFAULT_LIFETIME


async def exchange(
    session: aiohttp.ClientSession,
    auth_url: str,
    bearer: str,
    *,
    provider: str,
    proxy: str | None,
    headers: Mapping[str, str],
) -> dict[str, Any]:
    """One exchange: `{accessToken, refreshToken?}`, or an `UpstreamError`."""
    try:
        async with session.post(
            auth_url.rstrip("/") + EXCHANGE_PATH,
            data=b"{}",
            headers={
                **headers,
                "Content-Type": "application/json",
                "Authorization": f"Bearer {bearer}",
            },
            proxy=proxy,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as response:
            status = response.status
            data = await response.content.read(_LIMIT)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"{provider}: Cursor's auth host unreachable ({type(exc).__name__})",
            status=502,
            provider=provider,
        ) from None
    if status >= 300:
        # Never relay the body: it answers a request that carried a secret.
        if status in (400, 401, 403):
            raise CredentialRejected(
                f"{provider}: Cursor refused the key or login token ({status}); "
                "check the api-key or run `keyrail login cursor` again",
                status=401,
                provider=provider,
            )
        error = classify_upstream(status, {}, b"", provider=provider)
        error.message = f"{provider}: Cursor's auth host answered {status}"
        raise error
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("accessToken"), str):
        raise UpstreamUnavailable(
            f"{provider}: Cursor's auth host answered without an access token",
            status=502,
            provider=provider,
        )
    REDACTOR.add(
        (answer["accessToken"], str(answer.get("refreshToken") or "")), owner=f"{provider} token"
    )
    return answer


@dataclass(slots=True)
class _Exchanged:
    token: str
    refresh_at: float


class KeyTokens:
    """The exchanged token of each user API key (process-wide, so reloads keep them)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._tokens: dict[str, _Exchanged] = {}
        self._flights: dict[str, asyncio.Future[str]] = {}

    @staticmethod
    def _key(api_key: str, auth_url: str) -> str:
        return hashlib.sha256(f"{auth_url}\0{api_key}".encode()).hexdigest()

    async def get(
        self, api_key: str, auth_url: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> str:
        key = self._key(api_key, auth_url)
        held = self._tokens.get(key)
        if held is not None and self.clock() < held.refresh_at:
            return held.token
        return await self._single_flight(key, run)

    def reject(self, api_key: str, auth_url: str, token: str) -> None:
        """Cursor refused `token`: the next `get` exchanges again (unless already done)."""
        key = self._key(api_key, auth_url)
        held = self._tokens.get(key)
        if held is not None and held.token == token:
            del self._tokens[key]

    async def _single_flight(self, key: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> str:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._exchange(key, run))
            self._flights[key] = flight
            flight.add_done_callback(lambda f: self._landed(key, f))
        return await asyncio.shield(flight)

    def _landed(self, key: str, flight: asyncio.Future[str]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()

    async def _exchange(self, key: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> str:
        answer = await run()
        token = str(answer["accessToken"])
        now = self.clock()
        self._tokens[key] = _Exchanged(token, expires_at(token, now) - EXPIRY_MARGIN)
        return token


_KEY_TOKENS = KeyTokens()


def key_tokens() -> KeyTokens:
    return _KEY_TOKENS


async def refresh_login(
    session: aiohttp.ClientSession,
    token: Token,
    *,
    auth_url: str,
    provider: str,
    proxy: str | None,
    headers: Mapping[str, str],
) -> Mapping[str, Any]:
    """New fields for a login token file (the proxy/tokens.py `Refresher` contract)."""
    if not token.refresh_token:
        raise CredentialRejected(
            f"{provider}: the token file has no refresh token; run `keyrail login cursor`",
            status=401,
            provider=provider,
        )
    answer = await exchange(
        session, auth_url, token.refresh_token, provider=provider, proxy=proxy, headers=headers
    )
    access = str(answer["accessToken"])
    return {
        "access_token": access,
        "refresh_token": answer.get("refreshToken") or token.refresh_token,
        "expires_at": format_expiry(expires_at(access, time.time()) - EXPIRY_MARGIN),
    }


# -- PKCE login -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    verifier: str
    challenge: str
    uuid: str

    def url(self, login_url: str = LOGIN_URL) -> str:
        return (
            f"{login_url}?challenge={self.challenge}&uuid={self.uuid}&mode=login&redirectTarget=cli"
        )


def new_login() -> Login:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(96)).rstrip(b"=").decode()
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return Login(verifier, challenge, str(uuid.uuid4()))


async def poll(
    session: aiohttp.ClientSession,
    auth_url: str,
    login: Login,
    *,
    first_wait: float = 1.0,
    max_wait: float = 10.0,
    tries: int = 150,
) -> dict[str, Any]:
    """Poll until the user finished in the browser: `{accessToken, refreshToken}`.

    404 means "not yet" (waits grow by 1.2 times from `first_wait` up to `max_wait`); anything else
    that is not 2xx fails. Raises `UpstreamError` on failure or after `tries` polls."""
    wait = first_wait
    url = auth_url.rstrip("/") + POLL_PATH
    for _ in range(tries):
        async with session.get(
            url, params={"uuid": login.uuid, "verifier": login.verifier}, timeout=_TIMEOUT
        ) as response:
            if response.status == 404:
                await asyncio.sleep(wait)  # polling the user's progress: the wait is the point
                wait = min(wait * 1.2, max_wait)
                continue
            data = await response.content.read(_LIMIT)
            if response.status >= 300:
                raise UpstreamUnavailable(
                    f"Cursor's login poll answered {response.status}", status=502
                )
        answer = orjson.loads(data)
        if not isinstance(answer, dict) or not answer.get("accessToken"):
            raise UpstreamUnavailable("Cursor's login poll answered without a token", status=502)
        return answer
    raise UpstreamError("the login was not finished in time", status=408)


def token_document(answer: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The token file `keyrail login cursor` writes (the community tools' layout)."""
    access = str(answer["accessToken"])
    claims = jwt_claims(access)
    return {
        "type": "cursor",
        "access_token": access,
        "refresh_token": str(answer.get("refreshToken") or ""),
        "expires_at": format_expiry(expires_at(access, now) - EXPIRY_MARGIN),
        "timestamp": int(now * 1000),
        "sub": str(claims.get("sub") or ""),
    }
