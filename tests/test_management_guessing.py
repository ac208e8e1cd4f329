"""Guessing the management key is bounded for the whole server, not per source address, and
the operator's key still gets in during a flood (finding 4: five wrong keys banned an address
for 30 minutes, the operator's correct key included, while a guesser cycling through
127.0.0.0/8 was never banned: 800 of 800 guesses evaluated)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from proxy.http import management
from tests.battery.hostile import send_raw
from tests.ops_helpers import serve_file

GET = b"GET /v0/management/providers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
SECRET = "mgmt-guessing-0123456789abcdef0123456789"
CONFIG = f"""
remote-management:
  secret-key: {SECRET}
openai-compatibility:
  - name: fakeco
    base-url: {{url}}
    models: [{{{{name: m}}}}]
"""


async def test_1000_guesses_from_1000_addresses_are_held_to_the_server_wide_rate(
    start_upstream, servers, tmp_path: Path
):
    _fake, url = await start_upstream()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url=url))
    kr = await serve_file(path, servers)
    target = f"{kr.url}/v0/management/providers"
    assert kr.server.port is not None
    answers: list[tuple[int, float]] = []
    flood_under_way = asyncio.Event()
    started = time.monotonic()

    async def guess(n: int) -> None:
        # A raw socket bound to 127.x.y.z (aiohttp's TCPConnector(local_addr=...) does the
        # same; a thousand sessions only take longer to open).
        source = (f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 0)
        request = GET + f"X-Management-Key: guess-{n}\r\n\r\n".encode()
        status, _ = await send_raw(kr.server.port, request, local_addr=source, seconds=30)
        answers.append((status, time.monotonic() - started))
        if len(answers) == 100:
            flood_under_way.set()

    async def operator() -> float:
        sent = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(target, headers={"X-Management-Key": SECRET}) as r:
                    if r.status == 200:
                        return time.monotonic() - sent
                    assert r.status == 429, r.status  # busy: not a verdict on the key
                    assert r.headers["Retry-After"] == "1"
                await asyncio.sleep(0.2)  # as a retrying client would, bounded by the flood

    flood = [asyncio.create_task(guess(n)) for n in range(2, 1002)]  # 127.0.0.2 and up
    await asyncio.wait_for(flood_under_way.wait(), 30)  # before the operator comes in
    operator_seconds = await asyncio.wait_for(operator(), 10)
    await asyncio.gather(*flood)

    statuses = [s for s, _ in answers]
    assert set(statuses) <= {401, 429}
    evaluated = [t for s, t in answers if s == 401]
    # Every evaluated guess held a check for FAILURE_DELAY: at most CHECKS of them a second.
    span = max(evaluated)
    allowed = management.CHECKS * (span // management.FAILURE_DELAY + 1)
    assert len(evaluated) <= allowed, (len(evaluated), span)
    assert statuses.count(429) >= 1000 - allowed
    assert operator_seconds < 5
    print(
        f"\n1000 guesses from 1000 addresses: {len(evaluated)} evaluated in {span:.2f} s "
        f"(bound: {management.CHECKS} a second), {statuses.count(429)} refused unchecked; "
        f"the operator's key accepted after {operator_seconds:.2f} s"
    )
