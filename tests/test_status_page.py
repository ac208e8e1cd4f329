"""`GET /status`: the live page, in a real headless Chromium, against keyrail and fake upstreams.

One provider healthy, one cooling after 429s, one down (its upstream refuses connections). The
page must show each in its state, count a cooldown down, show a new error without a reload,
say "unreachable" when keyrail stops, ask for a key when the metrics need one, and ask
nothing of any address but keyrail's own. With `KEYRAIL_STATUS_SCREENSHOTS=DIR` the tests
also save screenshots there (`make screenshots` refreshes the ones in docs/).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.keys import RECENT_ERRORS, SCHEDULER
from proxy.status.snapshot import build
from tests.browser import CHROMIUM, Page, chromium
from tests.conftest import Keyrail
from tests.fakes import FakeOpenAI, Script

pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="chromium is not installed (.ci/run installs it)"
)

CLIENT_KEY = "status-client-key-aaaaaaaaaaaaaaaaaaaa"
SECRET = "status-mgmt-secret-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
HOT_KEY = "sk-status-hot-cccccccccccc"
CONFIG = """
{extra}
openai-compatibility:
  - name: healthy
    base-url: {healthy}
    api-key-entries: [{{api-key: sk-status-healthy-dddddddd}}]
    models: [{{name: gpt-4o-mini, alias: healthy-model}}]
  - name: throttled
    base-url: {throttled}
    api-key-entries: [{{api-key: {hot}}}, {{api-key: sk-status-cool-eeeeeeee}}]
    models: [{{name: gpt-4o-mini, alias: throttled-model}}]
  - name: broken
    base-url: http://127.0.0.1:{closed}/v1
    api-key-entries: [{{api-key: sk-status-broken-ffffffff}}]
    models: [{{name: gpt-4o-mini, alias: broken-model}}]
"""
SHOTS = os.environ.get("KEYRAIL_STATUS_SCREENSHOTS")

StartUpstream = Callable[..., Awaitable[tuple[FakeOpenAI, str]]]
StartKeyrail = Callable[..., Awaitable[Keyrail]]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def three_providers(
    start_upstream: StartUpstream, start_keyrail: StartKeyrail, extra: str = ""
) -> Keyrail:
    """keyrail over a healthy, a throttled (one key answers 429) and an unreachable block."""
    _healthy, healthy_url = await start_upstream("healthy")
    throttled, throttled_url = await start_upstream("throttled")
    throttled.script = lambda seen: (
        Script(status=429, headers={"Retry-After": "60"})
        if seen.headers.get("Authorization") == f"Bearer {HOT_KEY}"
        else Script()
    )
    return await start_keyrail(
        CONFIG.format(
            extra=extra,
            healthy=healthy_url,
            throttled=throttled_url,
            hot=HOT_KEY,
            closed=closed_port(),
        )
    )


async def chat(keyrail: Keyrail, model: str, key: str = "") -> aiohttp.ClientResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            keyrail.v1 + "/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        await response.read()
        return response


async def traffic(keyrail: Keyrail, key: str = "") -> None:
    for model in ("healthy-model", "throttled-model", "throttled-model", "broken-model"):
        await chat(keyrail, model, key)
    states = {v.id: v.state for v in keyrail.app[SCHEDULER].credential_views()}
    assert sorted(states.values()).count("ready") == 2, states  # healthy and the cool key


def state_of(provider: str) -> str:
    return f"document.querySelector('[data-provider=\"{provider}\"]')?.dataset.state"


async def shoot(page: Page, name: str, width: int = 1280) -> None:
    if SHOTS:
        await asyncio.to_thread(Path(SHOTS).mkdir, parents=True, exist_ok=True)
        await page.screenshot(Path(SHOTS) / name, width=width, height=900 if width > 600 else 800)


async def test_page_shows_each_provider_live_and_then_unreachable(
    start_upstream: StartUpstream, start_keyrail: StartKeyrail, tmp_path: Path
) -> None:
    keyrail = await three_providers(start_upstream, start_keyrail)
    await traffic(keyrail)
    async with chromium(tmp_path / "profile") as page:
        await page.goto(keyrail.url + "/status")
        await page.wait_for(f"{state_of('broken')} === 'down'")
        await page.wait_for(f"{state_of('throttled')} === 'degraded'")
        await page.wait_for(f"{state_of('healthy')} === 'ok'")
        # Worst first, and every state in words and shapes, not only colours.
        order = await page.evaluate(
            "[...document.querySelectorAll('[data-provider]')].map(c => c.dataset.provider)"
        )
        assert order == ["broken", "throttled", "healthy"]
        words = await page.evaluate(
            "[...document.querySelectorAll('.card h3 .state')].map(s => s.textContent)"
        )
        assert words == ["■ down", "▲ degraded", "● ok"]

        # The cooling key counts down, with the absolute time on hover.
        countdown = "document.querySelector('[data-provider=\"throttled\"] .countdown')"
        first = await page.wait_for(f"{countdown}?.textContent")
        assert re.fullmatch(r"cooling, \d+ s left", first), first
        seconds = int(first.split()[1])
        assert 50 <= seconds <= 60
        later = await page.wait_for(
            f"(t => t && parseInt(t.split(' ')[1]) < {seconds} && t)({countdown}.textContent)",
            within=5,
        )
        assert re.fullmatch(r"cooling, \d+ s left", later)
        assert (await page.evaluate(f"{countdown}.title")).endswith("UTC")
        await shoot(page, "status-live.png")
        await shoot(page, "status-phone.png", width=390)

        # A new error shows up without a reload, with its request id.
        response = await chat(keyrail, "no-such-model-for-the-page")
        assert response.status == 404
        row = await page.wait_for(
            "[...document.querySelectorAll('#errors tbody tr')]"
            ".map(r => r.innerText).find(t => t.includes('no-such-model-for-the-page'))"
        )
        assert "404" in row
        request_id = response.headers.get("X-Request-Id")
        if request_id:
            assert request_id in row

        # Nothing the page asked for left keyrail's own address.
        assert page.requests
        assert all(url.startswith(keyrail.url + "/") for url in page.requests), page.requests
        assert not page.console_errors

        await keyrail.server.close()
        line = await page.wait_for(
            "document.getElementById('conn').dataset.conn === 'unreachable' "
            "&& document.getElementById('conn').textContent",
            within=8,
        )
        assert line.startswith("unreachable")
        await shoot(page, "status-unreachable.png")


async def test_page_asks_for_a_key_when_metrics_need_one(
    start_upstream: StartUpstream, start_keyrail: StartKeyrail, tmp_path: Path
) -> None:
    extra = f"api-keys: [{CLIENT_KEY}]\nmetrics:\n  require-api-key: true\n"
    keyrail = await three_providers(start_upstream, start_keyrail, extra)
    await traffic(keyrail, CLIENT_KEY)
    async with chromium(tmp_path / "profile") as page:
        await page.goto(keyrail.url + "/status")
        await page.wait_for("!document.getElementById('auth').classList.contains('hidden')")
        # The prompt and nothing else: no data reached the page.
        assert await page.evaluate("document.getElementById('data').classList.contains('hidden')")
        assert await page.evaluate("document.querySelectorAll('[data-provider]').length") == 0
        assert "throttled" not in await page.evaluate("document.body.innerText")
        await shoot(page, "status-key.png")

        await submit(page, "auth", "wrong-key-gggggggggggggggggggg")
        message = await page.wait_for(
            "!document.getElementById('auth-msg').classList.contains('hidden') "
            "&& document.getElementById('auth-msg').textContent"
        )
        assert message == "That key was not accepted."
        assert await page.evaluate("document.querySelectorAll('[data-provider]').length") == 0

        await submit(page, "auth", CLIENT_KEY)
        await page.wait_for(f"{state_of('throttled')} === 'degraded'")
        # The key is kept in the tab only: not in the URL, not in a cookie.
        assert CLIENT_KEY not in await page.evaluate("location.href + document.cookie")


async def test_management_actions_only_with_the_secret(
    start_upstream: StartUpstream, start_keyrail: StartKeyrail, tmp_path: Path
) -> None:
    extra = f"remote-management:\n  secret-key: {SECRET}\n"
    keyrail = await three_providers(start_upstream, start_keyrail, extra)
    await traffic(keyrail)
    hot = "document.querySelector('[data-provider=\"throttled\"] tr:has(.countdown)')"
    async with chromium(tmp_path / "profile") as page:
        await page.goto(keyrail.url + "/status")
        await page.wait_for(f"{state_of('throttled')} === 'degraded'")
        assert await page.evaluate("document.querySelectorAll('#providers button').length") == 0
        await submit(page, "mgmt", SECRET)
        await page.wait_for(f"{hot}?.querySelector('button')")
        await page.evaluate(f"{hot}.querySelector('button').click()")
        await page.wait_for(f"{state_of('throttled')} === 'ok'")
        assert all(v.state == "ready" for v in keyrail.app[SCHEDULER].credential_views()
                   if v.provider == "throttled")  # fmt: skip
        assert SECRET not in await page.evaluate("location.href + document.cookie")


async def test_clients_with_their_limits_once_a_key_is_given(
    start_upstream: StartUpstream, start_keyrail: StartKeyrail, tmp_path: Path
) -> None:
    extra = f"api-keys:\n  - {{key: {CLIENT_KEY}, name: app-one, rpm: 5}}\n"
    keyrail = await three_providers(start_upstream, start_keyrail, extra)
    for _ in range(2):
        assert (await chat(keyrail, "healthy-model", CLIENT_KEY)).status == 200
    async with chromium(tmp_path / "profile") as page:
        await page.goto(keyrail.url + "/status")
        await page.wait_for(f"{state_of('healthy')} === 'ok'")  # the status itself is open
        await page.wait_for("!document.getElementById('clients-form').classList.contains('hidden')")
        assert await page.evaluate("document.querySelectorAll('[data-client]').length") == 0
        polls = (
            "performance.getEntriesByType('resource')"
            ".filter(e => e.name.endsWith('/v1/status')).length"
        )
        seen = await page.evaluate(polls)
        await page.wait_for(f"{polls} >= {seen + 3}")  # the page goes on polling meanwhile
        await submit(page, "clients", CLIENT_KEY)
        row = await page.wait_for("document.querySelector('[data-client=\"app-one\"]')?.innerText")
        cells = row.split("\t")
        assert cells[:2] == ["app-one", "2"], cells
        limits = await page.evaluate(
            "document.querySelector('[data-client=\"app-one\"] .limits').textContent"
        )
        assert limits == "rpm 2/5"
        # The page's own unauthenticated look at the clients was one request, not one a poll.
        rejected = [e for e in keyrail.app[RECENT_ERRORS].newest_first() if e["status"] == 401]
        assert len(rejected) == 1, rejected
        await shoot(page, "status-clients.png")
        assert CLIENT_KEY not in await page.evaluate("document.body.innerHTML")


async def submit(page: Page, form: str, value: str) -> None:
    await page.evaluate(
        f"document.getElementById('{form}-key').value = {value!r};"
        f"document.getElementById('{form}-form').requestSubmit()"
    )


def test_snapshot_holds_no_secret_and_sorts_worst_first() -> None:
    from proxy.metrics import Attempt, ProviderMetrics
    from proxy.scheduler import CredentialView

    clock = [1000.0]
    metrics = ProviderMetrics(window_seconds=600, clock=lambda: clock[0])
    metrics.record(Attempt("a", "openai-compatibility", "a/1", 200, 0.05, prompt_tokens=3))
    metrics.record(Attempt("b", "openai-compatibility", "b/1", 500, 0.02, error="boom"))
    views = [
        CredentialView("a/1", "a", "ready"),
        CredentialView("b/1", "b", "cooling_down", "transient", 1060.0, "boom"),
    ]
    data = build(
        metrics=metrics,
        views=views,
        drivers={"a": "openai-compatibility", "b": "openai-compatibility"},
        recent_errors=[],
        management=False,
    )
    assert [p["name"] for p in data["providers"]] == ["b", "a"]
    b = data["providers"][0]
    assert b["availability"] == "down" and b["credentials"][0]["until"] == 1060.0
    assert b["series"]["failures"][-1] == 1 and len(b["series"]["requests"]) == 60
    assert data["providers"][1]["requests_last_minute"] == 1
