"""`python -m bench`: run scenarios and write the results; or verify LiteLLM's isolation.

Owns: the command line. `python -m bench` runs every scenario (what `make bench` does) and,
when valgrind is installed, counts instructions per request too; `--scenario NAME`
(repeatable) runs some; `verify-litellm` runs the strace check; `instructions` counts
instructions per request under callgrind alone; `scale` compares one worker with two and
`state: redis` with `memory` (scale.py; needs wrk and redis-server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench import instructions, peers, report, runner

RESULTS = Path(__file__).resolve().parent / "results"


def _cpus(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()] if text else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "verify-litellm", "list", "instructions", "scale"),
    )
    parser.add_argument(
        "--scenario",
        "-s",
        action="append",
        choices=sorted(runner.SCENARIOS),
        help="run only these scenarios (repeatable); default: all",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=4.0,
        help="seconds of load per target per scenario (default 4)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=8,
        help="interleaved rounds (default 8: CPU ratios are the median of per-round pairs)",
    )
    parser.add_argument("--warmup", type=float, default=0.4)
    parser.add_argument(
        "--only", action="append", default=[], help="only these targets (direct is always kept)"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="more targets for every scenario: keyrail-PxK (P blocks of K keys, one pool)",
    )
    parser.add_argument("--skip", action="append", default=[], help="leave these targets out")
    parser.add_argument("--target-cpus", help="CPUs for the proxies, e.g. 1 (default: last)")
    parser.add_argument("--bench-cpus", help="CPUs for load generator and upstream")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument(
        "--no-instructions",
        action="store_true",
        help="skip the instruction count (~40 s; runs when valgrind is installed and the "
        "json-c32 or routing scenario is in the run)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)

    if args.command == "list":
        for s in runner.SCENARIOS.values():
            print(f"{s.name:12} {s.title}  targets: {', '.join(s.targets)}")
        return 0
    if args.command == "instructions":
        return _instructions()
    if args.command == "scale":
        from bench import scale

        return scale.main(args.seconds, not args.no_instructions)
    if args.command == "verify-litellm":
        verdict = peers.verify_litellm(peers.PEERS / "verify")  # kept for inspection
        print(verdict)
        return 0 if verdict.startswith("OK") else 1

    opts = runner.Options(
        scenarios=args.scenario or tuple(runner.SCENARIOS),
        seconds=args.seconds,
        rounds=args.rounds,
        warmup=args.warmup,
        only=args.only,
        extra=args.extra,
        skip=args.skip,
    )
    if args.no_pin:
        opts.target_cpus, opts.bench_cpus = [], []
    if args.target_cpus is not None:
        opts.target_cpus = _cpus(args.target_cpus)
    if args.bench_cpus is not None:
        opts.bench_cpus = _cpus(args.bench_cpus)
    with tempfile.TemporaryDirectory(prefix="keyrail-bench-") as tmp:
        result = _run(opts, Path(tmp))
    if not args.no_instructions and {"json-c32", "routing"} & set(opts.scenarios):
        if instructions.missing_tools():
            result.notes.append("instructions per request: not counted (needs valgrind)")
        else:
            print("counting instructions per request under callgrind (~40 s)", file=sys.stderr)
            try:
                with tempfile.TemporaryDirectory(prefix="keyrail-bench-") as tmp:
                    result.instructions = asyncio.run(instructions.count(Path(tmp)))
            except Exception as exc:  # the timed results are written all the same
                print(f"instruction count failed: {exc!r}", file=sys.stderr)
                result.notes.append(f"instructions per request: not counted ({exc})")
    md = report.write(result, args.out)
    print(f"\nwrote {md}", file=sys.stderr)
    print(md.read_text())
    return 0


def _instructions() -> int:
    missing = instructions.missing_tools()
    if missing:
        print(f"needs {', '.join(missing)} (apt install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="keyrail-bench-") as tmp:
        counts = asyncio.run(instructions.count(Path(tmp)))
    print(instructions.table(counts))
    return 0


def _run(opts: runner.Options, workdir: Path) -> runner.RunResult:
    try:
        import uvloop

        return uvloop.run(runner.run(opts, workdir))
    except ImportError:  # pragma: no cover
        return asyncio.run(runner.run(opts, workdir))


if __name__ == "__main__":
    raise SystemExit(main())
