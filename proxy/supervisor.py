"""The supervisor: `keyrail serve --workers N` runs N worker processes on one port.

Owns: starting the workers (each a whole `keyrail serve` in its own process, listening on the
same host and port with SO_REUSEPORT, so the kernel spreads connections over them), restarting
a worker that exits on its own (after 0.5 s, 1 s, 2 s ... up to 30 s while it keeps failing;
back to 0.5 s once it has run for a minute), passing SIGHUP (reload) on to every worker,
passing SIGTERM/SIGINT on and waiting while every worker drains, and relaying the workers'
log lines to its own stderr, each tagged with the worker that wrote it (`worker=N ` before a
text line, `"worker":N` first in a JSON line). One process writes stderr, so lines of different
workers never interleave mid-line.
Does not own: validating the config (`keyrail serve` does that once before calling `run`),
serving (each worker is a full keyrail: app.py), watching the config file (each worker's own
reloader does, so a saved file reaches every worker), shared state (proxy/state/).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("keyrail.supervisor")
#: A worker's id (1..N), in its environment: it listens with SO_REUSEPORT and says who it is.
WORKER_ENV = "KEYRAIL_WORKER"
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: A worker that ran this long before exiting was healthy: its next restart is quick again.
HEALTHY_AFTER = 60.0
#: After the drain, how long workers get to exit before they are killed.
EXIT_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


def _flush_logs() -> None:
    """The supervisor's own lines go out at once (no app runs here to flush them)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def worker_id() -> int:
    """This process's worker id when a supervisor started it, else 0."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else 0


def reserve_port(host: str, port: int) -> int:
    """Check that the workers can listen on host:port (with SO_REUSEPORT); pick a free port
    for 0. Raises OSError with the reason when they cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class _Slot:
    """One worker position: its process now, and how its restarts are going."""

    number: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0
    relay: asyncio.Task[None] | None = None


class Supervisor:
    """Runs `count` workers of `argv` (a `keyrail serve` command line) until told to stop."""

    def __init__(self, argv: Sequence[str], count: int, drain_seconds: float) -> None:
        self.argv = list(argv)
        self.slots = [_Slot(i + 1) for i in range(count)]
        self.drain_seconds = drain_seconds
        self.stopping = asyncio.Event()
        self._out = sys.stderr.buffer

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        for slot in self.slots:
            await self._spawn(slot)
        watchers = [asyncio.create_task(self._watch(slot)) for slot in self.slots]
        await self.stopping.wait()
        await self._stop_all()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        log.info("all workers have stopped")
        _flush_logs()
        return 0

    def stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("%s: stopping %d workers (they drain first)", sig.name, len(self.slots))
            self.stopping.set()
            _flush_logs()

    def forward(self, sig: signal.Signals) -> None:
        """Pass a signal to every running worker (SIGHUP: each reloads its config)."""
        log.info("%s: passing it to %d workers", sig.name, len(self.slots))
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)
        _flush_logs()

    async def _spawn(self, slot: _Slot) -> None:
        env = {**os.environ, WORKER_ENV: str(slot.number), "PYTHONUNBUFFERED": "1"}
        read_end, write_end = _log_pipe()
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                preexec_fn=_in_child,
            )
        finally:
            os.close(write_end)  # the worker holds it now
        slot.started = time.monotonic()
        reader = asyncio.StreamReader(limit=1 << 22)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", 0)
        )
        slot.relay = asyncio.create_task(self._relay(slot.number, reader))
        log.info("worker %d started (pid %d)", slot.number, slot.proc.pid)

    async def _watch(self, slot: _Slot) -> None:
        """Restart the slot's worker whenever it exits while keyrail is not stopping."""
        while True:
            assert slot.proc is not None
            code = await slot.proc.wait()
            if slot.relay is not None:
                await slot.relay  # its last lines first
            if self.stopping.is_set():
                return
            ran = time.monotonic() - slot.started
            slot.failures = 1 if ran >= HEALTHY_AFTER else slot.failures + 1
            delay = min(FIRST_BACKOFF * 2 ** (slot.failures - 1), MAX_BACKOFF)
            log.warning(
                "worker %d (pid %d) exited with %s after %.1f s; restarting it in %g s",
                slot.number, slot.proc.pid, _exit_text(code), ran, delay,
            )  # fmt: skip
            _flush_logs()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)  # a stop cuts the wait
            if self.stopping.is_set():
                return
            await self._spawn(slot)

    async def _stop_all(self) -> None:
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in running]
        if not waits:
            return
        _done, late = await asyncio.wait(waits, timeout=self.drain_seconds + EXIT_GRACE)
        for proc in running:
            if proc.returncode is None:
                log.warning("worker pid %d did not stop after its drain: killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if late:
            await asyncio.wait(late)
        relays = [s.relay for s in self.slots if s.relay is not None]
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(self, number: int, stream: asyncio.StreamReader) -> None:
        """Copy a worker's output to stderr, whole lines at a time, each line tagged."""
        text_tag = f"worker={number} ".encode()
        json_tag = f'{{"worker":{number},'.encode()
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            end = pending.rfind(b"\n") + 1
            if not end:
                if len(pending) < 1 << 20:
                    continue
                end = len(pending)  # a 1 MiB line: pass it on rather than hold it
            self._write(_tagged(pending[:end], text_tag, json_tag))
            pending = pending[end:]
        if pending:
            self._write(_tagged(pending + b"\n", text_tag, json_tag))

    def _write(self, data: bytes) -> None:
        _flush_logs()  # the supervisor's own lines, in order with the workers'
        try:
            self._out.write(data)
            self._out.flush()
        except (OSError, ValueError):  # stderr gone: the workers keep serving
            pass


def _tagged(lines: bytes, text_tag: bytes, json_tag: bytes) -> bytes:
    """Every line with its worker's tag: `{"worker":N,...}` for JSON lines, else a prefix."""
    out = []
    for line in lines[:-1].split(b"\n"):  # `lines` ends with b"\n"
        out.append(json_tag + line[1:] if line.startswith(b"{") else text_tag + line)
    return b"\n".join(out) + b"\n"


def _log_pipe() -> tuple[int, int]:
    """A pipe for a worker's output, as large as the OS allows an unprivileged process
    (1 MiB on Linux): a worker blocks on a full pipe, and on a busy machine the supervisor may
    not run for tens of milliseconds, while a worker logs ~1 MB/s at full load."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    return read_end, write_end


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _in_child() -> None:
    """In the child before exec. Its own process group: a Ctrl-C reaches the supervisor only,
    which then stops each worker once (a second signal would cut a worker's drain short).
    The same session, though: the kernel's per-session CPU fairness (autogroup) treats the
    workers as one service. And when the supervisor dies, the kernel sends SIGTERM (Linux)."""
    os.setpgid(0, 0)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_argv(config_path: str | None, host: str, port: int) -> list[str]:
    """The command line of one worker: the same `keyrail serve`, one process."""
    argv = [sys.executable, "-m", "proxy", "serve", "--host", host, "--port", str(port)]
    if config_path is not None:
        argv += ["-c", config_path]
    return [*argv, "--workers", "1"]
