"""`/v1/metrics/providers`, `/metrics` and `/health` after a mixed run against fake upstreams.

Each fake upstream answers as the request's plan says (by credential, else by provider), so
what each provider was sent, and what it answered, is known from the fakes' own records.
"""

from __future__ import annotations

import asyncio
import calendar
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.keys import METRICS
from proxy.metrics import bucket_of
from tests.fakes import FakeOpenAI, Script, Seen
from tests.ops_helpers import wait_for

CLIENT_KEY = "client-key-metrics-1"
CONFIG = """
api-keys: [{client_key}]
transient-error-cooldown-seconds: 0
request-retry: 0
openai-compatibility:
  - name: alpha
    priority: 10
    disable-cooling: true
    base-url: {alpha}
    api-key-entries: [{{api-key: key-alpha-1}}]
    models: [{{name: gpt-a, alias: m-alpha}}, {{name: gpt-s, alias: shared}}]
  - name: beta
    disable-cooling: true
    base-url: {beta}
    api-key-entries: [{{api-key: key-beta-1}}]
    models: [{{name: gpt-b, alias: m-beta}}, {{name: gpt-s, alias: shared}}]
  - name: gate
    base-url: {gate}
    api-key-entries: [{{api-key: key-gate-1}}, {{api-key: key-gate-2}}]
    models: [{{name: gpt-g, alias: m-gate}}]
  - name: gamma
    base-url: http://127.0.0.1:{closed_port}/v1
    api-key-entries: [{{api-key: key-gamma-1}}]
    models: [{{name: gpt-c, alias: m-gamma}}]
  - name: slow
    base-url: {slow}
    api-key-entries: [{{api-key: key-slow-1}}]
    models: [{{name: gpt-z, alias: m-slow}}]
  - name: idle
    base-url: {slow}
    api-key-entries: [{{api-key: key-idle-1}}]
    models: [{{name: gpt-i, alias: m-idle}}]
"""
BREAK = -1  # plan value: answer 200, then drop the connection mid-stream


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan_of(seen: Seen) -> dict[str, Any]:
    return dict(orjson.loads(seen.body["messages"][0]["content"]))


def outcome(name: str, seen: Seen) -> int:
    """What the fake `name` answers this request: a status, or BREAK."""
    plan = plan_of(seen)
    key = seen.headers.get("Authorization", "").removeprefix("Bearer ")
    return int(plan.get(key, plan.get(name, 200)))


def scripted(name: str, fake: FakeOpenAI) -> None:
    def script(seen: Seen) -> Script:
        status = outcome(name, seen)
        delay = float(plan_of(seen).get("delay", 0))
        if status == BREAK:
            return Script(break_after=2, delay=delay)
        return Script(status=status, delay=delay)

    fake.script = script


def expected(name: str, fake: FakeOpenAI) -> dict[str, Any]:
    """The window numbers a provider must show, from what its fake received and answered."""
    classes: Counter[str] = Counter()
    ok = 0
    for seen in fake.seen:
        if seen.path.endswith("/models"):
            continue
        status = outcome(name, seen)
        if status == 200:
            classes["2xx"] += 1
            ok += 1
        elif status == BREAK:
            classes["5xx"] += 1
        else:
            classes[str(status) if status in (401, 403, 429) else "5xx"] += 1
    n = sum(classes.values())
    status_counts = {k: classes[k] for k in ("2xx", "401", "403", "429", "5xx", "other")}
    return {
        "request_count": n,
        "success_count": ok,
        "failure_count": n - ok,
        "status_counts": status_counts,
        "prompt_tokens": 11 * ok,
        "completion_tokens": 7 * ok,
        "total_tokens": 18 * ok,
        "error_rate": round((n - ok) / n, 4) if n else 0.0,
        "rate_limited_ratio": round(classes["429"] / n, 4) if n else 0.0,
    }


@pytest.fixture
async def mixed(start_upstream, start_keyrail):
    fakes: dict[str, FakeOpenAI] = {}
    urls: dict[str, str] = {}
    for name in ("alpha", "beta", "gate", "slow"):
        fakes[name], urls[name] = await start_upstream(name)
        scripted(name, fakes[name])
    kr = await start_keyrail(
        CONFIG.format(client_key=CLIENT_KEY, closed_port=closed_port(), **urls)
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as http:

        async def chat(model: str, plan: dict[str, Any], stream: bool = False) -> int:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": orjson.dumps(plan).decode()}],
                "stream": stream,
            }
            async with http.post(kr.v1 + "/chat/completions", json=body) as r:
                await r.read()
                return r.status

        yield kr, fakes, chat


async def run_mix(chat: Callable[..., Any]) -> None:
    for stream in (False, True):
        for _ in range(4):
            assert await chat("m-alpha", {}, stream) == 200
        assert await chat("m-alpha", {"alpha": 429}, stream) == 429
        assert await chat("m-alpha", {"alpha": 500}, stream) == 500
        assert await chat("m-beta", {}, stream) == 200
    assert await chat("m-alpha", {"alpha": 503}) == 503
    assert await chat("m-alpha", {"alpha": BREAK}, stream=True) == 200  # broke after byte 1
    # failover: alpha (priority 10) answers 429, beta serves: one attempt at each
    assert await chat("shared", {"alpha": 429}) == 200
    assert await chat("shared", {"alpha": 429}, stream=True) == 200
    # both of gate's credentials are rejected (and disabled): nothing is left to try after
    assert await chat("m-gate", {"key-gate-1": 401, "key-gate-2": 403}) == 502
    assert await chat("m-gate", {}) == 503
    assert await chat("m-gamma", {}) == 502  # unreachable upstream
    # latency and TTFT: 20 concurrent streams that wait 10, 20, ... 200 ms before answering
    statuses = await asyncio.gather(
        *(chat("m-slow", {"delay": (i + 1) / 100}, stream=True) for i in range(20))
    )
    assert statuses == [200] * 20


async def get_json(kr: Any, path: str, **headers: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(kr.url + path, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_window_matches_what_each_provider_was_sent(mixed) -> None:
    kr, fakes, chat = mixed
    started = time.time()
    await run_mix(chat)
    snap = await get_json(kr, "/v1/metrics/providers")  # no client key needed by default
    assert list(snap) == ["alpha", "beta", "gate", "gamma", "slow", "idle"]
    for name, fake in fakes.items():
        want = expected(name, fake)
        got = {k: snap[name][k] for k in want}
        assert got == want, name
        assert snap[name]["lifetime"] == {
            **{k: want[k] for k in want if k not in ("error_rate", "rate_limited_ratio")},
            "retries": snap[name]["lifetime"]["retries"],
        }
    # the mix really exercised every class, at the block that answered
    assert snap["alpha"]["status_counts"] == {
        "2xx": 8, "401": 0, "403": 0, "429": 4, "5xx": 4, "other": 0,
    }  # fmt: skip
    assert snap["beta"]["status_counts"]["2xx"] == 4 and snap["beta"]["lifetime"]["retries"] == 2
    assert snap["gate"]["status_counts"] == {
        "2xx": 0, "401": 1, "403": 1, "429": 0, "5xx": 0, "other": 0,
    }  # fmt: skip
    assert snap["gamma"]["request_count"] == 1 and snap["gamma"]["status_counts"]["5xx"] == 1
    assert "127.0.0.1" in snap["gamma"]["last_error"]["message"]
    assert snap["alpha"]["last_error"]["status"] == 429  # the failovers to beta came last
    assert snap["gate"]["credentials"] == {"total": 2, "ready": 0, "cooling_down": 0, "disabled": 2}
    assert snap["idle"]["request_count"] == 0 and snap["idle"]["last_seen"] is None
    assert snap["idle"]["lifetime"]["request_count"] == 0
    last_seen = calendar.timegm(time.strptime(snap["alpha"]["last_seen"], "%Y-%m-%dT%H:%M:%SZ"))
    assert started - 1 <= last_seen <= time.time()

    slow = snap["slow"]  # nearest ranks 10, 19, 20 of 10..200 ms, plus keyrail's overhead
    truth = {"latency_p50_ms": 100, "latency_p95_ms": 190, "latency_p99_ms": 200,
             "ttft_p50_ms": 100, "ttft_p95_ms": 190}  # fmt: skip
    for field, true_ms in truth.items():
        assert bucket_of(true_ms) <= bucket_of(slow[field]) <= bucket_of(true_ms + 80), field
    fast = snap["beta"]["latency_p99_ms"]
    assert fast is not None and fast < 100 and snap["beta"]["ttft_p50_ms"] is not None

    # the same attempts leave the window once its time has passed; lifetime keeps them
    kr.app[METRICS].clock = lambda: time.time() + 601
    later = await get_json(kr, "/v1/metrics/providers")
    for name in fakes:
        assert later[name]["request_count"] == 0 and later[name]["latency_p50_ms"] is None
        assert later[name]["lifetime"] == snap[name]["lifetime"]


async def test_list_format_and_runbook_jq(mixed) -> None:
    kr, fakes, chat = mixed
    await run_mix(chat)
    async with aiohttp.ClientSession() as http:
        async with http.get(kr.url + "/v1/metrics/providers") as r:
            keyed = await r.read()
        async with http.get(kr.url + "/v1/metrics/providers?format=list") as r:
            listed = await r.read()
        async with http.get(kr.url + "/v1/metrics/providers?format=table") as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "format"
    as_list = orjson.loads(listed)
    assert as_list["object"] == "list"
    assert {p["provider"]: p for p in as_list["data"]} == orjson.loads(keyed)
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (.ci/run installs it)")

    async def run_jq(program: str, data: bytes) -> Any:
        proc = await asyncio.create_subprocess_exec(
            jq, "-c", program, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate(data)
        assert proc.returncode == 0
        return orjson.loads(out)

    alpha = orjson.loads(keyed)["alpha"]
    assert await run_jq(".alpha", keyed) == alpha
    picked = await run_jq(
        '.data[] | select(.provider=="alpha") | {error_rate, request_count, last_seen}', listed
    )
    assert picked == {k: alpha[k] for k in ("error_rate", "request_count", "last_seen")}
    assert picked["request_count"] == expected("alpha", fakes["alpha"])["request_count"]


async def test_prometheus_text(mixed) -> None:
    kr, _fakes, chat = mixed
    await run_mix(chat)
    snap = await get_json(kr, "/v1/metrics/providers")
    async with aiohttp.ClientSession() as http, http.get(kr.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    for name in ("alpha", "beta", "gate", "gamma", "slow", "idle"):
        life = snap[name]["lifetime"]
        driver = "openai-compatibility"
        for status_class, count in life["status_counts"].items():
            got = value("keyrail_upstream_requests_total", provider=name, driver=driver,
                        status_class=status_class)  # fmt: skip
            assert got == count, (name, status_class)
        n = life["request_count"]
        assert value("keyrail_upstream_latency_seconds_count", provider=name) == n
        assert value("keyrail_upstream_latency_seconds_bucket", provider=name, le="+Inf") == n
        assert (
            value("keyrail_tokens_total", provider=name, direction="prompt")
            == (life["prompt_tokens"])
        )
        assert value("keyrail_upstream_retries_total", provider=name) == life["retries"]
        for state in ("ready", "cooling_down", "disabled"):
            got = value("keyrail_credentials", provider=name, state=state)
            assert got == snap[name]["credentials"][state]
    # the 20 slow streams waited 10..200 ms: none under 10 ms, all by 250 ms (+ overhead)
    assert value("keyrail_upstream_ttft_seconds_count", provider="slow") == 20
    assert value("keyrail_upstream_ttft_seconds_bucket", provider="slow", le="0.005") == 0
    assert value("keyrail_upstream_ttft_seconds_bucket", provider="slow", le="0.5") == 20
    assert value("keyrail_upstream_retries_total", provider="beta") == 2
    assert "key-" not in text and CLIENT_KEY not in text


async def test_health_reports_availability_and_is_not_logged(mixed, log_text) -> None:
    kr, _fakes, chat = mixed
    await run_mix(chat)
    health = await get_json(kr, "/health")
    assert health["status"] == "ok"
    assert health["providers"]["gate"] == "down"  # both credentials disabled
    assert health["providers"]["alpha"] == "ok" and health["providers"]["idle"] == "ok"
    async with aiohttp.ClientSession() as http:
        for method, path in (("HEAD", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/models")):
            async with http.request(method, kr.url + path) as r:
                assert r.status == 200 if path != "/v1/models" else 401
    ours = [line for line in log_text().splitlines() if line.startswith("keyrail.access")]
    assert any("path=/v1/chat/completions" in line for line in ours)
    assert any(re.search("path=/v1/models .* status=401 ", line) for line in ours)
    # probes and scrapes are not logged (aiohttp's own access log is off in `keyrail serve`)
    assert not [line for line in ours if "path=/health" in line or "path=/metrics " in line]


async def test_metrics_can_require_a_client_key(start_upstream, start_keyrail) -> None:
    _fake, url = await start_upstream()
    kr = await start_keyrail(f"""
api-keys: [{CLIENT_KEY}]
metrics: {{require-api-key: true}}
openai-compatibility:
  - {{name: one, base-url: "{url}", api-key-entries: [{{api-key: k-1}}], models: [m]}}
""")
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/metrics/providers", "/metrics"):
            async with http.get(kr.url + path) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
            async with http.get(kr.url + path, headers={"x-api-key": CLIENT_KEY}) as r:
                assert r.status == 200
        async with http.get(kr.url + "/health") as r:
            assert r.status == 200


async def test_a_client_that_leaves_mid_stream(start_upstream, start_keyrail, log_text) -> None:
    """The upstream served the stream until the client left: a 2xx attempt at its block, and
    an access line with status 499."""
    fake, url = await start_upstream()
    fake.script = lambda seen: Script(stall_after=2)  # two chunks, then silence
    kr = await start_keyrail(f"""
openai-compatibility:
  - {{name: one, base-url: "{url}", api-key-entries: [{{api-key: k-1}}], models: [m]}}
""")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(kr.v1 + "/chat/completions", json=body) as r,
    ):
        assert r.status == 200
        await r.content.readline()  # the first event arrived; now leave
    await wait_for(lambda: "status=499" in log_text(), 5, "the access line of the request")
    one = kr.app[METRICS].snapshot([], {"one": "openai-compatibility"})["one"]
    assert one["request_count"] == 1 and one["status_counts"]["2xx"] == 1
