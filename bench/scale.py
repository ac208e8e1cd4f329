"""`python -m bench scale`: one worker against two, and `state: redis` against `memory`.

Owns: starting the fake upstream (upstream.py, a raw asyncio protocol), a private
`redis-server` on a free 127.0.0.1 port, and three keyrails side by side:

    w1-memory   --workers 1, state: memory   (today's default)
    w1-redis    --workers 1, state: redis    (what shared state costs one process)
    w2-redis    --workers 2, state: redis    (workers need shared state)

then loading each with `wrk` (non-streamed chat completions, 64 connections, bounded by
`--seconds`) in interleaved rounds, so that noise from the shared machine lands on all three,
and reporting requests per second and CPU per request (the keyrail process tree's CPU time
from /proc, the supervisor included; Redis's own CPU separately). With valgrind it also counts
instructions per request of w1-memory and w1-redis (callgrind, as `python -m bench
instructions`), which the machine's load does not move.
Does not own: the processes' plumbing (targets.Fleet), the instruction count (instructions.py).
Nothing is pinned: two workers need both cores, and the load generator and upstream share them.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import instructions, procstat
from bench.loadgen import request_body
from bench.targets import CLIENT_KEY, Fleet, Target, free_port

CONNECTIONS = 64
ROUND_SECONDS = 3.0


@dataclass
class Row:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_ns: int = 0
    redis_cpu_ns: int = 0
    supervisor_cpu_ns: int = 0
    rates: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_ns / 1000 / self.requests if self.requests else 0.0

    @property
    def supervisor_us(self) -> float:
        return self.supervisor_cpu_ns / 1000 / self.requests if self.requests else 0.0

    @property
    def redis_us(self) -> float:
        return self.redis_cpu_ns / 1000 / self.requests if self.requests else 0.0


def _wrk_script(workdir: Path) -> Path:
    body = request_body(False).decode()
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {CLIENT_KEY}"\n'
    )
    return script


_DONE = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)")
_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*?(\d+) timeout")


def _wrk(url: str, script: Path, seconds: float) -> tuple[int, int, float]:
    """Run wrk once; (requests, errors, seconds)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "-s", str(script),
         url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    match = _DONE.search(out)
    if match is None:
        raise RuntimeError(f"wrk said:\n{out}")
    n, value, unit = int(match[1]), float(match[2]), match[3]
    took = value / 1000 if unit == "ms" else value * 60 if unit == "m" else value
    errors = sum(int(m[0] or 0) for m in _ERRORS.finditer(out))
    return n, errors, took


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != (
        b"PONG\n"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)  # polling a starting process, bounded by the deadline
    return proc, f"redis://127.0.0.1:{port}/0"


def _wait_workers(target: Target, workdir: Path, workers: int) -> None:
    """Every worker listens (the supervisor's log says so), bounded."""
    log = workdir / f"{target.name}.log"
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("keyrail on http") < workers + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: workers did not start")
        time.sleep(0.05)  # polling starting processes, bounded by the deadline
    target.refresh_pids()


def run(workdir: Path, seconds: float, count_instructions: bool) -> str:
    """`seconds` of load per target (0: only the instruction count)."""
    if seconds <= 0:
        return report({}, asyncio.run(_count(workdir)), 0)
    missing = [t for t in ("wrk", "redis-server", "redis-cli") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (apt install wrk redis-server)")
    fleet = Fleet(workdir, [], [])
    redis_proc, redis_url = _start_redis(workdir)
    rows = {name: Row(name) for name in ("w1-memory", "w1-redis", "w2-redis")}
    try:
        fleet.upstream()
        targets = {
            "w1-memory": fleet.keyrail("w1-memory"),
            "w1-redis": fleet.keyrail("w1-redis", extra={"state": redis_url}),
            "w2-redis": fleet.keyrail("w2-redis", extra={"state": redis_url, "workers": 2}),
        }
        _wait_workers(targets["w2-redis"], workdir, 2)
        script = _wrk_script(workdir)
        for target in targets.values():  # warm-up, not recorded
            _wrk(target.url, script, 1)
        rounds = max(1, round(seconds / ROUND_SECONDS))
        names = list(targets)
        for r in range(rounds):
            for name in names[r % 3 :] + names[: r % 3]:  # the order rotates every round
                target, row = targets[name], rows[name]
                root = [target.proc.pid] if target.proc is not None else []
                cpu0, root0 = procstat.cpu_ns(target.pids), procstat.cpu_ns(root)
                redis0 = procstat.cpu_ns([redis_proc.pid])
                n, errors, took = _wrk(target.url, script, seconds / rounds)
                row.cpu_ns += procstat.cpu_ns(target.pids) - cpu0
                if len(target.pids) > 1:  # the supervisor's share (relaying log lines)
                    row.supervisor_cpu_ns += procstat.cpu_ns(root) - root0
                row.redis_cpu_ns += procstat.cpu_ns([redis_proc.pid]) - redis0
                row.requests += n
                row.errors += errors
                row.seconds += took
                row.rates.append(n / took)
    finally:
        fleet.stop()
        redis_proc.kill()
        redis_proc.wait()
    counts: list[instructions.Count] = []
    if count_instructions and not instructions.missing_tools():
        counts = asyncio.run(_count(workdir))
    return report(rows, counts, seconds)


async def _count(workdir: Path) -> list[instructions.Count]:
    """Instructions per request, memory against redis state (one worker each)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="keyrail-bench-", dir=workdir) as tmp:
        fleet = Fleet(Path(tmp), [], [])
        redis_proc, redis_url = _start_redis(Path(tmp))
        body = request_body(False, 0)
        try:
            fleet.upstream()
            runs: list[tuple[str, dict[str, object] | None]] = [
                ("w1-memory", None),
                ("w1-redis", {"state": redis_url}),
            ]
            for name, extra in runs:
                dump = Path(tmp) / f"{name}.callgrind"
                target = fleet.keyrail(name, wrap=instructions.valgrind(dump), extra=extra)
                try:
                    out.append(
                        await instructions.count_one(
                            name, target, dump, body, instructions.REQUESTS, 8
                        )
                    )
                finally:
                    target.stop()
        finally:
            fleet.stop()
            redis_proc.kill()
            redis_proc.wait()
    return out


def report(rows: dict[str, Row], counts: list[instructions.Count], seconds: float) -> str:
    lines = _timed(rows, seconds) if rows else []
    if counts:
        by = {c.target: c.per_request for c in counts}
        lines += ["", "| target | instructions/request |", "|---|---:|"]
        lines += [f"| {c.target} | {c.per_request:,.0f} |" for c in counts]
        if "w1-memory" in by and "w1-redis" in by:
            lines.append(
                f"\n- state: redis / memory, instructions per request: "
                f"**{by['w1-redis'] / by['w1-memory']:.3f}x**"
            )
    return "\n".join(lines) + "\n"


def _timed(rows: dict[str, Row], seconds: float) -> list[str]:
    one, redis1, two = rows["w1-memory"], rows["w1-redis"], rows["w2-redis"]
    lines = [
        f"wrk -t2 -c{CONNECTIONS}, non-streamed chat completions, {seconds:g} s per target "
        f"in rounds of {ROUND_SECONDS:g} s; nothing pinned",
        "",
        "| target | requests/s | (rounds) | errors | keyrail CPU µs/request | "
        "(supervisor) | Redis CPU µs/request |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        spread = ", ".join(f"{r:.0f}" for r in row.rates)
        lines.append(
            f"| {row.name} | {row.rps:.0f} | {spread} | {row.errors} | {row.cpu_us:.1f} | "
            f"{row.supervisor_us:.1f} | {row.redis_us:.1f} |"
        )
    lines += [
        "",
        f"- 2 workers / 1 worker (both state: redis), requests/s: **{two.rps / redis1.rps:.2f}x**"
        if redis1.rps
        else "- no requests",
        f"- state: redis / memory (1 worker), keyrail CPU per request: "
        f"**{redis1.cpu_us / one.cpu_us:.3f}x**; with Redis's own CPU: "
        f"**{(redis1.cpu_us + redis1.redis_us) / one.cpu_us:.3f}x**"
        if one.cpu_us
        else "",
    ]
    return lines


def main(seconds: float, count_instructions: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="keyrail-bench-") as tmp:
        text = run(Path(tmp), seconds, count_instructions)
    print(text)
    print("(paste into bench/README.md, section 'Workers and shared state')", file=sys.stderr)
    return 0
