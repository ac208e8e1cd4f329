"""A real `keyrail serve` process: SIGHUP reloads; SIGTERM drains, then ends streams in-band."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.fakes import Script
from tests.ops_helpers import StreamResult, stream_chat, wait_for

DRAIN = 1.5
CONFIG = f"""
shutdown:
  drain-seconds: {DRAIN}
openai-compatibility:
  - name: fakeco
    base-url: {{url}}
    models:
      - {{{{name: short-up, alias: short}}}}
      - {{{{name: long-up, alias: long}}}}
      - {{{{name: slow-up, alias: slow}}}}
"""
SHORT = " ".join(f"s{i}" for i in range(8))  # ~0.4 s: ends within the drain
LONG = " ".join(f"l{i}" for i in range(200))  # ~10 s: still running when the drain ends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sighup_then_sigterm_during_20_streams(start_upstream, tmp_path: Path):
    fake, url = await start_upstream()

    def script(seen) -> Script:
        model = seen.body["model"]
        if model == "slow-up":
            return Script(delay=30)  # a non-streamed answer that will not come in time
        return Script(text=SHORT if model == "short-up" else LONG, gap=0.05)

    fake.script = script
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url=url))
    port = free_port()
    log_path = tmp_path / "keyrail.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(path), "--port", str(port),
            stdout=log_file, stderr=log_file, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(400):  # bounded: ~10 s for the interpreter to start
                if await healthy():
                    break
                assert proc.returncode is None, log_path.read_text()
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("keyrail did not start:\n" + log_path.read_text())

            proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: "(SIGHUP)" in log_path.read_text(), 5, "SIGHUP reload")

            results = [StreamResult() for _ in range(20)]
            models = ["short", "long"] * 10
            tasks = [
                asyncio.create_task(stream_chat(session, base, m, result=r))
                for m, r in zip(models, results, strict=True)
            ]
            body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
            waiting = asyncio.create_task(session.post(f"{base}/v1/chat/completions", json=body))
            await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in results)), 10)
            await wait_for(lambda: fake.active == 21, 5, "all requests upstream")

            proc.send_signal(signal.SIGTERM)
            for _ in range(100):  # new connections are refused at once
                if await refused(port):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("still accepting connections after SIGTERM")

            done = await asyncio.gather(*tasks)
            for model, r in zip(models, done, strict=True):
                assert r.status == 200 and not r.broken, (model, r.broken)
                if model == "short":
                    assert r.done and r.error is None and r.text.strip() == SHORT
                else:  # cut at the end of the drain, with an error event as its last word
                    assert not r.done and r.error is not None
                    assert r.error["code"] == "shutting_down"
                    assert r.raw.rstrip().endswith(b"}}")
                    assert LONG.startswith(r.text.strip()) and r.text.strip()
            async with await waiting as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "shutting_down"
        assert await asyncio.wait_for(proc.wait(), DRAIN + 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
