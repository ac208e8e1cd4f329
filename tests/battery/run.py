"""The battery run: a real `keyrail serve` process between the fault upstream and the hostile
client, with a well-behaved client (monitor.py) measuring the stalls it sees throughout.

Each phase injects one family of faults and records its figures (figures.py); `Tier` says how
many of each. What is asserted is in test_battery.py; this module only runs and measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from tests.battery import figures
from tests.battery.faulty import AFTER_FIRST_BYTE, BEFORE_FIRST_BYTE, FaultyUpstream, gzip_bomb
from tests.battery.hostile import CLIENT_KEY, fuzz, send_raw
from tests.battery.upstreams import kiro_token
from tests.fake_kiro import FakeKiro

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "flaky": [f"pk-flaky-{i}-0123456789abcdef" for i in range(4)],  # the last one is healthy
    "midway": ["pk-midway-0123456789abcdef"],
    "slow": ["pk-slow-0123456789abcdef"],
    "bombs": ["pk-bombs-0123456789abcdef"],
    "steady": ["pk-steady-0123456789abcdef"],
}
MANAGEMENT_SECRET = "mgmt-battery-0123456789abcdef0123456789"
SECRETS = [CLIENT_KEY, MANAGEMENT_SECRET, *itertools.chain(*KEYS.values())]
FIRST_BYTE_SECONDS = 2.0
IDLE_SECONDS = 2.0


@dataclass(frozen=True)
class Tier:
    name: str
    spare: int  # requests against a pool with faulty keys and one healthy key
    midway: int  # streams that fail after their first byte
    disconnects: int  # per phase
    slow_clients: int
    wrong_keys: int
    fuzzed: int
    management_guesses: int
    hold_seconds: float  # how long slow clients are held open


FAST = Tier("fast", spare=60, midway=15, disconnects=3, slow_clients=10, wrong_keys=200,
            fuzzed=1000, management_guesses=200, hold_seconds=1.5)  # fmt: skip
LONG = Tier("long", spare=1000, midway=200, disconnects=50, slow_clients=50, wrong_keys=2000,
            fuzzed=5000, management_guesses=1000, hold_seconds=5.0)  # fmt: skip


def _config(upstream: str, port: int, steady: str, kiro: str, token: Path) -> str:
    blocks = []
    for name, keys in KEYS.items():
        base = f"{steady}/v1" if name == "steady" else f"{upstream}/{name}/v1"
        entries = "".join(
            f"      - {{api-key: {k}, disable-cooling: true}}\n"  # every fault reaches it
            for k in keys
        )
        blocks.append(
            f"  - name: {name}\n    base-url: {base}\n"
            f"    api-key-entries:\n{entries}    models: [{{name: {name}-m}}]\n"
        )
    return (
        f"host: 127.0.0.1\nport: {port}\napi-keys: [{CLIENT_KEY}]\n"
        f"remote-management: {{secret-key: {MANAGEMENT_SECRET}}}\n"
        f"timeouts: {{first-byte-seconds: {FIRST_BYTE_SECONDS}, idle-seconds: {IDLE_SECONDS}, "
        "request-read-seconds: 1}\n"
        "openai-compatibility:\n"
        + "".join(blocks)
        + f"kiro:\n  - name: kiro\n    token-file: {token}\n    base-url: {kiro}\n"
        f"    refresh-url: {kiro}\n    disable-cooling: true\n"
    )


def _plan(rng: random.Random) -> object:
    after = itertools.cycle(AFTER_FIRST_BYTE)
    # Bombs are a phase of their own (their memory is measured alone); a stall costs the
    # first-byte timeout, so it is rarer.
    before = [f for f in BEFORE_FIRST_BYTE if f not in ("gzip-bomb", "stall-before-first-byte")]

    def plan(provider: str, key: str, body: dict[str, object]) -> str:
        if provider == "flaky":
            if key == KEYS["flaky"][-1]:
                return "slow-drip" if rng.random() < 0.1 else "ok"
            if rng.random() < 0.03:
                return "stall-before-first-byte"
            return rng.choice(before)
        if provider == "midway":
            return next(after)
        if provider == "slow":
            marker = str((body.get("messages") or [{}])[-1].get("content"))  # type: ignore
            return marker.split(":", 1)[0]
        if provider == "bombs":
            return "gzip-bomb" if "bomb" in str(body.get("messages")) else "huge-event"
        return "ok"

    return plan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """`keyrail serve` in a child process: its address, peak memory and CPU time."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def status(self, field: str) -> int:
        """A /proc/PID/status figure in KiB (VmHWM: the peak resident set so far)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def keyrail(config: str, port: int, tmp: Path) -> AsyncIterator[Process]:
    path = tmp / "battery.yaml"
    path.write_text(config)
    log = tmp / "keyrail.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(path),
            stdout=err, stderr=err, cwd=tmp,
        )  # fmt: skip
    process = Process(proc, port, log)
    try:
        async with aiohttp.ClientSession() as s, asyncio.timeout(30):
            while True:
                try:
                    async with s.get(process.url + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # start-up, bounded by the timeout above
        yield process
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def monitor(process: Process, tmp: Path, name: str) -> AsyncIterator[None]:
    """The well-behaved client, running while the block runs; its worst latency recorded."""
    out = tmp / f"monitor-{name}.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.battery.monitor", "client",
        process.url + "/v1/chat/completions", CLIENT_KEY, "steady-m", str(out),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # its first answer came: it measures the whole block
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    result = json.loads(out.read_text())
    figures.worst("worst stall of a concurrent well-behaved client (ms)", result["worst_ms"])
    figures.worst(f"  during {name} (ms)", result["worst_ms"])
    figures.add("well-behaved client requests failed", result["failures"])


class Client:
    """The clients' side: every byte any client received is kept for the secrets scan."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.received: list[bytes] = []
        self.headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

    async def chat(
        self, session: aiohttp.ClientSession, model: str, marker: str, stream: bool
    ) -> tuple[int, bytes]:
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": marker}]}
        async with session.post(
            self.process.url + "/v1/chat/completions", json=body, headers=self.headers
        ) as r:
            data = await r.read()
        self.received.append(data)
        return r.status, data


async def _gather_limited(jobs: list[object], limit: int) -> list[object]:
    semaphore = asyncio.Semaphore(limit)

    async def one(job: object) -> object:
        async with semaphore:
            return await job  # type: ignore[misc]

    return await asyncio.gather(*(one(j) for j in jobs))


async def phase_bombs(process: Process, client: Client, upstream: FaultyUpstream) -> None:
    """A 1 GB gzip bomb (non-streamed, then streamed) and a 64 MiB event, one at a time."""
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            status, data = await client.chat(session, "bombs-m", "bomb", stream)
            figures.record(
                f"gzip bomb 1 GiB from ~1 MB ({'streamed' if stream else 'not streamed'})",
                status,
                f"status; {data[:110].decode(errors='replace')}",
            )
        figures.record("peak RSS after the gzip bombs (MiB)", process.status("VmHWM") // 1024)
        cpu = process.cpu_seconds()
        status, data = await client.chat(session, "bombs-m", "huge", True)
        spent = process.cpu_seconds() - cpu
        figures.record("64 MiB event: keyrail CPU-seconds", round(spent, 3))
        figures.record(
            "64 MiB event: the stream's last event",
            "limit error" if b"limits.sse-event-mb" in data else "NO LIMIT ERROR",
            data.rstrip()[-100:].decode(errors="replace"),
        )


async def phase_spare(client: Client, upstream: FaultyUpstream, tier: Tier) -> None:
    """Faults before the first byte on three keys of four: every request should succeed."""
    before = upstream.faults()
    failures: list[str] = []

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        stream = i % 2 == 0
        status, data = await client.chat(session, "flaky-m", f"spare-{i}", stream)
        complete = data.rstrip().endswith(b"data: [DONE]") if stream else b'"choices"' in data
        if status != 200 or not complete:
            failures.append(f"{status}: {data[:200]!r}")

    async with aiohttp.ClientSession() as session:
        await _gather_limited([one(i, session) for i in range(tier.spare)], 8)
    figures.add("requests held", tier.spare)
    figures.add("faults injected", upstream.faults() - before)
    figures.record(
        "client-visible failures where a spare credential existed",
        len(failures),
        f"of {tier.spare}" + (f"; first: {failures[0]}" if failures else ""),
    )


async def phase_midway(client: Client, upstream: FaultyUpstream, tier: Tier) -> None:
    """Streams failing after their first byte: one error event, never a replay."""
    before = upstream.faults()
    answers: dict[str, bytes] = {}

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        _status, answers[f"midway-{i}"] = await client.chat(
            session, "midway-m", f"midway-{i}", True
        )

    async with aiohttp.ClientSession() as session:
        await _gather_limited([one(i, session) for i in range(tier.midway)], 8)
    seen: dict[str, int] = {}
    for served in upstream.served:
        if served.provider == "midway":
            seen[served.marker] = seen.get(served.marker, 0) + 1
    figures.add("requests held", tier.midway)
    figures.add("faults injected", upstream.faults() - before)
    figures.record("replays after the first byte", sum(n - 1 for n in seen.values()))
    fault_of = {s.marker: s.fault for s in upstream.served if s.provider == "midway"}
    broken = [m for m, f in fault_of.items() if f != "key-echo"]
    in_error = [
        m for m in broken
        if b'"error"' in answers[m] and not answers[m].rstrip().endswith(b"[DONE]")
    ]  # fmt: skip
    figures.record(
        "streams broken after the first byte that end in an error event",
        len(in_error),
        f"of {len(broken)}; without one: "
        + ", ".join(sorted({fault_of[m] for m in broken if m not in in_error})),
    )


async def phase_disconnects(process: Process, upstream: FaultyUpstream, tier: Tier) -> None:
    """A client that leaves at every phase; how soon keyrail closes the upstream request."""
    closes: list[float] = []
    left_open = 0
    for n in range(tier.disconnects):
        for phase, fault in (
            ("before-first-byte", "stall-before-first-byte"),
            ("mid-stream-flowing", "slow-drip-forever"),
            ("mid-stream-silent", "stall-between-events"),
        ):
            marker = f"{fault}:{phase}-{n}"
            body = (
                '{"model":"slow-m","stream":true,"messages":[{"role":"user","content":"'
                + marker
                + '"}]}'
            ).encode()
            head = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
            writer.write(head + body)
            async with asyncio.timeout(10):
                served = await upstream.arrival(marker)
                if phase != "before-first-byte":
                    await reader.readuntil(b"\n\n")  # the headers and the first bytes
            writer.transport.abort()
            left = time.monotonic()
            try:
                await asyncio.wait_for(served.done.wait(), 1.0)
                assert served.ended is not None
                closes.append(served.ended - left)
            except TimeoutError:
                left_open += 1
        # and one that leaves while still sending its body: nothing reaches the upstream
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n"
            b"Authorization: Bearer " + CLIENT_KEY.encode() + b'\r\n\r\n{"model":'
        )
        await writer.drain()
        writer.transport.abort()
    figures.record(
        "upstream connections left open 1 s after a client disconnect",
        left_open,
        f"of {len(closes) + left_open}",
    )
    if closes:
        figures.record(
            "upstream closed after a disconnect, worst (ms)", round(max(closes) * 1000, 1)
        )


async def phase_hostile_client(process: Process, client: Client, tier: Tier) -> None:
    """Slow headers, slow bodies, idle connections held open while others are served; wrong
    keys; fuzzed requests."""
    held: list[asyncio.StreamWriter] = []
    closed_by_keyrail = dict.fromkeys(("headers", "body", "idle"), 0)

    async def slow(kind: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
        held.append(writer)
        if kind == "headers":
            data = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        elif kind == "body":
            data = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
        else:
            data = b""  # an idle keep-alive connection
        writer.write(data)
        deadline = time.monotonic() + tier.hold_seconds
        while time.monotonic() < deadline:
            try:
                got = await asyncio.wait_for(reader.read(1024), 0.2)
            except TimeoutError:
                writer.write(b"a")  # one more byte, slowly
                continue
            if not got or got.startswith(b"HTTP/1.1 4"):
                closed_by_keyrail[kind] += 1
                return

    kinds = ["headers", "body", "idle"] * tier.slow_clients
    await asyncio.gather(*(slow(k) for k in kinds))
    for writer in held:
        writer.transport.abort()
    closed = ", ".join(f"{kind} {n}" for kind, n in closed_by_keyrail.items())
    figures.record(
        "slow or idle connections held open",
        len(kinds),
        f"closed or answered by keyrail within {tier.hold_seconds:g} s: {closed} "
        f"(of {tier.slow_clients} each)",
    )

    wrong = [
        send_raw(
            process.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + f"wrong-{i}-{random.random()}".encode()
            + b"\r\nContent-Length: 2\r\n\r\n{}",
        )
        for i in range(tier.wrong_keys)
    ]
    statuses = await _gather_limited(wrong, 32)
    figures.record(
        "wrong client keys answered 401",
        sum(1 for s, _ in statuses if s == 401),  # type: ignore[misc]
        f"of {tier.wrong_keys}",
    )

    rng = random.Random(1414)
    models = ("steady-m", "kiro-claude-sonnet-4-5", "nope")
    fuzz_started = time.monotonic()
    fuzzed = [r.wire() for r in fuzz(rng, tier.fuzzed, models)]
    results = await _gather_limited([send_raw(process.port, w) for w in fuzzed], 16)
    for _status, body in results:  # type: ignore[misc]
        client.received.append(body)
    five = sum(1 for s, _ in results if s >= 500)  # type: ignore[misc]
    took = time.monotonic() - fuzz_started
    figures.add("fuzzed requests sent", tier.fuzzed)
    figures.record(f"  {tier.fuzzed} of them to `keyrail serve` in (s)", round(took, 1))
    figures.add("5xx on fuzzed input", five)
    figures.add("500 on fuzzed input", sum(1 for s, _ in results if s == 500))  # type: ignore[misc]


async def phase_management(process: Process, tier: Tier) -> None:
    """Wrong management keys from as many loopback addresses, the right one in the middle."""
    count = tier.management_guesses
    url_path = b"GET /v0/management/providers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    answers: list[tuple[int, float]] = []
    started = time.monotonic()

    async def guess(i: int) -> None:
        source = (f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}", 0)
        key = f"guess-{i}-0123456789abcdef0123456789".encode()
        data = url_path + b"X-Management-Key: " + key + b"\r\n\r\n"
        status, _ = await send_raw(process.port, data, local_addr=source, seconds=60)
        answers.append((status, time.monotonic() - started))

    async def operator() -> float:
        await asyncio.sleep(0)
        sent = time.monotonic()
        data = url_path + b"X-Management-Key: " + MANAGEMENT_SECRET.encode() + b"\r\n\r\n"
        while True:
            status, _ = await send_raw(process.port, data, seconds=60)
            if status == 200:
                return time.monotonic() - sent
            assert status == 429, status  # busy: retry, as the runbook's curl loop does
            await asyncio.sleep(0.2)

    guesses = [asyncio.create_task(guess(i + 2)) for i in range(count)]
    await asyncio.sleep(0.05)  # the flood under way
    operator_seconds = await operator()
    await asyncio.gather(*guesses)
    evaluated = [t for s, t in answers if s == 401]
    busy = sum(1 for s, _ in answers if s == 429)
    span = max(evaluated) if evaluated else 0.0
    figures.record("management: wrong keys sent (from as many 127/8 addresses)", count)
    figures.record(
        "management: wrong keys evaluated (401)", len(evaluated), f"{busy} got 429 unchecked"
    )
    rate = len(evaluated) / span if span else 0.0
    figures.record("management: guesses evaluated per second", round(rate, 1), "documented: 8")
    figures.record(
        "management: correct key accepted mid-flood after (s)", round(operator_seconds, 2)
    )


def scan_secrets(client: Client, process: Process, secrets: list[str]) -> list[str]:
    """Every configured secret, looked for in every byte a client received and in the log."""
    texts = [*client.received, process.log.read_bytes()]
    found = []
    for secret in secrets:
        raw = secret.encode()
        if any(raw in t for t in texts):
            found.append(secret[:6] + "…")
    return found


async def run(tier: Tier, tmp: Path) -> dict[str, object]:
    """Run every phase; the figures (also in figures.FIGURES) and the secrets found."""
    gzip_bomb()  # made now, not while a phase is measured
    upstream = FaultyUpstream(_plan(random.Random(14)))  # type: ignore[arg-type]
    server = TestServer(upstream.app, host="127.0.0.1")
    await server.start_server()
    upstream_url = str(server.make_url("")).rstrip("/")
    port, steady_port = _free_port(), _free_port()
    steady = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.battery.monitor", "upstream", str(steady_port), cwd=ROOT
    )
    started = time.monotonic()
    kiro = FakeKiro()
    kiro_server = TestServer(kiro.app, host="127.0.0.1")
    await kiro_server.start_server()
    token = kiro_token(tmp / "kiro-token.json", *kiro.issue("battery"))
    secrets = [*SECRETS, *kiro.access_tokens, *kiro.refresh_tokens]
    kiro_url = str(kiro_server.make_url("")).rstrip("/")
    config = _config(upstream_url, port, f"http://127.0.0.1:{steady_port}", kiro_url, token)
    try:
        async with keyrail(config, port, tmp) as process:
            figures.record("RSS of keyrail at start (MiB)", process.status("VmRSS") // 1024)
            client = Client(process)
            async with monitor(process, tmp, "nothing else (baseline)"):
                await asyncio.sleep(1.0)  # the monitor alone: the machine's own noise
            async with monitor(process, tmp, "bombs"):
                await phase_bombs(process, client, upstream)
            async with monitor(process, tmp, "faults before the first byte"):
                await phase_spare(client, upstream, tier)
            async with monitor(process, tmp, "faults after the first byte"):
                await phase_midway(client, upstream, tier)
            async with monitor(process, tmp, "disconnects"):
                await phase_disconnects(process, upstream, tier)
            async with monitor(process, tmp, "hostile clients"):
                await phase_hostile_client(process, client, tier)
            await phase_management(process, tier)
            figures.record(
                "peak RSS of keyrail over the run (MiB)", process.status("VmHWM") // 1024
            )
            found = scan_secrets(client, process, secrets)
            log = process.log.read_text(errors="replace")
            first = log[log.find("Traceback") :].splitlines()[-1:] if "Traceback" in log else []
            figures.record("tracebacks in keyrail's log", log.count("Traceback"), "".join(first))
            if keep := os.environ.get("KEYRAIL_BATTERY_LOG"):
                shutil.copyfile(process.log, keep)
            figures.record("secrets found in any output", len(found), ", ".join(found))
    finally:
        steady.send_signal(signal.SIGTERM)
        await asyncio.wait_for(steady.wait(), 15)
        await server.close()
        await kiro_server.close()
    figures.record(
        f"battery ({tier.name} tier) wall time (s)", round(time.monotonic() - started, 1)
    )
    return dict(figures.FIGURES)
