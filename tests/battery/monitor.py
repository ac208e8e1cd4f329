"""The well-behaved side, in a process of its own so that the battery's own work (the fault
upstream writing 64 MiB, say) never shows up as a stall of keyrail's:

    python -m tests.battery.monitor upstream PORT
        a steady OpenAI-compatible upstream on 127.0.0.1:PORT (the `steady` block)
    python -m tests.battery.monitor client URL KEY MODEL OUT.json
        small non-streamed requests one after another (about 50 a second); prints "ready"
        after its first answer, and on SIGTERM writes how many it made, how many failed,
        and the worst latency as OUT.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.battery.upstreams import steady_app


async def client(url: str, key: str, model: str, out: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    failures = 0
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += not ok
            if len(latencies) == 1:
                print("ready", flush=True)  # the battery starts its phase on this line
            with contextlib.suppress(TimeoutError):  # paced
                await asyncio.wait_for(stop.wait(), 0.02)
    latencies.sort()
    result = {
        "requests": len(latencies),
        "failures": failures,
        "worst_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
    }
    _write(out, json.dumps(result))


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


async def upstream(port: str) -> None:
    runner = web.AppRunner(steady_app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(port)).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        asyncio.run(upstream(sys.argv[2]))
    else:
        asyncio.run(client(*sys.argv[2:6]))
