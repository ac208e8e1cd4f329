"""Errors keep their origin, and every answer can be traced.

Only keyrail's own client-key check answers 401 `invalid_api_key`. A provider refusing
keyrail's credential, a token file keyrail cannot read, an upstream that cannot be reached:
each says so, naming the provider. Every answer carries `X-Request-Id`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.fake_kiro import FakeKiro

KEY = "client-key-origin"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _chat(kr, model: str, key: str = KEY) -> tuple[int, dict, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(kr.v1 + "/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, orjson.loads(await r.read()), r.headers.copy()


async def test_an_unreadable_token_file_is_the_providers_failure_not_a_401(
    start_upstream_app, start_keyrail, tmp_path: Path
):
    kiro = FakeKiro()
    url = await start_upstream_app(kiro.app)
    missing = tmp_path / "no-such-kiro-token.json"
    kr = await start_keyrail(
        f"api-keys: [{KEY}]\nkiro:\n  - name: kiro-a\n    token-file: {missing}\n"
        f"    base-url: {url}\n    refresh-url: {url}\n"
    )
    status, body, headers = await _chat(kr, "kiro-claude-sonnet-4-5")
    assert status == 502, body
    assert body["error"]["code"] == "upstream_auth_failed"
    assert "kiro-a" in body["error"]["message"] and "token file" in body["error"]["message"]
    assert "X-Request-Id" in headers
    status, body, headers = await _chat(kr, "kiro-claude-sonnet-4-5")  # now disabled
    assert status == 503 and body["error"]["code"] == "upstream_auth_failed", body
    assert "kiro-a" in body["error"]["message"] and "token file" in body["error"]["message"]
    # keyrail's own check still answers 401 invalid_api_key, and only it does
    status, body, _ = await _chat(kr, "kiro-claude-sonnet-4-5", key="wrong")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_an_outage_says_unreachable_with_the_last_error(start_keyrail):
    port = _closed_port()
    kr = await start_keyrail(
        f"api-keys: [{KEY}]\nopenai-compatibility:\n  - name: downco\n"
        f"    base-url: http://127.0.0.1:{port}/v1\n    api-key-entries: [{{api-key: k-1}}]\n"
        "    models: [{name: gpt-4o-mini}]\n"
    )
    status, body, _ = await _chat(kr, "gpt-4o-mini")
    assert status == 502 and "downco" in body["error"]["message"]
    assert "unreachable" in body["error"]["message"]
    status, body, headers = await _chat(kr, "gpt-4o-mini")  # cooling after the failure
    assert status == 503 and body["error"]["code"] == "provider_unavailable"
    message = body["error"]["message"]
    assert "provider downco is unreachable" in message, message
    assert f"cannot connect to 127.0.0.1:{port}" in message  # the last error
    assert "No credential" not in message
    assert int(headers["Retry-After"]) >= 1


async def test_every_answer_carries_a_request_id(start_upstream, start_keyrail):
    _fake, url = await start_upstream()
    kr = await start_keyrail(
        f"api-keys: [{KEY}]\nlimits: {{request-body-mb: 1}}\nopenai-compatibility:\n"
        f"  - name: fakeco\n    base-url: {url}\n    models: [{{name: gpt-4o-mini}}]\n"
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        ("GET", "/health", {}, None, 200),
        ("GET", "/v1/models", auth, None, 200),
        ("GET", "/nowhere", auth, None, 404),
        ("DELETE", "/v1/chat/completions", auth, None, 405),
        ("POST", "/v1/chat/completions", {}, b"{}", 401),
        ("POST", "/v1/chat/completions", auth, b"{not json", 400),
        ("POST", "/v1/chat/completions", auth, b'{"model": "nope"}', 404),
        ("POST", "/v1/chat/completions", auth, b'{"x": "' + b"a" * 2_000_000 + b'"}', 413),
        ("GET", "/v1/metrics/providers", {}, None, 200),
    ]
    async with aiohttp.ClientSession() as s:
        for method, path, headers, data, expected in cases:
            async with s.request(method, kr.url + path, headers=headers, data=data) as r:
                assert r.status == expected, (method, path, r.status)
                assert len(r.headers.get("X-Request-Id", "")) == 12, (method, path)
                if r.status >= 400:
                    assert "error" in orjson.loads(await r.read()), (method, path)
