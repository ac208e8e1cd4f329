"""The run: scenarios, and loading the targets of each side by side, interleaved.

Owns: the scenario list, the order of a run (start every process once; per scenario shape the
upstream, warm every target, then `rounds` rounds in which each target gets one slice of
load, the order rotating each round so that no target always follows the same neighbour), and
the CPU and memory accounting of each slice from /proc. Does not own: the processes
(targets.py), the load (loadgen.py), the output (report.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench import peers, procstat
from bench.instructions import Count
from bench.loadgen import Client, Samples, request_body
from bench.stats import Row, add_baseline, summarize
from bench.targets import Fleet, Target
from bench.upstream import Shape

#: The targets of an ordinary scenario, in the order they are started and shown.
STANDARD = ("direct", "floor", "keyrail", "nginx", "litellm")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    concurrency: int
    stream: bool = False
    events: int = 0
    gap: float = 0.0  # seconds between upstream events
    ttft: float = 0.0
    latency: float = 0.0  # upstream delay before a JSON answer
    body_bytes: int = 0
    split: int = 0
    targets: tuple[str, ...] = STANDARD
    #: the client's dialect: "messages" sends Anthropic Messages requests to /v1/messages,
    #: which keyrail translates for the chat upstream (and back) through its dialect hub
    dialect: str = "chat"

    def shape(self) -> Shape:
        return Shape(
            latency=self.latency,
            ttft=self.ttft,
            events=self.events or 1,
            gap=self.gap,
            split=self.split,
        )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("json-c1", "Non-streaming, concurrency 1", 1),
        Scenario("json-c32", "Non-streaming, concurrency 32", 32),
        Scenario("json-c256", "Non-streaming, concurrency 256", 256),
        Scenario(
            "sse-50",
            "Streaming, 50 events 2 ms apart, concurrency 16",
            16,
            stream=True,
            events=50,
            gap=0.002,
        ),
        Scenario(
            "messages-sse-50",
            "Anthropic Messages stream from a chat upstream (translated), as sse-50",
            16,
            stream=True,
            events=50,
            gap=0.002,
            targets=("keyrail",),
            dialect="messages",
        ),
        Scenario(
            "sse-c1",
            "Streaming, 10 events 1 ms apart, concurrency 1 (TTFT without queueing)",
            1,
            stream=True,
            events=10,
            gap=0.001,
        ),
        Scenario(
            "sse-500",
            "Streaming, 500 events 1 ms apart, concurrency 8",
            8,
            stream=True,
            events=500,
            gap=0.001,
        ),
        Scenario(
            "body-200k",
            "Non-streaming, 200 KiB request body, concurrency 8",
            8,
            body_bytes=200 * 1024,
        ),
        Scenario(
            "routing",
            "Routing cost: 1 credential vs 100 over 20 providers, concurrency 32",
            32,
            targets=("direct", "floor", "keyrail", "keyrail-20x5"),
        ),
    )
}


@dataclass
class Options:
    scenarios: Sequence[str] = tuple(SCENARIOS)
    seconds: float = 4.0  # of load per target per scenario, split over the rounds
    rounds: int = 8
    warmup: float = 0.4
    only: Sequence[str] = ()  # restrict to these targets (empty: each scenario's own)
    extra: Sequence[str] = ()  # more targets for every scenario, e.g. keyrail-1x100
    skip: Sequence[str] = ()
    target_cpus: list[int] = field(default_factory=lambda: _default_cpus()[0])
    bench_cpus: list[int] = field(default_factory=lambda: _default_cpus()[1])


def _default_cpus() -> tuple[list[int], list[int]]:
    """Targets on the last CPU, the load generator and upstream on the others."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return [], []
    return [cpus[-1]], cpus[:-1]


@dataclass
class RunResult:
    rows: list[Row]
    targets: dict[str, Target]
    options: Options
    started: float
    notes: list[str]
    #: instructions per request under callgrind (`bench.instructions`), when it ran
    instructions: list[Count] = field(default_factory=list)

    def meta(self) -> dict[str, object]:
        return {"options": asdict(self.options), "notes": self.notes}


async def _set_shape(url: str, shape: Shape) -> None:
    async with aiohttp.ClientSession() as s, s.post(url + "/_bench/config", json=asdict(shape)):
        pass


def _wanted(scenario: Scenario, opts: Options) -> list[str]:
    names = [t for t in (*scenario.targets, *opts.extra) if t not in opts.skip]
    if opts.only:
        names = [t for t in names if t in opts.only or t == "direct"]
    return names


def _start(fleet: Fleet, names: set[str], notes: list[str]) -> dict[str, Target]:
    up = fleet.upstream()
    targets = {"direct": fleet.direct(up)}
    starters = {
        "floor": fleet.floor,
        "keyrail": fleet.keyrail,
        "nginx": fleet.nginx,
        "litellm": fleet.litellm,
    }
    shaped = sorted(n for n in names if re.fullmatch(r"keyrail-\d+x\d+", n))
    for name in (*STANDARD[1:], *shaped):
        if name not in names:
            continue
        if name in starters:
            target = starters[name]()
        else:  # keyrail-PxK: P provider blocks of K keys each, one pool
            providers, keys = map(int, name.removeprefix("keyrail-").split("x"))
            target = fleet.keyrail(name, providers=providers, keys_each=keys)
        if target is None:
            why = {
                "nginx": "nginx is not installed (make bench-peers)",
                "litellm": "LiteLLM is not installed or not verified (make bench-peers): "
                + (
                    peers.VERIFIED.read_text().strip()
                    if peers.VERIFIED.exists()
                    else "no verification yet"
                ),
            }
            notes.append(f"{name} left out: {why.get(name, 'unavailable')}")
            continue
        targets[name] = target
    return targets


async def run(opts: Options, workdir: Path, log: bool = True) -> RunResult:
    """Run the chosen scenarios; every process started here is stopped before returning."""
    started = time.time()
    notes: list[str] = []
    scenarios = [SCENARIOS[n] for n in opts.scenarios]
    names = {t for s in scenarios for t in _wanted(s, opts)}
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    fleet = Fleet(workdir, opts.target_cpus, opts.bench_cpus)
    rows: list[Row] = []
    try:
        targets = await asyncio.to_thread(_start, fleet, names, notes)
        bench_pin = procstat.pin([os.getpid()], opts.bench_cpus)
        notes.append(f"load generator (this process): {bench_pin}")
        for t in targets.values():
            notes.append(f"{t.name}: {t.pinning}" + (f" ({t.note})" if t.note else ""))
        if log:
            print("\n".join(notes), flush=True)
        for scenario in scenarios:
            wanted = [targets[n] for n in _wanted(scenario, opts) if n in targets]
            rows += await _scenario(scenario, wanted, fleet.upstream_url, opts, log)
        if "litellm" in targets:
            remote = peers.off_machine(peers.remote_addresses(targets["litellm"].pids))
            notes.append(
                "LiteLLM sockets at the end of the run: "
                + ("all on loopback" if not remote else f"OFF-MACHINE {sorted(remote)}")
            )
    finally:
        fleet.stop()
    add_baseline(rows)
    return RunResult(rows, targets, opts, started, notes)


async def _scenario(
    scenario: Scenario, targets: list[Target], upstream: str, opts: Options, log: bool
) -> list[Row]:
    await _set_shape(upstream, scenario.shape())
    body = request_body(scenario.stream, scenario.body_bytes)
    clients = {
        t.name: Client(_url(t.url, scenario.dialect), t.headers, scenario.concurrency)
        for t in targets
    }
    acc = {t.name: Samples() for t in targets}
    cpu = dict.fromkeys(clients, 0)
    per_round: dict[str, list[float]] = {name: [] for name in clients}

    def only(loaded: Target) -> None:  # the others sleep: nothing of theirs runs meanwhile
        for t in targets:
            t.refresh_pids()
            t.pause(t is not loaded)

    try:
        for t in targets:  # warm-up: connections, caches, first-request costs; not recorded
            only(t)
            await clients[t.name].run(body, scenario.stream, opts.warmup)
        slice_s = opts.seconds / max(1, opts.rounds)
        for r in range(max(1, opts.rounds)):
            k = r % len(targets)
            for t in targets[k:] + targets[:k]:
                only(t)
                before = procstat.cpu_ns(t.pids)
                samples = await clients[t.name].run(body, scenario.stream, slice_s)
                spent = procstat.cpu_ns(t.pids) - before
                cpu[t.name] += spent
                acc[t.name].extend(samples)
                units = samples.events if scenario.stream else samples.requests
                if units:
                    per_round[t.name].append(spent / 1000 / units)
    finally:
        for t in targets:
            t.pause(False)
        for c in clients.values():
            await c.close()
    rows = []
    for t in targets:
        s = acc[t.name]
        row = summarize(
            scenario.name,
            t.name,
            s.latency,
            s.ttft,
            s.gaps,
            s.events,
            s.errors,
            s.wall,
            cpu[t.name],
            procstat.peak_rss_kib(t.pids),
            s.error_kinds,
            per_round[t.name],
        )
        rows.append(row)
        if log:
            print(
                f"{scenario.name:>10} {t.name:>15}: {row.requests:6d} req {row.rps:8.0f}/s "
                f"p50 {_f(row.p50)} ms cpu/req {_f(row.cpu_us_per_req)} µs "
                f"cpu/event {_f(row.cpu_us_per_event)} µs errors {row.errors}",
                flush=True,
            )
    return rows


def _url(url: str, dialect: str) -> str:
    return url.replace("/chat/completions", "/messages") if dialect == "messages" else url


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
