"""Access lines (text and JSON), failed-attempt lines, and secrets kept out of every output."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy import logs
from proxy.logs import JsonFormatter, RequestRecord, configure, log_request
from proxy.reload import RELOADER
from tests.fake_kiro import Answer, FakeKiro
from tests.fakes import Script, Seen
from tests.ops_helpers import serve_file, write_by_rename
from tests.test_kiro import MODEL as KIRO_MODEL
from tests.test_kiro import write_token

CONFIG = """
api-keys: [client-key-logs-1]
disable-cooling: true
openai-compatibility:
  - name: alpha
    priority: 10
    base-url: {url}
    api-key-entries: [{{api-key: key-alpha-1}}]
    models: [{{name: gpt-a, alias: shared}}]
  - name: beta
    base-url: {url}
    api-key-entries: [{{api-key: key-beta-1}}]
    models: [{{name: gpt-b, alias: shared}}]
"""


def by_key(plan: dict[str, int]) -> Any:
    """A fake script answering by the upstream key it was sent (default 200)."""

    def script(seen: Seen) -> Script:
        key = seen.headers.get("Authorization", "").removeprefix("Bearer ")
        return Script(status=plan.get(key, 200))

    return script


def keyrail_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


async def test_access_line_and_failed_attempts_are_greppable(start_upstream, start_keyrail, caplog):
    caplog.set_level(logging.INFO)
    fake, url = await start_upstream()
    fake.script = by_key({"key-alpha-1": 429})
    kr = await start_keyrail(CONFIG.format(url=url))
    headers = {"Authorization": "Bearer client-key-logs-1"}
    body = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(headers=headers) as http:
        for stream in (False, True):
            async with http.post(kr.v1 + "/chat/completions", json={**body, "stream": stream}) as r:
                assert r.status == 200
                await r.read()
                request_id = r.headers["X-Request-Id"]
        async with http.post(kr.v1 + "/chat/completions", data=b"{not json") as r:
            assert r.status == 400
        async with http.get(kr.v1 + "/models", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
    access = keyrail_lines(caplog, "keyrail.access")
    assert len(access) == 4
    fields = dict(pair.split("=", 1) for pair in access[1].split(" "))
    assert fields["request_id"] == request_id and fields["path"] == "/v1/chat/completions"
    assert fields["model"] == "shared" and fields["provider"] == "beta"
    assert fields["credential"].startswith("beta/") and "key-beta" not in access[1]
    assert (fields["status"], fields["upstream_status"], fields["retries"]) == ("200", "200", "1")
    assert float(fields["latency_ms"]) > 0 and float(fields["ttft_ms"]) > 0
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == ("11", "7")
    assert fields["total_tokens"] == "18"
    assert access[2].startswith("request_id=") and " status=400 " in access[2]
    assert 'error="The request body is not valid JSON' in access[2]
    assert "method=GET path=/v1/models model=- provider=- credential=- status=401" in access[3]
    assert 'error="Incorrect API key provided."' in access[3]
    # the client saw only 200s, yet alpha's 429s are one grep away, per request
    failed = keyrail_lines(caplog, "keyrail.upstream")
    bursts = [line for line in failed if re.search(r"provider=alpha .*upstream_status=429", line)]
    assert len(bursts) == 2 and f"request_id={request_id}" in bursts[1]


async def test_unknown_model_line_names_no_provider(start_upstream, start_keyrail, caplog):
    caplog.set_level(logging.INFO)
    _fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(url=url))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            kr.v1 + "/chat/completions",
            json={"model": "no\nsuch model=x", "messages": []},
            headers={"x-api-key": "client-key-logs-1"},
        ) as r,
    ):
        assert r.status == 404
    (line,) = keyrail_lines(caplog, "keyrail.access")
    # a client-chosen value cannot forge fields or lines: it is quoted
    assert 'model="no\\nsuch model=x" provider=- credential=- status=404 upstream_status=0' in line


@pytest.fixture
def serve_logging() -> Iterator[Callable[..., None]]:
    """`configure` as `keyrail serve` calls it; the process's logging set back afterwards."""
    root, aiohttp_access = logging.getLogger(), logging.getLogger("aiohttp.access")
    handlers, level, access_level = root.handlers[:], root.level, aiohttp_access.level
    sink, json_lines = logs._sink, logs._json_lines
    yield configure  # (the tests flush what they wrote: capsys's stream is gone by teardown)
    root.handlers[:] = handlers
    root.setLevel(level)
    aiohttp_access.setLevel(access_level)
    logs._sink, logs._json_lines = sink, json_lines


def test_json_lines(capsys, serve_logging):
    serve_logging("json", debug=False, secrets=["sk-json-secret-123"])
    logging.getLogger("keyrail.access").info(
        "ignored", extra={"fields": {"request_id": "r1", "status": 429, "ttft_ms": None}}
    )
    logging.getLogger("keyrail.test").warning("leaked %s", "sk-json-secret-123")
    try:
        raise RuntimeError("Authorization: Bearer sk-json-secret-123")
    except RuntimeError:
        logging.getLogger("keyrail.test").exception("boom")
    err = capsys.readouterr().err
    lines = [orjson.loads(line) for line in err.splitlines()]
    assert lines[0]["logger"] == "keyrail.access" and lines[0]["status"] == 429
    assert lines[0]["request_id"] == "r1" and lines[0]["ttft_ms"] is None
    assert lines[0]["time"].endswith("Z") and "message" not in lines[0]
    assert lines[1] == {**lines[1], "level": "WARNING", "message": "leaked [REDACTED]"}
    assert "RuntimeError" in lines[2]["exception"] and "sk-json" not in err


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_line_skips_logging_only_when_nothing_else_would_see_it(
    capsys, serve_logging, log_format
):
    """`keyrail serve` writes the access line straight to its stderr handler; the line is
    the one `logging` would have written, and a handler someone adds still gets it."""
    seen: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = seen.append  # type: ignore[method-assign]
    rec = RequestRecord("r1", "POST", "/v1/chat/completions", model="m 1", status=200)
    serve_logging(log_format, debug=False)
    try:
        log_request(rec)  # nobody else listens: written directly
        logging.getLogger("keyrail").addHandler(extra)
        log_request(rec)  # through logging, so that the added handler sees it
        logs._flush_all()
    finally:
        logging.getLogger("keyrail").removeHandler(extra)
    direct, logged = capsys.readouterr().err.splitlines()
    assert len(seen) == 1 and seen[0].name == "keyrail.access"
    if log_format == "text":
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO keyrail.access ", direct)
        assert direct.split(" ", 2)[2] == logged.split(" ", 2)[2]
        assert 'request_id=r1 method=POST path=/v1/chat/completions model="m 1"' in direct
    else:
        first, second = orjson.loads(direct), orjson.loads(logged)
        assert first.pop("time").endswith("Z") and second.pop("time").endswith("Z")
        assert first == second and first["model"] == "m 1" and first["level"] == "INFO"


def test_deferred_access_lines_keep_their_place_before_later_lines(capsys, serve_logging):
    """Access lines are formatted later, in batches, but never after a line logged later."""
    serve_logging("text", debug=False)
    for i in range(3):
        log_request(RequestRecord(f"r{i}", "POST", "/v1/chat/completions", status=200))
    logging.getLogger("keyrail.test").warning("after the three requests")
    log_request(RequestRecord("r3", "POST", "/v1/chat/completions", status=200))
    logs._flush_all()
    lines = capsys.readouterr().err.splitlines()
    order = [re.search(r"request_id=(r\d)|(after)", line).group(0) for line in lines]
    assert order == ["request_id=r0", "request_id=r1", "request_id=r2", "after",
                     "request_id=r3"]  # fmt: skip


# --- canaries: planted secrets that must appear in no output --------------------------------

CANARY_CONFIG = """
api-keys: [sk-CANARY01clientkey, CANARY02-plain-client-key]
transient-error-cooldown-seconds: 0
request-retry: 0
remote-management: {{secret-key: CANARY03-management}}
openai-compatibility:
  - name: echo
    base-url: {url}
    api-key-entries: [{{api-key: sk-CANARY04providerkey}}]
    models: [{{name: gpt-e, alias: m-echo}}]
  - name: plain
    base-url: {url}
    api-key-entries: [{{api-key: CANARY05-plain-provider-key}}]
    headers: {{X-Custom-Auth: CANARY06-header-secret}}
    models: [{{name: gpt-p, alias: m-plain}}]
  - name: third
    base-url: {url}
    api-key-entries: [{{api-key: CANARY11-third-provider-key}}]
    models: [{{name: gpt-t, alias: m-third}}]
  - name: gone
    base-url: http://127.0.0.1:{closed}/v1
    api-key-entries: [{{api-key: CANARY07-unreachable-key}}]
    models: [{{name: gpt-g, alias: m-gone}}]
"""


def echo_script(seen: Seen) -> Script:
    """Answers as the message says, echoing the credentials it got (as some upstreams do)."""
    said = seen.body["messages"][0]["content"]
    echoed = f"Incorrect API key provided: {seen.headers.get('Authorization')} " + str(
        {k: v for k, v in seen.headers.items() if k.lower().startswith("x-custom")}
    )
    error = {"error": {"message": echoed, "type": "invalid_request_error", "code": None}}
    if said == "break":
        return Script(break_after=2)
    if said == "in-band":
        return Script(chunks=[b"data: " + orjson.dumps(error) + b"\n\n"])
    if said.isdigit():
        return Script(status=int(said), json=error)
    return Script()


async def test_canary_secrets_appear_in_no_output(start_upstream, start_keyrail, caplog):
    caplog.set_level(logging.DEBUG)
    fake, url = await start_upstream()
    fake.script = echo_script
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kr = await start_keyrail(CANARY_CONFIG.format(url=url, closed=closed))
    outputs: list[str] = []
    good = {"Authorization": "Bearer sk-CANARY01clientkey"}

    async def call(headers: dict[str, str], model: str, said: str, stream: bool = False,
                   raw: bytes | None = None) -> int:  # fmt: skip
        body = {"model": model, "messages": [{"role": "user", "content": said}], "stream": stream}
        async with aiohttp.ClientSession() as http, http.post(
            kr.v1 + "/chat/completions", headers=headers, data=raw or orjson.dumps(body)
        ) as r:  # fmt: skip
            outputs.append(str(dict(r.headers)) + (await r.read()).decode())
            return r.status

    # wrong client keys, in each header a client may use; then the right ones
    assert await call({"Authorization": "Bearer sk-CANARY08wrongclient"}, "m-echo", "hi") == 401
    assert await call({"x-api-key": "CANARY09-wrong-plain"}, "m-echo", "hi") == 401
    assert await call({"x-goog-api-key": "CANARY02-plain-client-key"}, "m-echo", "hi") == 200
    assert await call({"Authorization": "CANARY02-plain-client-key"}, "m-echo", "hi") == 200
    assert await call(good, "m-unknown", "hi") == 404
    assert await call(good, "m-echo", "", raw=b'{"model": "m-echo", bad json') == 400
    # an upstream 401/403 is the provider refusing keyrail's credential: 502, not the app's 401
    for model, last, status, then in (("m-echo", "403", 502, 503), ("m-plain", "429", 429, 429),
                                      ("m-third", "401", 502, 503)):  # fmt: skip
        for said in ("500", "400"):
            assert await call(good, model, said) == int(said)
        assert await call(good, model, "break", stream=True) == 200
        assert await call(good, model, "in-band", stream=True) == 502
        assert await call(good, model, last) == status  # disables / cools the credential
        assert await call(good, model, "hi") == then  # keyrail's own answer: nothing to try
    assert await call(good, "m-gone", "hi") == 502
    # the echoing upstream really was sent the secrets, and really echoed them
    assert any("CANARY04" in s.headers.get("Authorization", "") for s in fake.seen)
    assert any(s.headers.get("X-Custom-Auth") == "CANARY06-header-secret" for s in fake.seen)
    assert sum("[REDACTED]" in out for out in outputs) >= 12

    async with aiohttp.ClientSession() as http:
        for path in ("/v1/metrics/providers", "/v1/metrics/providers?format=list", "/metrics",
                     "/health"):  # fmt: skip
            async with http.get(kr.url + path) as r:
                outputs.append(await r.text())
    text = logging.Formatter("%(name)s %(levelname)s %(message)s")
    json = JsonFormatter()
    for record in caplog.records:
        outputs.append(text.format(record))
        outputs.append(json.format(record))
    assert len(caplog.records) > 30
    leaks = [out for out in outputs if "CANARY" in out]
    assert not leaks, leaks[0]


async def test_serve_writes_redacted_json_lines(start_upstream, tmp_path):
    """`keyrail serve` with `logging.format: json`, as users run it, against an echoing upstream."""
    fake, url = await start_upstream()
    fake.script = echo_script
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(f"""
port: {port}
logging: {{format: json}}
openai-compatibility:
  - name: echo
    base-url: {url}
    api-key-entries: [{{api-key: CANARY10-served-key}}]
    models: [m]
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/health") as r:
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)  # polling for start-up, bounded above
            body = {"model": "m", "messages": [{"role": "user", "content": "401"}]}
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                assert r.status == 502 and "CANARY" not in await r.text()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    lines = [orjson.loads(line) for line in err.decode().splitlines()]  # every line is JSON
    assert any("CANARY10" in s.headers.get("Authorization", "") for s in fake.seen)
    (access,) = [x for x in lines if x["logger"] == "keyrail.access"]
    assert access["status"] == 502 and access["upstream_status"] == 401
    assert access["provider"] == "echo" and access["credential"].startswith("echo/")
    (failed,) = [x for x in lines if x["logger"] == "keyrail.upstream"]
    assert "[REDACTED]" in failed["error"]
    assert "CANARY" not in err.decode()


async def test_oauth_tokens_appear_in_no_output(start_keyrail, tmp_path, caplog):
    """Kiro's access and refresh tokens, from the token file and from a refresh, are masked
    wherever an upstream echoes them: error bodies, log lines, metrics."""
    caplog.set_level(logging.DEBUG)
    kiro = FakeKiro()
    server = TestServer(kiro.app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    access, refresh = kiro.issue("CANARY12")
    kiro.access_tokens.discard(access)  # revoked: the first call is refused, then refreshed
    token_file = write_token(tmp_path / "kiro-auth-token.json", access, refresh)
    kr = await start_keyrail(
        f"kiro:\n  - {{name: kiro, token-file: {token_file}, base-url: {url}, "
        f"refresh-url: {url}}}\n"
    )
    kiro.script = lambda seen: Answer(
        status=500 if seen.current["content"].endswith("500") else 400,
        json={"message": f"Improperly formed request for token {seen.token}", "reason": None},
    )
    outputs = []
    try:
        async with aiohttp.ClientSession() as http:
            for said in ("400", "500"):
                body = {"model": KIRO_MODEL, "messages": [{"role": "user", "content": said}]}
                async with http.post(kr.v1 + "/chat/completions", json=body) as r:
                    outputs.append(str(dict(r.headers)) + await r.text())
                    assert r.status == int(said) or r.status == 502
            for path in ("/v1/metrics/providers", "/metrics"):
                async with http.get(kr.url + path) as r:
                    outputs.append(await r.text())
    finally:
        await server.close()
    assert [c.token for c in kiro.chats][:2] == [access, "at-refreshed-1"]  # really refreshed
    json = JsonFormatter()
    outputs += [json.format(record) for record in caplog.records]
    secrets = (access, refresh, "at-refreshed-1", "rt-refreshed-1")
    leaks = [out for out in outputs if any(secret in out for secret in secrets)]
    assert not leaks, leaks[0]


async def test_secrets_added_by_a_reload_are_masked(start_upstream, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fake, url = await start_upstream()
    fake.script = (
        lambda seen: Script(  # the bare key, in no shape a pattern would know
            status=401, raw=b"key " + seen.headers["Authorization"][7:].encode() + b" is revoked"
        )
    )
    path = tmp_path / "config.yaml"
    block = "openai-compatibility:\n  - {{name: echo, base-url: {url}, models: [m], {keys}}}\n"
    path.write_text(block.format(url=url, keys="api-key-entries: [{api-key: first-key-0001}]"))
    servers: list[TestServer] = []
    try:
        kr = await serve_file(path, servers)
        write_by_rename(path, block.format(url=url, keys="api-key-entries: [{api-key: CANARY14}]"))
        assert (await kr.app[RELOADER].reload()).status == "reloaded"
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "401"}]}
            async with http.post(kr.v1 + "/chat/completions", json=body) as r:
                assert r.status == 502  # upstream_auth_failed: keyrail's key was refused
                text = await r.text()
    finally:
        for server in servers:
            await server.close()
    assert fake.seen[-1].headers["Authorization"] == "Bearer CANARY14"  # the new key was used
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "[REDACTED]" in text and "CANARY" not in text + logged
