"""The command line, run as users run it: `keyrail serve | check | models | plugins`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

KEYRAIL = [sys.executable, "-m", "proxy"]


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYRAIL, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_ok_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "openai-compatibility:\n  - base-url: http://127.0.0.1:9/v1\n    models: [{name: m}]\n"
    )
    result = run("check", "-c", str(good))
    assert result.returncode == 0 and "OK" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 1\nrequest-retyr: 2\nrouting: {strategy: nope}\n")
    result = run("check", "-c", str(bad))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{bad}:2:1: unknown key 'request-retyr' (did you mean 'request-retry'?)"
    assert lines[1].startswith(f"{bad}:3:11: 'routing.strategy' must be one of")


def test_models_shows_the_routing_table(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "openai-compatibility:\n"
        "  - {name: a, base-url: 'http://x', api-key-entries: [{api-key: secret-a}],"
        " models: [{name: up-1, alias: shared}, {name: hidden-preview}],"
        " excluded-models: ['*-preview']}\n"
        "  - {name: b, prefix: pb, base-url: 'http://y', models: [{name: up-2, alias: shared}]}\n"
    )
    result = run("models", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "shared [pool: a, b]" in out and "pb/shared" in out and "up-2" in out
    assert "excluded: hidden-preview from a (matches '*-preview')" in out
    assert "secret-a" not in out


def test_plugins_lists_the_builtin_driver():
    result = run("plugins")
    assert result.returncode == 0
    assert (
        "openai-compatibility" in result.stdout
        and "drivers.openai:OpenAICompatibleDriver" in result.stdout
    )


@pytest.mark.parametrize(
    "config_text",
    ["host: 0.0.0.0\n", "host: 0.0.0.0\napi-keys: [your-api-key-1]\n"],
)
def test_serve_refuses_public_bind_without_real_keys(tmp_path, config_text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text + f"port: {free_port()}\n")
    result = run("serve", "-c", str(cfg))
    assert result.returncode != 0
    assert "refusing to listen" in result.stderr


def test_serve_bad_config_exits_nonzero_with_location(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prot: 1\n")
    result = run("serve", "-c", str(cfg))
    assert result.returncode == 1
    assert f"{cfg}:1:1: unknown key 'prot' (did you mean 'port'?)" in result.stderr


async def test_serve_with_builtin_default_answers_health(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KEYRAIL_CONFIG", "OPENAI_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        *KEYRAIL, "serve", "--port", str(port), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/health") as r:
                            assert r.status == 200
                            assert (await r.json())["status"] == "ok"
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)  # polling for start-up, bounded above
            async with s.get(f"http://127.0.0.1:{port}/v1/models") as r:
                assert (await r.json()) == {"object": "list", "data": []}
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)


def test_models_asks_drivers_for_unlisted_models(tmp_path):
    cfg = tmp_path / "c.yaml"
    token = tmp_path / "kiro-token.json"
    token.write_text('{"accessToken": "at-secret", "refreshToken": "rt-secret"}')
    cfg.write_text(f"kiro:\n  - token-file: {token}\n")
    result = run("models", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "kiro-claude-sonnet-4-5" in result.stdout
    assert "secret" not in result.stdout + result.stderr
