"""`keyrail check`, `keyrail models` and `keyrail canary`, as an operator runs them."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.canary import run as run_canary
from proxy.keys import SCHEDULER
from tests.fakes import Script

GOOD = """
api-keys: [client-key-hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh]
openai-compatibility:
  - name: primary
    prefix: fast
    base-url: http://127.0.0.1:9/v1
    api-key-entries: [{api-key: k1}, {api-key: k2}]
    models:
      - {name: gpt-4o-mini, alias: chat}
      - {name: o1-pro}
    excluded-models: ["o1-*"]
  - name: backup
    prefix: slow
    base-url: http://127.0.0.1:9/v2
    models:
      - {name: gpt-4o, alias: chat}
  - name: discovered
    base-url: http://127.0.0.1:9/v3
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, out.splitlines()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_check_ok_notes_pools(tmp_path, capsys):
    code, lines = run_cli(capsys, "check", "-c", write(tmp_path, GOOD))
    assert code == 0
    assert "note: chat is served by several providers (one pool): primary, backup" in lines
    assert lines[-1].endswith("config.yaml: OK (3 provider blocks)")


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("port: [\n", r"\d+", r"\d+", "invalid YAML"),
        (
            "request-rety: 3\n",
            "1",
            "1",
            "unknown key 'request-rety' (did you mean 'request-retry'?)",
        ),
        ("port: eighty\n", "1", "1", "'port' must be an integer"),
        ("routing:\n  strategy: random\n", "2", "3", "must be one of round-robin, fill-first"),
        ("port: 1\nport: 2\n", r"\d+", r"\d+", "invalid YAML"),
        ("api-keys: ['${KEYRAIL_TEST_UNSET_VAR}']\n", "1", r"\d+", "KEYRAIL_TEST_UNSET_VAR"),
        ("openai-compatibility:\n  - name: x\n", "2", r"\d+", "needs 'base-url'"),
        ("host: 0.0.0.0\n", "1", "1", "refusing to listen on 0.0.0.0:8317 without client keys"),
        ("host: 0.0.0.0\napi-keys: [your-api-key-1]\n", "1", "1", "placeholder client keys"),
    ],
)
def test_check_errors_point_at_file_line_col(tmp_path, capsys, text, line, col, message):
    path = write(tmp_path, text)
    code, lines = run_cli(capsys, "check", "-c", path)
    assert code == 1
    assert len(lines) >= 1
    for problem in lines:
        assert re.match(rf"{re.escape(path)}:\d+:\d+: ", problem), problem
    assert any(
        re.match(rf"{re.escape(path)}:{line}:{col}: .*{re.escape(message)}", p) for p in lines
    ), lines


def test_check_missing_file(tmp_path, capsys):
    path = str(tmp_path / "nope.yaml")
    code, lines = run_cli(capsys, "check", "-c", path)
    assert (code, lines) == (1, [f"{path}:0:0: no such file"])


def test_models_table(tmp_path, capsys):
    text = GOOD + "  - name: parked\n    disabled: true\n    base-url: http://127.0.0.1:9/v4\n"
    text = text.replace("    prefix: slow\n", "    prefix: slow\n    priority: 5\n")
    code, lines = run_cli(capsys, "models", "--offline", "-c", write(tmp_path, text))
    assert code == 0
    rows = [" ".join(line.split()) for line in lines]
    k1, k2 = (re.escape(f"primary/{hashlib.sha256(k).hexdigest()[:8]}") for k in (b"k1", b"k2"))
    expected = [
        "MODEL PROVIDER PRIORITY UPSTREAM CREDENTIALS SOURCE",
        r"chat \[pool: primary, backup\] backup 5 gpt-4o backup/0 config",
        rf"chat \[pool: primary, backup\] primary 0 gpt-4o-mini {k1}, {k2} config",
        rf"fast/chat primary 0 gpt-4o-mini {k1}, {k2} config",
        r"slow/chat backup 5 gpt-4o backup/0 config",
        re.escape("excluded: o1-pro from primary (matches 'o1-*')"),
        re.escape(
            "note: discovered lists no models; its driver's list is used (not asked: --offline)"
        ),
        "note: parked is disabled; it serves no models",
    ]
    assert len(rows) == len(expected), rows
    for row, pattern in zip(rows, expected, strict=True):
        assert re.fullmatch(pattern, row), (row, pattern)


async def canary(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "canary", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_canary(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    key = "client-key-iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii"
    kr = await start_keyrail(
        f"api-keys: [{key}]\nopenai-compatibility:\n  - name: fakeco\n    prefix: p\n"
        f"    base-url: {url}\n    models: [{{name: gpt-4o-mini, alias: fast}}]\n"
    )
    code, out = await canary("p/fast", "--url", kr.v1, "--key", key)
    assert code == 0, out
    assert re.match(
        r"ok model=p/fast status=200 provider=fakeco latency_ms=[\d.]+ ttft_ms=[\d.]+ "
        r"request_id=\w+ reply='Hello from the fake upstream.'",
        out,
    ), out
    assert fake.seen[-1].body["stream"] is True

    # The other verdicts, in-process (same code as the command, without starting Python).
    verdict = await run_canary("fast", kr.url, key, stream=False)
    assert verdict.ok and verdict.ttft_ms is None and verdict.provider == "fakeco"
    assert "stream" not in fake.seen[-1].body or fake.seen[-1].body["stream"] is False

    verdict = await run_canary("fast", kr.url, "wrong")
    assert not verdict.ok and verdict.status == 401
    assert verdict.line("fast").startswith("FAIL model=fast status=401 ")
    assert re.search(r" request_id=[0-9a-f]{12}\b", verdict.line("fast"))  # traceable

    verdict = await run_canary("nope", kr.url, key)
    assert (verdict.ok, verdict.status) == (False, 404) and "does not exist" in verdict.error

    fake.script = lambda seen: Script(status=429, headers={"Retry-After": "300"})
    verdict = await run_canary("fast", kr.url, key, stream=False)
    assert (verdict.ok, verdict.status) == (False, 429) and int(verdict.retry_after) >= 1
    assert "retry_after=" in verdict.line("fast")

    kr.app[SCHEDULER].recover(provider="fakeco")
    fake.script = lambda seen: Script(break_after=2)  # the stream breaks after its first byte
    verdict = await run_canary("fast", kr.url, key)
    assert (verdict.ok, verdict.status) == (False, 200) and verdict.error, verdict


async def test_canary_nothing_listening():
    code, out = await canary("fast", "--url", "http://127.0.0.1:9", "--timeout", "5")
    assert code == 1 and out.startswith("FAIL model=fast status=- provider=-")
