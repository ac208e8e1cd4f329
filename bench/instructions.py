"""`python -m bench instructions`: machine instructions per request, counted by callgrind.

Owns: running the floor and keyrail (one credential; 20 blocks of 5 keys; one credential with
20 scoped client keys with limits, the load's key among them) one at a time
under `valgrind --tool=callgrind` with instrumentation off, warming each up, switching
instrumentation on (`callgrind_control -i on`) for exactly `requests` non-streamed requests,
and dividing the instructions counted by them. Unlike CPU time this does not move with the
machine's load (repeat runs agree within about 1 %), so it resolves a change of 2 %; it sees
neither cache misses nor the kernel, which CPU time does.
Does not own: the load (loadgen.Client), the processes (targets.Fleet).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import Client, request_body
from bench.targets import Fleet, Target, scoped_keys

#: The last line of a callgrind output file: the instructions it counted. (Its `summary:`
#: line near the top is written before the counting, as 0 in a dump.)
_TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)
WARMUP_REQUESTS = 200
REQUESTS = 1000
CONCURRENCY = 8


@dataclass
class Count:
    target: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def missing_tools() -> list[str]:
    return [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]


async def count(
    workdir: Path, requests: int = REQUESTS, concurrency: int = CONCURRENCY
) -> list[Count]:
    """Instructions per request of each target, one after the other."""
    fleet = Fleet(workdir, [], [])
    body = request_body(False, 0)
    counts = []
    try:
        fleet.upstream()
        starts = (
            ("floor", fleet.floor),
            ("keyrail", lambda wrap: fleet.keyrail(wrap=wrap)),
            ("keyrail-20x5", lambda wrap: fleet.keyrail("keyrail-20x5", 20, 5, wrap=wrap)),
            (
                "keyrail-scoped20",
                lambda wrap: fleet.keyrail(
                    "keyrail-scoped20", wrap=wrap, extra={"api-keys": scoped_keys(20)}
                ),
            ),
        )
        for name, start in starts:
            out = workdir / f"{name}.callgrind"
            target = start(valgrind(out))
            try:
                counts.append(await count_one(name, target, out, body, requests, concurrency))
            finally:
                target.stop()
    finally:
        fleet.stop()
    return counts


def valgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


async def count_one(
    name: str, target: Target, out: Path, body: bytes, requests: int, concurrency: int
) -> Count:
    assert target.proc is not None
    pid = str(target.proc.pid)  # valgrind runs the program in its own process
    client = Client(target.url, target.headers, concurrency)
    try:
        await client.run(body, False, 600.0, WARMUP_REQUESTS)
        await _callgrind_control("-i", "on", pid)
        samples = await client.run(body, False, 600.0, requests)
        await _callgrind_control("-i", "off", pid)
        await _callgrind_control("-d", pid)
    finally:
        await client.close()
    if samples.errors or samples.requests != requests:
        raise RuntimeError(f"{name}: {samples.requests} answers, {samples.errors} errors")
    dumps = out.parent.glob(out.name + ".*")  # what -d wrote
    return Count(name, requests, sum(totals(f.read_bytes()) for f in dumps))


async def _callgrind_control(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await proc.wait():
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


def table(counts: list[Count]) -> str:
    """Markdown: each target's instructions per request, and its ratio to the floor and to
    keyrail with one credential (routing cost)."""
    base = {c.target: c.per_request for c in counts}

    def ratio(c: Count, to: str) -> str:
        return f"{c.per_request / base[to]:.3f}x" if to in base else "-"

    lines = [
        "| target | requests | instructions per request | ÷ floor | ÷ keyrail |",
        "|---|---|---|---|---|",
    ]
    for c in counts:
        lines.append(
            f"| {c.target} | {c.requests} | {c.per_request:,.0f} "
            f"| {ratio(c, 'floor')} | {ratio(c, 'keyrail')} |"
        )
    return "\n".join(lines)


def totals(dump: bytes) -> int:
    """The instructions a callgrind output file counted."""
    return sum(int(n) for n in _TOTALS.findall(dump))
