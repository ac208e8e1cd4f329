"""`keyrail check` catches what would fail later, each finding at FILE:LINE:COL with a
suggestion; `/health` names a block that serves nothing; a busy port is one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.__main__ import main


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code = main(["check", "-c", str(path)])
    return code, capsys.readouterr().out.strip().replace(str(path), "F").splitlines()


BLOCK = (
    "openai-compatibility:\n  - name: a\n    base-url: {url}\n{extra}    models: [{{name: m}}]\n"
)


def test_a_misspelt_api_key_in_a_key_entry(tmp_path, capsys):
    extra = "    api-key-entries:\n      - key: sk-not-a-real-key\n"
    code, out = check(tmp_path, BLOCK.format(url="http://127.0.0.1:9/v1", extra=extra), capsys)
    assert code == 1
    assert out == [
        "F:5:9: unknown key 'key' in an 'api-key-entries' item (did you mean 'api-key'?)"
    ]


def test_a_key_entry_without_api_key_or_as_a_bare_string(tmp_path, capsys):
    extra = "    api-key-entries:\n      - proxy-url: http://127.0.0.1:3128\n      - sk-bare\n"
    code, out = check(tmp_path, BLOCK.format(url="http://127.0.0.1:9/v1", extra=extra), capsys)
    assert code == 1
    assert out[0].startswith("F:5:9: an 'api-key-entries' item needs 'api-key'")
    assert out[1].startswith("F:6:9: each 'api-key-entries' item must be a mapping")


@pytest.mark.parametrize("key", ["base-url", "proxy-url"])
def test_a_url_without_its_scheme(tmp_path, capsys, key):
    text = BLOCK.format(url="http://127.0.0.1:9/v1", extra="")
    text = text.replace("base-url: http://127.0.0.1:9/v1", f"{key}: 127.0.0.1:9000/v1")
    if key == "proxy-url":
        text = text.replace("    models:", "    base-url: http://127.0.0.1:9/v1\n    models:")
    code, out = check(tmp_path, text, capsys)
    assert code == 1
    assert out == [
        f"F:3:5: '{key}' must be a URL starting with http:// or https://"
        + (" or socks5:// or socks5h://" if key == "proxy-url" else "")
        + ", not '127.0.0.1:9000/v1' (did you mean 'http://127.0.0.1:9000/v1'?)"
    ]


def test_a_top_level_key_inside_a_block(tmp_path, capsys):
    extra = "    force-model-prefix: true\n"
    code, out = check(tmp_path, BLOCK.format(url="http://127.0.0.1:9/v1", extra=extra), capsys)
    assert code == 1
    assert out == [
        "F:4:5: unknown key 'force-model-prefix' in a 'openai-compatibility' block: "
        "'force-model-prefix' is a top-level key, not a block key; move it to the top of "
        "the file, without indentation"
    ]


def test_a_kiro_token_file_that_cannot_be_read_is_a_warning(tmp_path, capsys):
    missing = tmp_path / "kiro-auth-token.json"
    text = f"kiro:\n  - name: kiro-a\n    token-file: {missing}\n"
    code, out = check(tmp_path, text, capsys)
    assert code == 0
    assert out[0] == (
        f"warning: F:2:5: kiro-a: token file {missing} cannot be read (No such file or "
        "directory); its requests fail (upstream_auth_failed) until it can: log in with the "
        "Kiro IDE, or point 'token-file' at the right file"
    )
    assert out[-1] == "F: OK (1 provider blocks)"
    missing.write_text("{}")
    code, out = check(tmp_path, text, capsys)
    assert code == 0 and out == ["F: OK (1 provider blocks)"]


async def test_health_says_down_for_a_block_that_serves_no_model(start_upstream, start_keyrail):
    _fake, url = await start_upstream()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kr = await start_keyrail(
        "openai-compatibility:\n"
        f"  - {{name: good, base-url: {url}, models: [{{name: m}}]}}\n"
        f"  - {{name: lost, base-url: 'http://127.0.0.1:{closed}/v1'}}\n"  # discovery fails
    )
    async with aiohttp.ClientSession() as s, s.get(kr.url + "/health") as r:
        health = await r.json()
    assert health["providers"] == {"good": "ok", "lost": "down"}
    assert health["reasons"]["lost"].startswith("serves no model: model discovery failed (")
    assert str(closed) in health["reasons"]["lost"]


def test_a_busy_port_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "config.yaml").write_text(BLOCK.format(url="http://127.0.0.1:9/v1", extra=""))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"keyrail: port {port} is already in use on 127.0.0.1; stop what is listening there, "
        "or start keyrail on another port with --port"
    ]
