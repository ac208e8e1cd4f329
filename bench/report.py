"""The output: markdown tables, the issue's targets as measured ratios, and latency plots.

Owns: `results.md` (the machine, the pinning, one table per scenario, the target checks),
`results.json` (every row, for comparing runs), and one hand-written SVG per scenario with the
latency distribution (CDF, log time axis) of each target. Does not own: the numbers (stats.py).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import orjson

from bench import instructions
from bench.instructions import Count
from bench.runner import SCENARIOS, RunResult
from bench.stats import Row, percentile

COLUMNS = (
    "target",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "added p50 ms",
    "TTFT p50 ms",
    "added TTFT p50 ms",
    "gap p99 ms",
    "CPU µs/req",
    "CPU µs/event",
    "req/CPU-s",
    "peak RSS MiB",
    "errors",
)


def _n(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r.target,
            _n(r.rps, 0),
            _n(r.p50),
            _n(r.p90),
            _n(r.p99),
            "-" if r.target == "direct" else _n(r.added_p50, 3),
            _n(r.ttft_p50),
            "-" if r.target == "direct" else _n(r.added_ttft_p50, 3),
            _n(r.gap_p99),
            _n(r.cpu_us_per_req, 0),
            _n(r.cpu_us_per_event, 1),
            _n(r.req_per_cpu_s, 0),
            _n(r.peak_rss_mib, 1),
            str(r.errors)
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in r.error_kinds.items())})"
                if r.error_kinds
                else ""
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _get(rows: Sequence[Row], scenario: str, target: str) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.target == target), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _paired(a: Row | None, b: Row | None) -> tuple[float, float, float] | None:
    """Median, min and max over rounds of a's CPU per unit ÷ b's in the same round.

    On a shared machine the CPU a slice costs drifts by 10-20 % from minute to minute; two
    targets loaded one after the other in a round see the same drift, so their ratio round
    by round is steadier than the ratio of the totals."""
    if a is None or b is None:
        return None
    ratios = [x / y for x, y in zip(a.cpu_per_round, b.cpu_per_round, strict=False) if y]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def checks(rows: Sequence[Row], counts: Sequence[Count] = ()) -> list[tuple[str, str, str, str]]:
    """The issue's targets: (what, measured, target, verdict). `counts` (instructions per
    request under callgrind, when counted) add the steady measure of the CPU targets."""
    out: list[tuple[str, str, str, str]] = []
    per_request = {c.target: c.per_request for c in counts}

    def add_instructions(what: str, a: str, b: str, limit: float, fmt: str) -> None:
        if a in per_request and b in per_request:
            add(what, per_request[a] / per_request[b], limit, fmt)

    def add(what: str, value: float | None, limit: float, fmt: str, below: bool = True) -> None:
        if value is None:
            out.append((what, "not measured", fmt.format(limit), "-"))
            return
        ok = value <= limit if below else value >= limit
        out.append((what, fmt.format(value), fmt.format(limit), "met" if ok else "MISSED"))

    def pair(s: str, a: str, b: str) -> tuple[Row | None, Row | None]:
        return _get(rows, s, a), _get(rows, s, b)

    def add_paired(
        what: str, a: Row | None, b: Row | None, limit: float, fmt: str, below: bool = True
    ) -> None:
        """A CPU ratio (a's CPU per unit ÷ b's) as the median of its per-round ratios, with
        their range."""
        paired = _paired(a, b)
        add(what, paired[0] if paired else None, limit, fmt, below)
        if paired and len(a.cpu_per_round if a else ()) > 1:
            what, value, target, verdict = out[-1]
            spread = f" (rounds {fmt.format(paired[1])}-{fmt.format(paired[2])})"
            out[-1] = (what, value + spread, target, verdict)

    k, f = pair("json-c32", "keyrail", "floor")
    add_paired("CPU/request at c=32, keyrail ÷ floor", k, f, 1.3, "{:.2f}x")
    add_instructions("instructions/request (callgrind), keyrail ÷ floor", "keyrail", "floor",
                     1.3, "{:.3f}x")  # fmt: skip
    k, f = pair("json-c1", "keyrail", "floor")
    add(
        "added latency p50 at c=1, keyrail ÷ floor",
        _ratio(k.added_p50 if k else None, f.added_p50 if f else None),
        1.5,
        "{:.2f}x",
    )
    for s in ("sse-50", "sse-500"):
        k, f = pair(s, "keyrail", "floor")
        add_paired(f"CPU/event {s}, keyrail ÷ floor", k, f, 1.3, "{:.2f}x")
    for s in ("sse-c1", "sse-50"):
        k, f = pair(s, "keyrail", "floor")
        add(f"added TTFT p50 {s}, keyrail (ms)", k.added_ttft_p50 if k else None, 1.0, "{:.3f}")
        floor = "" if f is None or f.added_ttft_p50 is None else f"floor: {f.added_ttft_p50:.3f}"
        if s == "sse-50" and out[-1][3] != "-":
            # The target reads at c=1; with 16 streams on one core a first event also waits
            # behind the other streams' events, which the floor's TTFT measures too.
            out[-1] = (*out[-1][:3], f"for comparison ({floor})")
        elif floor:
            out[-1] = (*out[-1][:3], f"{out[-1][3]} ({floor})")
    for s, what in (("json-c32", "requests per CPU-second at c=32"),
                    ("sse-50", "events per CPU-second sse-50")):  # fmt: skip
        k, lite = pair(s, "keyrail", "litellm")
        # keyrail's units per CPU-second ÷ LiteLLM's = LiteLLM's CPU per unit ÷ keyrail's
        add_paired(f"{what}, keyrail ÷ LiteLLM", lite, k, 25.0, "{:.1f}x", below=False)
    one, many = pair("routing", "keyrail", "keyrail-20x5")
    add_paired(
        "CPU/request, 100 credentials over 20 providers ÷ 1 credential", many, one, 1.05, "{:.3f}x"
    )
    if "keyrail-20x5" in per_request and out[-1][3] != "-":
        # CPU time moves more than 5 % between rounds on a shared machine: it cannot resolve
        # this target, the instruction count (repeat runs within about 1 %) can.
        out[-1] = (*out[-1][:3], "for comparison (instructions decide)")
    add_instructions(
        "instructions/request (callgrind), 100 credentials over 20 providers ÷ 1 credential",
        "keyrail-20x5", "keyrail", 1.05, "{:.3f}x",
    )  # fmt: skip
    add_instructions(
        "instructions/request (callgrind), 20 scoped client keys with limits ÷ 1 plain key",
        "keyrail-scoped20", "keyrail", 1.05, "{:.3f}x",
    )  # fmt: skip
    return out


def markdown(result: RunResult) -> str:
    rows = result.rows
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.started))
    o = result.options
    parts = [
        "# keyrail bench results",
        "",
        f"Run {when} on {platform.machine()}, {_cpu_model()}, Python {platform.python_version()}"
        f", {o.seconds:g} s of load per target per scenario in {o.rounds} interleaved rounds "
        f"(after {o.warmup:g} s of warm-up each). Loopback only. How to read this: "
        "bench/README.md.",
        "",
        "## Processes and pinning",
        "",
        *[f"- {n}" for n in result.notes],
        "",
        "## Targets of issue 7",
        "",
        "| check | measured | target | verdict |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in checks(rows, result.instructions)],
    ]
    if result.instructions:
        parts += [
            "",
            "## Instructions per request (callgrind)",
            "",
            f"{instructions.REQUESTS} non-streamed requests at concurrency "
            f"{instructions.CONCURRENCY} per target, counted by `valgrind --tool=callgrind` "
            "(user space only: no kernel, no cache misses). Steady where CPU time is not; "
            "`python -m bench instructions` runs this alone.",
            "",
            instructions.table(result.instructions),
        ]
    for name in dict.fromkeys(r.scenario for r in rows):
        sc = SCENARIOS[name]
        parts += [
            "",
            f"## {name}: {sc.title}",
            "",
            table([r for r in rows if r.scenario == name]),
            "",
            f"![latency distribution](latency-{name}.svg)",
        ]
    return "\n".join(parts) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


_COLORS = ("#444444", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def svg(rows: Sequence[Row], title: str) -> str:
    """Latency CDF per target: x is latency (ms, log scale), y the percentile on a scale
    that gives p50, p90, p99 and p99.9 equal room, so the tails can be compared."""
    w, h, left, right, top, bottom = 720, 400, 60, 150, 30, 45
    pw, ph = w - left - right, h - top - bottom
    values = [v for r in rows for v in r.latencies_ms if v > 0]
    if not values:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="40"></svg>\n'
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    span = math.log10(hi) - math.log10(lo)

    def x(v: float) -> float:
        return left + (math.log10(max(v, lo)) - math.log10(lo)) / span * pw

    def y(q: float) -> float:  # "nines" scale: p50, p90, p99, p99.9 evenly spaced, tail visible
        nines = -math.log10(max(1 - q, 1e-3))
        return top + (1 - nines / 3) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{_esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    decade = lo
    while decade <= hi * 1.0001:
        xx = x(decade)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{xx:.1f}" y="{top + ph + 15}" text-anchor="middle">{decade:g}</text>')
        decade *= 10
    for q in (0.5, 0.9, 0.99, 0.999):
        out.append(
            f'<line x1="{left}" y1="{y(q):.1f}" x2="{left + pw}" y2="{y(q):.1f}" '
            f'stroke="#eee"/><text x="{left - 5}" y="{y(q) + 4:.1f}" '
            f'text-anchor="end">p{q * 100:g}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">latency, ms (log scale)</text>'
    )
    for i, r in enumerate(rows):
        lat = r.latencies_ms
        if not lat:
            continue
        color = _COLORS[i % len(_COLORS)]
        n = len(lat)
        # ~400 points evenly spread on the y scale (so the tail keeps its detail), plus the max
        grid = (math.ceil((1 - 10 ** (-3 * k / 399)) * n) - 1 for k in range(400))
        idx = [*(min(max(j, 0), n - 1) for j in grid), n - 1]
        pts = " ".join(f"{x(lat[j]):.1f},{y((j + 1) / n):.1f}" for j in sorted(set(idx)))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts}"/>')
        p50 = percentile(lat, 50) or 0
        out.append(
            f'<text x="{left + pw + 10}" y="{top + 14 + 16 * i}" fill="{color}">'
            f"{_esc(r.target)} p50 {p50:.2f}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write(result: RunResult, out: Path) -> Path:
    """Write results.md, results.json and the SVGs into `out`; returns results.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(r.scenario for r in result.rows):
        rows = [r for r in result.rows if r.scenario == name]
        (out / f"latency-{name}.svg").write_text(svg(rows, f"{name}: {SCENARIOS[name].title}"))
    data = {
        "meta": result.meta(),
        "rows": [r.to_json() for r in result.rows],
        "checks": checks(result.rows, result.instructions),
        "instructions": [asdict(c) | {"per_request": c.per_request} for c in result.instructions],
    }
    (out / "results.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    md = out / "results.md"
    md.write_text(markdown(result))
    return md
