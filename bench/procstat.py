"""What the OS says a process tree costs: CPU seconds and peak resident memory, from /proc.

Owns: finding a process's descendants (nginx's worker, uvicorn's children), summing their CPU
time (nanosecond `schedstat` of every thread where the kernel has it, else `stat`'s
utime+stime in clock ticks), peak RSS (`VmHWM`), and pinning a process to CPUs.
Does not own: deciding what to measure when (runner.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def children_of(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def _thread_ns(pid: int) -> int | None:
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def _stat_ns(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) * 1_000_000_000 // _TICK


def cpu_ns(pids: Iterable[int]) -> int:
    """CPU time used so far by these processes (all threads), in nanoseconds."""
    total = 0
    for pid in pids:
        ns = _thread_ns(pid)
        total += ns if ns is not None else _stat_ns(pid)
    return total


def peak_rss_kib(pids: Iterable[int]) -> int:
    """Sum of each process's peak resident set (VmHWM), in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pin(pids: Iterable[int], cpus: Sequence[int]) -> str:
    """Pin every thread of these processes to `cpus`; returns what was done, for printing."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    for pid in pids:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), set(cpus))
        except OSError:
            continue
    return "cpu " + ",".join(map(str, cpus))
