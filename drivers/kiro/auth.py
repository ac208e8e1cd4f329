"""Kiro credentials: which login a token belongs to, and how to refresh it.

Owns: the two refresh flows (social/Kiro-desktop `POST {host}/refreshToken` and AWS SSO-OIDC
`POST {host}/token` for IAM Identity Center and Builder ID, chosen by the presence of an OIDC
client id and secret, which may live in the device-registration file named by
`clientIdHash`), their default hosts, the mapping of a token endpoint's answer onto token
fields and of its errors onto the proxy's decisions, and whether a login sends `profileArn`.
Does not own: holding, timing or saving tokens (proxy/tokens.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.errors import CredentialRejected, UpstreamUnavailable, classify_upstream
from proxy.tokens import Token, read_document

_TIMEOUT = aiohttp.ClientTimeout(total=30)
_ERROR_LIMIT = 64 * 1024
_OIDC_METHODS = ("builder-id", "idc")


def oidc_client(token: Token, token_file: Path | None) -> tuple[str, str] | None:
    """The OIDC client id and secret of an IdC/Builder ID login, or None for a social one."""
    client_id, secret = token.get("client_id"), token.get("client_secret")
    name = token.get("client_id_hash")
    if not (client_id and secret) and name and token_file is not None:
        try:
            registration = read_document(token_file.parent / f"{name}.json")
        except (OSError, ValueError):
            return None
        client_id = registration.get("clientId") or registration.get("client_id")
        secret = registration.get("clientSecret") or registration.get("client_secret")
    return (str(client_id), str(secret)) if client_id and secret else None


def is_social(token: Token, token_file: Path | None) -> bool:
    """Social (Google/GitHub) logins send `profileArn`; IdC and Builder ID must not (403)."""
    method = str(token.get("auth_method") or "").lower()
    return method not in _OIDC_METHODS and oidc_client(token, token_file) is None


def refresh_host(token: Token, token_file: Path | None, override: str) -> str:
    if override:
        return override.rstrip("/")
    region = str(token.get("region") or "us-east-1")
    if oidc_client(token, token_file) is None:
        return f"https://prod.{region}.auth.desktop.kiro.dev"
    if str(token.get("auth_method") or "").lower() == "builder-id":
        region = "us-east-1"
    return f"https://oidc.{region}.amazonaws.com"


async def refresh(
    session: aiohttp.ClientSession,
    token: Token,
    *,
    token_file: Path | None,
    refresh_url: str,
    provider: str,
    proxy: str | None,
) -> Mapping[str, Any]:
    """New token fields (snake_case) for the token store, or an `UpstreamError`."""
    host = refresh_host(token, token_file, refresh_url)
    client = oidc_client(token, token_file)
    if client is None:
        url, body = f"{host}/refreshToken", {"refreshToken": token.refresh_token}
    else:
        url = f"{host}/token"
        body = {
            "clientId": client[0],
            "clientSecret": client[1],
            "refreshToken": token.refresh_token,
            "grantType": "refresh_token",
        }
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            proxy=proxy,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as response:
            data = await response.content.read(_ERROR_LIMIT if response.status >= 300 else -1)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"{provider}: token endpoint unreachable ({type(exc).__name__})",
            status=502,
            provider=provider,
        ) from None
    if status >= 300:
        # Never relay the token endpoint's body: it answers a request that carried secrets.
        if status in (400, 401) and (b"invalid_grant" in data or b"invalid_client" in data):
            raise CredentialRejected(
                f"{provider}: the refresh token was refused; log in to Kiro again",
                status=401,
                provider=provider,
            )
        error = classify_upstream(status, {}, b"", provider=provider)
        error.message = f"{provider}: token endpoint answered {status}"
        raise error
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not answer.get("accessToken"):
        raise UpstreamUnavailable(
            f"{provider}: token endpoint answered without an access token",
            status=502,
            provider=provider,
        )
    return {
        "access_token": answer.get("accessToken"),
        "refresh_token": answer.get("refreshToken"),
        "expires_in": answer.get("expiresIn"),
        "profile_arn": answer.get("profileArn"),
    }
