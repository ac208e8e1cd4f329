"""Hot reload of config.yaml: an editor's rename-save while streams are in flight."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from pathlib import Path

import aiohttp

from proxy import config, runtime
from proxy.keys import LIVE, METRICS, SCHEDULER
from proxy.registry import Registry, options_lookup
from proxy.reload import RELOADER
from tests.fakes import Script
from tests.ops_helpers import StreamResult, serve_file, stream_chat, wait_for, write_by_rename

KEY = "client-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
CONFIG = """
api-keys: [{key}]
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries:
      - api-key: upstream-key-1
      - api-key: upstream-key-2
    models:
      - name: gpt-4o-mini
        alias: {alias}
"""
WORDS = " ".join(f"w{i}" for i in range(20))


async def chat_status(session: aiohttp.ClientSession, url: str, model: str, key: str = KEY) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_rename_save_during_50_streams(start_upstream, servers, tmp_path: Path, log_text):
    fake, url = await start_upstream()
    fake.script = lambda seen: Script(text=WORDS, gap=0.03)  # each stream lasts ~0.6 s
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(key=KEY, url=url, alias="fast"))
    kr = await serve_file(path, servers)
    old = kr.app[LIVE].current

    async with aiohttp.ClientSession() as session:
        results = [StreamResult() for _ in range(50)]
        tasks = [asyncio.create_task(stream_chat(session, kr.url, "fast", KEY, r)) for r in results]
        await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in results)), 10)
        assert fake.active == 50  # every stream is open upstream while the file changes

        write_by_rename(path, CONFIG.format(key=KEY, url=url, alias="quick"))
        renamed = time.monotonic()
        while await chat_status(session, kr.url, "quick") != 200:
            assert time.monotonic() - renamed < 1.0, "the new alias was not served within 1 s"
        assert await chat_status(session, kr.url, "fast") == 404
        assert old.users > 0 and not old.sessions[0].closed  # streams still on the old one

        done = await asyncio.gather(*tasks)
        for r in done:
            assert r.status == 200 and not r.broken and r.error is None
            assert r.done and r.text.strip() == WORDS
        # the old runtime closes its upstream sessions once its last stream has ended
        await wait_for(lambda: all(s.closed for s in old.sessions), 2, "old sessions closed")

        # A broken save changes nothing but an error line naming file:line:column.
        current = kr.app[LIVE].current
        write_by_rename(path, CONFIG.format(key=KEY, url=url, alias="quick") + "bogus: [\n")
        await wait_for(lambda: "config reload failed" in log_text(), 2, "error logged")
        assert re.search(rf"{re.escape(str(path))}:\d+:\d+: invalid YAML", log_text())
        assert kr.app[LIVE].current is current
        assert await chat_status(session, kr.url, "quick") == 200
        assert not current.sessions[0].closed


async def test_state_keys_and_bind_across_reloads(start_upstream, servers, tmp_path, log_text):
    fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(key=KEY, url=url, alias="fast"))
    kr = await serve_file(path, servers)
    scheduler = kr.app[SCHEDULER]
    reloader = kr.app[RELOADER]
    cooled = [c for c in kr.app[LIVE].current.credentials["fakeco"] if c.secret == "upstream-key-1"]
    fake.script = lambda seen: Script(
        status=429 if "upstream-key-1" in seen.headers["Authorization"] else 200,
        headers={"Retry-After": "600"},
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # round-robin: one of these lands on key 1 and cools it
            assert await chat_status(session, kr.url, "fast") == 200

        def states() -> dict[str, str]:
            return {v.id: v.state for v in scheduler.credential_views()}

        assert states()[cooled[0].id] == "cooling_down"

        # Same credentials, new alias, new client key, new port, new metrics window: cooldown
        # kept, keys and window live, the port reported as needing a restart.
        new_key = "client-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        text = CONFIG.format(key=new_key, url=url, alias="fast2") + "port: 9\n"
        text += "metrics: {window-seconds: 60}\nlimits: {request-body-mb: 0.001}\n"
        path.write_text(text)
        outcome = await reloader.reload(reason="test")
        assert outcome.status == "reloaded"
        assert outcome.models_added == ("fast2",) and outcome.models_removed == ("fast",)
        assert any("'port' changed" in r for r in outcome.restart_required)
        assert any("'limits.request-body-mb' changed" in r for r in outcome.restart_required)
        assert (
            kr.app[LIVE].current.settings.request_body_limit_mb == kr.settings.request_body_limit_mb
        )
        assert "restart keyrail" in log_text()
        assert kr.app[LIVE].current.settings.port == kr.settings.port  # where it listens
        assert kr.app[METRICS].window_seconds == 60
        assert states()[cooled[0].id] == "cooling_down"
        assert await chat_status(session, kr.url, "fast2", key=KEY) == 401
        assert await chat_status(session, kr.url, "fast2", key=new_key) == 200

        # Unchanged content is not rebuilt; a removed credential's state is dropped.
        assert (await reloader.reload()).status == "unchanged"
        path.write_text(text.replace("      - api-key: upstream-key-1\n", ""))
        assert (await reloader.reload()).status == "reloaded"
        assert cooled[0].id not in states()

        # An empty file (a save caught half-way) never drops every provider.
        path.write_text("")
        outcome = await reloader.reload()
        assert outcome.status == "failed" and "empty" in outcome.problems[0]
        assert await chat_status(session, kr.url, "fast2", key=new_key) == 200


async def test_reload_logs_every_problem_with_position(start_upstream, servers, tmp_path, caplog):
    _, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(key=KEY, url=url, alias="fast"))
    kr = await serve_file(path, servers)
    caplog.set_level(logging.ERROR, logger="keyrail.reload")
    path.write_text(CONFIG.format(key=KEY, url=url, alias="fast") + "request-retry: lots\n")
    outcome = await kr.app[RELOADER].reload()
    assert outcome.status == "failed"
    assert outcome.problems == (f"{path}:12:1: 'request-retry' must be an integer, not 'lots'",)
    assert [r.getMessage() for r in caplog.records] == [
        f"config reload failed, keeping the running config: {outcome.problems[0]}"
    ]


async def test_a_retired_runtime_goes_back_to_the_collector() -> None:
    """`keyrail serve` freezes what start-up built, its first runtime included; once a reload
    retires that runtime, the collector must see it again, or its reference cycles leak."""
    settings = config.parse(
        "openai-compatibility:\n  - {name: p, base-url: 'http://127.0.0.1:9/v1', models: [m]}\n",
        options_lookup(Registry.discover()),
    )
    built = await runtime.build(settings, Registry.discover())
    gc.freeze()  # as __main__._settle_gc does once serving
    try:
        assert gc.get_freeze_count() > 0
        await built.retire()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
