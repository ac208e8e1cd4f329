"""Fuzzed requests (bodies, headers, encodings, nesting) get a 4xx or an answer, never a 500,
and keyrail logs no traceback for them (finding 3: 37 of 5,152 fuzzed requests got a 500)."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from proxy.__main__ import _one_line_protocol_errors
from proxy.driver import Call, Credential, Driver, Reply
from proxy.registry import Registry
from tests.battery import figures
from tests.battery.hostile import CLIENT_KEY, Raw, fuzz, send_raw
from tests.battery.upstreams import kiro_token, steady_app
from tests.fake_kiro import FakeKiro

KIRO_MODEL = "kiro-claude-sonnet-4-5"
CONFIG = f"""
api-keys: [{CLIENT_KEY}]
disable-cooling: true
openai-compatibility:
  - name: steady
    base-url: {{openai}}/v1
    api-key-entries: [{{{{api-key: pk-steady-0123456789}}}}]
    models: [{{{{name: m}}}}]
kiro:
  - name: kiro
    token-file: {{token}}
    base-url: {{kiro}}
    refresh-url: {{kiro}}
"""


@pytest.fixture(autouse=True)
def serve_log_filter():
    """`keyrail serve`'s filter on aiohttp's log: a malformed request is one WARNING line."""
    logger = logging.getLogger("aiohttp.server")
    logger.addFilter(_one_line_protocol_errors)
    yield
    logger.removeFilter(_one_line_protocol_errors)


@pytest.fixture
async def keyrail_port(start_upstream_app, start_keyrail, tmp_path: Path):
    openai_url = await start_upstream_app(steady_app())
    kiro = FakeKiro()
    server = TestServer(kiro.app, host="127.0.0.1")
    await server.start_server()
    kiro_url = str(server.make_url("")).rstrip("/")
    token = kiro_token(tmp_path / "kiro.json", *kiro.issue("battery"))
    kr = await start_keyrail(CONFIG.format(openai=openai_url, kiro=kiro_url, token=token))
    yield kr.server.port
    await server.close()


async def _run(port: int, requests: list[Raw], concurrency: int = 16) -> list[tuple[Raw, int]]:
    queue = collections.deque(requests)
    results: list[tuple[Raw, int]] = []

    async def worker() -> None:
        while queue:
            raw = queue.popleft()
            status, _ = await send_raw(port, raw.wire())
            results.append((raw, status))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _check(results: list[tuple[Raw, int]], caplog: pytest.LogCaptureFixture) -> None:
    five = [(r.kind, r.path, s, r.body[:120]) for r, s in results if s >= 500]
    figures.add("fuzzed requests sent", len(results))
    figures.add("5xx on fuzzed input", len(five))
    assert not [f for f in five if f[2] == 500], five[:10]
    assert not five, five[:10]
    assert not [r for r, s in results if s == 0], "a fuzzed request got no answer"
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not tracebacks, tracebacks[0].getMessage()


@pytest.mark.parametrize(
    "case",
    [
        # finding 3, case by case
        Raw("/v1/chat/completions", [(b"x-api-key", b"\xff")], b"{}", "key-bytes"),
        Raw("/v1/chat/completions", [(b"Authorization", b"Bearer \xff\xfe")], b"{}", "key"),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            b'{"model":"m","stream":true,"stream_options":"yes","messages":[]}',
            "stream_options",
        ),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            b'{"model":"m","messages":' + b"[" * 300 + b"]" * 300 + b"}",
            "nesting",
        ),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            b'{"model":"m","messages":[],"metadata":{"x":' + b"[" * 300 + b"]" * 300 + b"}}",
            "nesting elsewhere",
        ),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            b'{"model":"m","messages":[],"x":' + b"[" * 300 + b"]" * 300 + b"}",
            "nesting unknown field",
        ),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            f'{{"model":"{KIRO_MODEL}","messages":5}}'.encode(),
            "kiro messages",
        ),
        Raw(
            "/v1/chat/completions",
            [(b"Authorization", b"Bearer " + CLIENT_KEY.encode())],
            f'{{"model":"{KIRO_MODEL}","tools":1,"messages":[]}}'.encode(),
            "kiro tools",
        ),
        Raw(
            "/v1/chat/completions",
            [
                (b"Authorization", b"Bearer " + CLIENT_KEY.encode()),
                (b"Content-Encoding", b"gzip"),
            ],
            b'{"model":"m","messages":[]}',
            "not gzip",
        ),
    ],
    ids=lambda raw: raw.kind,
)
async def test_each_finding_is_a_4xx(keyrail_port, caplog, case: Raw):
    status, body = await send_raw(keyrail_port, case.wire())
    assert 400 <= status < 500, (status, body[:300])
    assert b'"error"' in body
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks


async def test_fuzzed_requests_no_5xx_and_no_traceback(keyrail_port, caplog):
    rng = random.Random(14)
    requests = list(fuzz(rng, 500, ("m", KIRO_MODEL, "nope")))
    results = await _run(keyrail_port, requests)
    _check(results, caplog)


class _BuggyDriver(Driver):
    async def send(self, call: Call, credential: Credential) -> Reply:
        raise RuntimeError("a bug in a driver")


async def test_a_500_is_keyrails_own_bug_logged_once_with_the_request_id(start_keyrail, caplog):
    registry = Registry.discover().with_classes({"buggy": _BuggyDriver})
    kr = await start_keyrail("buggy:\n  - name: b\n    models: [{name: m}]\n", registry=registry)
    wire = Raw("/v1/chat/completions", [], b'{"model":"m","messages":[]}', "bug").wire()
    status, body = await send_raw(kr.server.port, wire)
    assert status == 500 and b"internal error in keyrail" in body
    bugs = [r for r in caplog.records if r.exc_info and "unhandled error" in r.getMessage()]
    assert len(bugs) == 1
    assert "request_id=" in bugs[0].getMessage()
