"""The bench machinery runs end to end: fake upstream, floor, loader, /proc accounting, report.

No speed is asserted: only that every part produced its numbers.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench import instructions, report, runner, stats
from bench.peers import strace_problems
from bench.stats import percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_strace_check_flags_only_off_machine_addresses() -> None:
    local = 'connect(5, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("127.0.0.1")}'
    unix = 'connect(6, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0'
    remote = 'connect(7, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("1.2.3.4")}'
    assert strace_problems("\n".join([local, unix])) == ([], 2)
    assert strace_problems(remote)[0] == [remote]


async def test_tiny_run_writes_tables(tmp_path: Path) -> None:
    opts = runner.Options(
        scenarios=("json-c1", "sse-50"),
        seconds=0.4,
        rounds=2,
        warmup=0.1,
        only=("floor",),
        target_cpus=[],
        bench_cpus=[],
    )
    result = await runner.run(opts, tmp_path / "work", log=False)
    assert {(r.scenario, r.target) for r in result.rows} == {
        (s, t) for s in ("json-c1", "sse-50") for t in ("direct", "floor")
    }
    for row in result.rows:
        assert row.requests > 0 and row.errors == 0
        assert row.cpu_us_per_req is not None and row.cpu_us_per_req > 0
    stream = next(r for r in result.rows if r.scenario == "sse-50" and r.target == "floor")
    assert stream.events == 51 * stream.requests  # 50 content events + the usage one
    assert stream.ttft_p50 is not None
    md = report.write(result, tmp_path / "out")
    text = md.read_text()
    assert "| floor |" in text and "## sse-50" in text
    assert (tmp_path / "out" / "latency-json-c1.svg").read_text().startswith("<svg")
    assert "Instructions per request" not in text
    result.instructions = [instructions.Count("floor", 1000, 580_000_000)]
    text = report.write(result, tmp_path / "out").read_text()
    assert "## Instructions per request (callgrind)" in text
    assert "| floor | 1000 | 580,000 |" in text
    saved = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert saved["instructions"] == [
        {"target": "floor", "requests": 1000, "instructions": 580_000_000, "per_request": 580000.0}
    ]


def test_cpu_ratios_are_paired_round_by_round() -> None:
    """A noisy round moves both targets: the check is the median of per-round ratios."""

    def row(target: str, per_round: list[float]) -> stats.Row:
        return stats.Row(
            "json-c32", target, 100, 0, 1.0, *[None] * 7, 0,
            sum(per_round) / len(per_round), None, None, 1.0, cpu_per_round=per_round,
        )  # fmt: skip

    floor = row("floor", [100.0, 200.0, 100.0])  # the machine was busy in round 2
    keyrail = row("keyrail", [125.0, 250.0, 130.0])
    (check,) = [c for c in report.checks([floor, keyrail]) if c[0].startswith("CPU/request at")]
    assert check[1] == "1.25x (rounds 1.25x-1.30x)" and check[3] == "met"


def test_instruction_counts_are_read_and_compared() -> None:
    """`python -m bench instructions` sums callgrind's totals and divides by requests."""
    dump = b"events: Ir\nsummary: 0\nfn=x\n1 5\ntotals: 1200000\n"  # as `callgrind_control -d`
    assert instructions.totals(dump) == 1200000
    counts = [
        instructions.Count("floor", 1000, 500_000_000),
        instructions.Count("keyrail", 1000, 650_000_000),
        instructions.Count("keyrail-20x5", 1000, 669_500_000),
    ]
    text = instructions.table(counts)
    assert "| keyrail | 1000 | 650,000 | 1.300x | 1.000x |" in text
    assert "| keyrail-20x5 | 1000 | 669,500 | 1.339x | 1.030x |" in text


def test_instruction_counts_decide_the_targets_cpu_time_cannot_resolve() -> None:
    """With counts, the routing check is decided by instructions (CPU time moved more than
    its 5 % between rounds), and the c=32 check gets the instruction ratio beside it."""

    def row(scenario: str, target: str, per_round: list[float]) -> stats.Row:
        return stats.Row(
            scenario, target, 100, 0, 1.0, *[None] * 7, 0,
            sum(per_round) / len(per_round), None, None, 1.0, cpu_per_round=per_round,
        )  # fmt: skip

    rows = [
        row("routing", "keyrail", [100.0, 100.0]),
        row("routing", "keyrail-20x5", [112.0, 96.0]),
    ]
    counts = [
        instructions.Count("floor", 1000, 580_000_000),
        instructions.Count("keyrail", 1000, 730_000_000),
        instructions.Count("keyrail-20x5", 1000, 752_000_000),
    ]
    without = {c[0]: c for c in report.checks(rows)}
    cpu = "CPU/request, 100 credentials over 20 providers ÷ 1 credential"
    assert without[cpu][3] == "met"  # median 1.04x: CPU time alone decides
    found = {c[0]: c for c in report.checks(rows, counts)}
    assert found[cpu][3] == "for comparison (instructions decide)"
    routing = found[
        "instructions/request (callgrind), 100 credentials over 20 providers ÷ 1 credential"
    ]
    assert routing[1:] == ("1.030x", "1.050x", "met")
    overhead = found["instructions/request (callgrind), keyrail ÷ floor"]
    assert overhead[1:] == ("1.259x", "1.300x", "met")
    slower = [*counts[:2], instructions.Count("keyrail-20x5", 1000, 770_000_000)]
    (routing,) = [
        c
        for c in report.checks(rows, slower)
        if c[0].startswith("instructions/request (callgrind), 100")
    ]
    assert routing[1:] == ("1.055x", "1.050x", "MISSED")


@pytest.mark.skipif(
    bool(instructions.missing_tools()), reason="needs valgrind (.ci/run installs it)"
)
async def test_instruction_count_runs_end_to_end(tmp_path: Path) -> None:
    """`python -m bench instructions` as a user runs it: each target under callgrind, counted
    over exactly the requests asked for (the numbers themselves are bench/'s business)."""
    counts = await instructions.count(tmp_path, requests=30, concurrency=4)
    assert [c.target for c in counts] == ["floor", "keyrail", "keyrail-20x5", "keyrail-scoped20"]
    for c in counts:
        assert c.requests == 30
        assert c.per_request > 10_000  # a request is hundreds of thousands of instructions
