"""`/v0/management/*`: the guard, and each route against a real keyrail and fake upstream."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drivers.openai import OpenAICompatibleDriver
from proxy import auth
from proxy.driver import Credential
from proxy.errors import CredentialRejected
from proxy.http import management
from proxy.keys import SCHEDULER
from proxy.registry import Registry
from tests.conftest import Keyrail
from tests.fakes import Script
from tests.ops_helpers import serve_file

CLIENT_KEY = "client-key-cccccccccccccccccccccccccccccccc"
SECRET = "mgmt-secret-dddddddddddddddd"
UPSTREAM_KEYS = ("upstream-key-eeeeeeee", "upstream-key-ffffffff")
HEADER_TOKEN = "header-token-gggggggg"
CONFIG = f"""
api-keys: [{CLIENT_KEY}]
remote-management:
  secret-key: {SECRET}
{{extra}}
{{driver}}:
  - name: fakeco
    base-url: {{url}}
    headers:
      X-Upstream-Token: {HEADER_TOKEN}
    api-key-entries:
      - api-key: {UPSTREAM_KEYS[0]}
      - api-key: {UPSTREAM_KEYS[1]}
    models:
      - name: gpt-4o-mini
        alias: fast
      - name: o1-pro
    excluded-models: ["o1-*"]
"""
ROUTES = [
    ("POST", "/providers"),  # a wrong method or an unknown route is no different
    ("GET", "/nope"),
    ("GET", "/providers"),
    ("GET", "/cooldowns"),
    ("POST", "/providers/fakeco/recover"),
    ("POST", "/auths/fakeco/refresh"),
    ("POST", "/reload"),
    ("GET", "/config"),
]


class RefreshingDriver(OpenAICompatibleDriver):
    """An OAuth-like driver: refresh works for the first key and fails for the second."""

    refreshed: list[str] = []

    async def refresh(self, credential: Credential) -> Credential | None:
        if credential.secret != UPSTREAM_KEYS[0]:
            raise CredentialRejected(
                f"refresh token {credential.secret} was revoked", status=401, provider="fakeco"
            )
        self.refreshed.append(credential.id)
        return credential


def peer_from_header(app: web.Application) -> None:
    """Test-only: the peer address comes from `X-Test-Peer`, as if it connected from there."""

    @web.middleware
    async def set_peer(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.headers.get("X-Test-Peer")
        return await handler(request.clone(remote=peer) if peer else request)

    app.middlewares.insert(0, set_peer)


Start = Callable[..., Awaitable[tuple[Keyrail, Any]]]


@pytest.fixture
async def start(start_upstream, servers, tmp_path: Path) -> Start:
    async def run(extra: str = "", driver: str = "openai-compatibility") -> tuple[Keyrail, Any]:
        fake, url = await start_upstream()
        path = tmp_path / "config.yaml"
        path.write_text(CONFIG.format(extra=extra, driver=driver, url=url))
        registry = Registry.discover().with_classes({"refreshing": RefreshingDriver})
        kr = await serve_file(path, servers, registry, before_start=peer_from_header)
        return kr, fake

    return run


async def call(
    kr: Keyrail, method: str, route: str, key: str | None = SECRET, **headers: str
) -> tuple[int, Any, str]:
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{kr.url}/v0/management{route}", headers=headers) as resp,
    ):
        text = await resp.text()
        return resp.status, await resp.json(content_type=None), text


async def test_everything_404_without_a_secret(start_upstream, start_keyrail):
    _, url = await start_upstream()
    kr = await start_keyrail(
        CONFIG.format(extra="", driver="openai-compatibility", url=url).replace(
            f"secret-key: {SECRET}", "allow-remote: false"
        )
    )
    for method, route in ROUTES:
        status, body, _ = await call(kr, method, route)
        assert status == 404, route
        assert body["error"]["code"] == "not_found"


async def test_guard(start):
    kr, _ = await start()
    # each of the three headers carries the key
    assert (await call(kr, "GET", "/providers"))[0] == 200
    assert (await call(kr, "GET", "/providers", None, **{"X-Management-Key": SECRET}))[0] == 200
    assert (await call(kr, "GET", "/providers", None, **{"X-Management-Secret": SECRET}))[0] == 200
    status, body, _ = await call(kr, "GET", "/providers", None)
    assert (status, body["error"]["message"]) == (401, "missing management key")
    # keys live in separate namespaces: the client key is no management key, and vice versa
    status, body, _ = await call(kr, "GET", "/providers", CLIENT_KEY)
    assert (status, body["error"]["code"]) == (401, "invalid_management_key")
    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {SECRET}"}
        async with s.get(f"{kr.url}/v1/models", headers=headers) as resp:
            assert resp.status == 401
    # unknown routes and wrong methods are guarded like the rest, then 404
    status, body, _ = await call(kr, "DELETE", "/providers", None)
    assert (status, body["error"]["code"]) == (401, "missing_management_key")
    status, body, _ = await call(kr, "DELETE", "/providers")
    assert (status, body["error"]["code"]) == (404, "not_found")
    # a remote peer is refused, even with the key
    status, body, _ = await call(kr, "GET", "/providers", **{"X-Test-Peer": "203.0.113.7"})
    assert (status, body["error"]["code"]) == (403, "remote_disabled")


async def test_wrong_keys_never_ban_an_address(start, monkeypatch):
    """Finding 4: five wrong keys from one address banned it for 30 minutes, the operator's
    correct key included; now a wrong key only costs its sender the failure delay."""
    monkeypatch.setattr(management, "FAILURE_DELAY", 0.05)
    kr, _ = await start("  allow-remote: true")
    same = {"X-Test-Peer": "198.51.100.9"}
    for _ in range(20):
        status, body, _ = await call(kr, "GET", "/providers", "wrong", **same)
        assert (status, body["error"]["code"]) == (401, "invalid_management_key")
    assert (await call(kr, "GET", "/providers", **same))[0] == 200


def test_key_compared_in_constant_time(monkeypatch):
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    # management compares its key with auth.ClientKeys, the client keys' constant-time check
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = auth.ClientKeys((SECRET,))
    assert keys.allows(SECRET) and not keys.allows("x")
    assert len(seen) == 2 and all(len(a) == len(b) == 32 for a, b in seen)
    # a key that passed is remembered (no second hash); a wrong one is still hashed and refused
    assert keys.allows(SECRET) and len(seen) == 2
    assert not keys.allows(SECRET + "x") and not keys.allows(SECRET[:-1]) and len(seen) == 4


async def chat(kr: Keyrail, model: str = "fast") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{kr.url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def test_providers_cooldowns_and_recover(start):
    kr, fake = await start("  allow-remote: false\nmax-retry-interval: 0")
    status, body, _ = await call(kr, "GET", "/providers")
    (provider,) = body["data"]
    assert provider["name"] == "fakeco" and provider["status"] == "ok"
    assert provider["models"] == ["fast"] and provider["excluded"] == ["o1-pro"]
    assert provider["can_refresh"] is False
    ids = [c["id"] for c in provider["credentials"]]
    assert len(ids) == 2 and all(c["state"] == "ready" for c in provider["credentials"])

    fake.script = lambda seen: Script(status=429, headers={"Retry-After": "120"})
    assert await chat(kr) == 429
    _, body, _ = await call(kr, "GET", "/cooldowns")
    assert sorted(c["id"] for c in body["data"]) == sorted(ids)
    first = body["data"][0]
    assert first["state"] == "cooling_down" and first["reason"] == "quota"
    assert 100 <= first["retry_in_seconds"] <= 120
    _, body, _ = await call(kr, "GET", "/providers")
    assert body["data"][0]["status"] == "down"

    fake.script = lambda seen: Script()
    status, body, _ = await call(kr, "POST", f"/providers/fakeco/recover?credential={ids[0]}")
    assert (status, body["cleared"]) == (200, 1)
    _, body, _ = await call(kr, "GET", "/cooldowns")
    assert [c["id"] for c in body["data"]] == [ids[1]]
    assert (await call(kr, "POST", "/providers/fakeco/recover"))[1]["cleared"] == 1
    assert (await call(kr, "GET", "/cooldowns"))[1]["data"] == []
    assert await chat(kr) == 200

    status, body, _ = await call(kr, "POST", "/providers/nope/recover")
    assert (status, body["error"]["code"]) == (404, "provider_not_found")
    status, body, _ = await call(kr, "POST", "/providers/fakeco/recover?credential=nope")
    assert (status, body["error"]["code"]) == (404, "credential_not_found")


async def test_refresh(start):
    kr, _ = await start()
    status, body, _ = await call(kr, "POST", "/auths/fakeco/refresh")
    assert (status, body["error"]["code"]) == (400, "refresh_unsupported")

    kr, fake = await start(driver="refreshing")
    fake.script = lambda seen: Script(status=401)
    assert await chat(kr) == 502  # both credentials rejected, so both are disabled
    RefreshingDriver.refreshed.clear()
    assert all(v.state == "disabled" for v in kr.app[SCHEDULER].credential_views())
    status, body, text = await call(kr, "POST", "/auths/fakeco/refresh")
    assert status == 502 and body["status"] == "failed"
    results = {r["id"]: r for r in body["credentials"]}
    assert sum(r["refreshed"] for r in results.values()) == 1
    (failed,) = [r for r in results.values() if not r["refreshed"]]
    assert "was revoked" in failed["error"]
    assert UPSTREAM_KEYS[1] not in text  # the driver's message named the token: masked
    (good,) = RefreshingDriver.refreshed
    states = {v.id: v.state for v in kr.app[SCHEDULER].credential_views()}
    assert states[good] == "ready" and states[failed["id"]] == "disabled"
    status, body, _ = await call(kr, "POST", f"/auths/fakeco/refresh?credential={good}")
    assert (status, body["status"]) == (200, "ok")


async def test_reload_and_masked_config(start, tmp_path: Path):
    kr, _ = await start()
    status, body, text = await call(kr, "GET", "/config")
    assert status == 200
    for secret in (CLIENT_KEY, SECRET, HEADER_TOKEN, *UPSTREAM_KEYS):
        assert secret not in text
    assert body["api_keys"] == [management.MASK]
    block = body["providers"][0]
    assert block["options"]["api-key-entries"][0]["api-key"] == management.MASK
    assert block["headers"]["X-Upstream-Token"] == management.MASK
    assert block["base_url"].startswith("http://127.0.0.1:")

    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("alias: fast", "alias: quick"))
    status, body, _ = await call(kr, "POST", "/reload")
    assert (status, body["status"]) == (200, "reloaded")
    assert body["models_added"] == ["quick"] and body["models_removed"] == ["fast"]
    assert await chat(kr, "quick") == 200

    path.write_text(path.read_text() + "routing:\n  strategy: random\n")
    status, body, _ = await call(kr, "POST", "/reload")
    assert (status, body["error"]["code"]) == (400, "invalid_config")
    assert body["problems"][0].startswith(f"{path}:")
    assert "must be one of round-robin, fill-first" in body["problems"][0]
    assert await chat(kr, "quick") == 200
    assert (await call(kr, "GET", "/config"))[1]["last_reload"]["status"] == "failed"

    # Taking the secret out (and reloading) turns every route off.
    path.write_text(path.read_text().replace("routing:\n  strategy: random\n", "").replace(
        f"secret-key: {SECRET}", "allow-remote: false"))  # fmt: skip
    assert (await call(kr, "POST", "/reload"))[0] == 200
    assert (await call(kr, "GET", "/providers"))[0] == 404


async def test_reload_without_a_file(start_upstream, start_keyrail):
    _, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(extra="", driver="openai-compatibility", url=url))
    status, body, _ = await call(kr, "POST", "/reload")
    assert status == 400 and "without a config file" in body["error"]["message"]


def test_masking_keeps_paths_and_addresses():
    block = {"token-file": "~/.aws/sso/cache/kiro-auth-token.json", "auth-token": "s3cret",
             "refresh-url": "http://127.0.0.1:1/token", "entries": [{"api-key": "k"}]}  # fmt: skip
    assert management._masked(block) == {
        "token-file": "~/.aws/sso/cache/kiro-auth-token.json",
        "auth-token": management.MASK,
        "refresh-url": "http://127.0.0.1:1/token",
        "entries": [{"api-key": management.MASK}],
    }
