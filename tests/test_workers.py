"""`keyrail serve --workers 2`: two real worker processes on one port, under the supervisor.

A crashed worker is replaced; SIGHUP reaches both; SIGTERM drains both (a request in flight
on each finishes, then everything exits 0). Which worker answers is read from `/health`
(`"worker": N`) over a kept-alive connection, so a test can hold one connection per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import Script
from tests.ops_helpers import wait_for, write_by_rename
from tests.redis_server import RedisServer, free_port, redis_server

__all__ = ["redis_server"]
CONFIG = """
state: {state}
shutdown:
  drain-seconds: 10
openai-compatibility:
  - name: fakeco
    base-url: {url}
    models:
      - {{name: up-model, alias: m}}
"""


class Served:
    """A `keyrail serve --workers 2` process, its log and its port."""

    def __init__(
        self, proc: asyncio.subprocess.Process, log: Path, port: int, config: Path
    ) -> None:
        self.proc, self.log, self.port, self.config = proc, log, port, config
        self.base = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> dict[int, int]:
        """worker number → its latest pid, from the supervisor's lines."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.text())
        return {int(n): int(pid) for n, pid in found}

    async def one_session_per_worker(self) -> dict[int, aiohttp.ClientSession]:
        """A one-connection session pinned to each worker (bounded: 200 connections)."""
        pinned: dict[int, aiohttp.ClientSession] = {}
        for _ in range(200):
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            try:
                async with session.get(f"{self.base}/health") as resp:
                    worker = int((await resp.json())["worker"])
            except aiohttp.ClientError:
                worker = 0
            if worker and worker not in pinned:
                pinned[worker] = session
                if len(pinned) == 2:
                    return pinned
            else:
                await session.close()
        for session in pinned.values():
            await session.close()
        raise AssertionError("the kernel never gave a connection to both workers")


@pytest.fixture
async def served(
    start_upstream, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[tuple[Served, object]]:
    fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(state=redis_server.url, url=url))
    port = free_port()
    log = tmp_path / "keyrail.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(path), "--port", str(port),
            "--workers", "2", stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    s = Served(proc, log, port, path)
    try:
        await wait_for(lambda: len(s.pids()) == 2 or proc.returncode is not None, 20, "spawn")
        assert proc.returncode is None, s.text()
        await wait_for(lambda: s.text().count("keyrail on http") >= 3, 20, "workers listen")
        yield s, fake
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in s.pids().values():  # the workers die with the supervisor (PDEATHSIG)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_crashed_worker_is_replaced_a_reload_reaches_both_and_sigterm_drains_both(
    served,
):
    s, fake = served
    text = s.text()
    # every line a worker wrote says which worker: the start-up line of each is there
    assert re.search(r"^worker=1 .* keyrail on http", text, re.M), text
    assert re.search(r"^worker=2 .* keyrail on http", text, re.M), text
    first = s.pids()
    os.kill(first[1], signal.SIGKILL)
    await wait_for(lambda: s.pids().get(1, first[1]) != first[1], 15, "worker 1 restarted")
    assert "worker 1 (pid" in s.text() and "signal SIGKILL" in s.text()
    pinned = await s.one_session_per_worker()  # both answer again, the new 1 included
    for session in pinned.values():
        await session.close()
    # a saved config file reaches both (each worker watches it), and so does SIGHUP
    path = s.config
    write_by_rename(path, path.read_text().replace("alias: m}", "alias: m}\n      - up-new"))
    for reason in ("file changed", "SIGHUP"):
        if reason == "SIGHUP":
            s.proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda reason=reason: all(
                re.search(rf"^worker={n} .*config reloaded .*\({reason}\)", s.text(), re.M)
                for n in (1, 2)
            ),
            15,
            f"both workers reloaded ({reason})",
        )
    # SIGTERM: a request in flight on each worker finishes, then everything exits 0
    fake.script = lambda _seen: Script(delay=1.0)  # each request is in flight for a second
    pinned = await s.one_session_per_worker()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def chat(session: aiohttp.ClientSession) -> int:
        async with session.post(f"{s.base}/v1/chat/completions", json=body) as resp:
            await resp.read()
            return resp.status

    try:
        calls = [asyncio.create_task(chat(session)) for session in pinned.values()]
        await wait_for(lambda: fake.active == 2, 10, "a request in flight on each worker")
        s.proc.send_signal(signal.SIGTERM)
        assert await asyncio.gather(*calls) == [200, 200]  # both finished, not cut
        assert await asyncio.wait_for(s.proc.wait(), 20) == 0
    finally:
        for session in pinned.values():
            await session.close()
    text = s.text()
    assert text.count("draining 1 requests") == 2, text
    assert "all workers have stopped" in text


async def test_workers_without_shared_state_are_refused(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("workers: 2\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(path), "--port", str(free_port()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"workers: 2 needs shared state: set 'state: redis://" in out


def test_check_says_workers_need_shared_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from proxy.__main__ import main

    path = tmp_path / "config.yaml"
    path.write_text("port: 8400\nworkers: 3\n")
    assert main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2:1: workers: 3 needs shared state" in out
    path.write_text("workers: 3\nstate: redis://127.0.0.1:6379/0\n")
    assert main(["check", "-c", str(path)]) == 0
    path.write_text("state: mongodb://x\n")
    assert main(["check", "-c", str(path)]) == 1
    assert "'state' must be 'memory' or a Redis URL" in capsys.readouterr().out
