"""The targets: what the load generator can point at, each started as its own process.

Owns: starting and stopping the fake upstream, keyrail (`keyrail serve -c <generated config>`
on uvloop, in 1-credential and 20-provider/100-credential shapes), the floor forwarder, and
(when installed) nginx and LiteLLM, on free 127.0.0.1 ports; waiting until each answers;
pinning each to its CPUs. Does not own: peer configs (peers.py), measuring (runner.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import peers, procstat
from bench.loadgen import MODEL

CLIENT_KEY = "sk-bench-client"
CHAT = "/v1/chat/completions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    """One thing to load: its chat URL, the headers it needs, and the processes it costs."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    pinning: str = "-"
    note: str = ""

    def refresh_pids(self) -> None:
        if self.proc is not None:
            self.pids = procstat.children_of(self.proc.pid)

    def pause(self, paused: bool) -> None:
        """Stop (SIGSTOP) or continue the target's processes. A target is paused while
        another one is loaded: the proxies share one pinned CPU, and an idle proxy's own
        timers (LiteLLM has many) would otherwise run on the core being measured. `direct`
        (the upstream itself) is never paused."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
            except ProcessLookupError:
                continue

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.pause(False)  # a stopped process would hold its SIGTERM until continued
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s")


class Fleet:
    """Every process of one bench run; `stop()` ends them all (only the ones it started)."""

    def __init__(self, workdir: Path, target_cpus: list[int], bench_cpus: list[int]) -> None:
        self.workdir = workdir
        self.target_cpus = target_cpus
        self.bench_cpus = bench_cpus
        self.started: list[Target] = []
        self.upstream_port = 0

    def _spawn(
        self,
        name: str,
        argv: list[str],
        port: int,
        cpus: list[int],
        env: dict[str, str] | None = None,
        wait: float = 30.0,
        wrap: list[str] | None = None,
    ) -> Target:
        """Start `argv` (after `wrap`, e.g. valgrind, which is slow to start) and wait for it."""
        if wrap:
            argv, wait = [*wrap, *argv], max(wait, 300.0)
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else dict(os.environ),
                cwd=self.workdir,
            )
        target = Target(name=name, url=f"http://127.0.0.1:{port}{CHAT}", proc=proc)
        self.started.append(target)
        _wait_port(port, proc, wait, log)
        target.refresh_pids()
        target.pinning = procstat.pin(target.pids, cpus)
        return target

    @staticmethod
    def _py_env() -> dict[str, str]:
        """Our environment, with this checkout first on the path (for `-m bench.*`)."""
        root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}

    def upstream(self) -> Target:
        self.upstream_port = free_port()
        argv = [sys.executable, "-m", "bench.upstream", "--port", str(self.upstream_port)]
        return self._spawn("upstream", argv, self.upstream_port, self.bench_cpus, self._py_env())

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def direct(self, up: Target) -> Target:
        return Target(
            name="direct",
            url=self.upstream_url + CHAT,
            pids=up.pids,
            pinning=up.pinning,
            note="the upstream itself",
        )

    def floor(self, wrap: list[str] | None = None) -> Target:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.floor",
            "--port",
            str(port),
            "--upstream",
            self.upstream_url,
        ]
        return self._spawn("floor", argv, port, self.target_cpus, self._py_env(), wrap=wrap)

    def keyrail(
        self,
        name: str = "keyrail",
        providers: int = 1,
        keys_each: int = 1,
        wrap: list[str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> Target:
        """`extra`: more top-level config keys (`workers`, `state`: bench/scale.py)."""
        port = free_port()
        config = self.workdir / f"{name}.yaml"
        config.write_text(keyrail_config(port, self.upstream_url, providers, keys_each, extra))
        exe = shutil.which("keyrail", path=str(Path(sys.executable).parent)) or "keyrail"
        argv = [exe, "serve", "-c", str(config)]
        target = self._spawn(name, argv, port, self.target_cpus, wrap=wrap)
        target.headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        target.note = (
            f"{providers} provider(s) x {keys_each} key(s); access log to {name}.log (a file)"
        )
        if extra and "api-keys" in extra:
            target.note += f"; {len(extra['api-keys'])} client keys"  # type: ignore[arg-type]
        return target

    def nginx(self) -> Target | None:
        exe = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if exe is None:
            return None
        port = free_port()
        prefix = self.workdir / "nginx"
        conf = peers.nginx_config(prefix, port, self.upstream_port)
        target = self._spawn(
            "nginx", [exe, "-p", str(prefix), "-c", str(conf)], port, self.target_cpus
        )
        target.note = "1 worker, upstream keepalive, proxy_buffering off, access log to a file"
        return target

    def litellm(self) -> Target | None:
        exe = peers.litellm_exe()
        if exe is None or not peers.litellm_verified():
            return None
        port = free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(peers.litellm_config(self.upstream_url))
        argv = peers.litellm_argv(exe, config, port)  # as verify_litellm ran it
        target = self._spawn(
            "litellm", argv, port, self.target_cpus, env=peers.litellm_env(), wait=120.0
        )
        target.headers = {"Authorization": f"Bearer {peers.LITELLM_KEY}"}
        target.note = "1 worker, no database, callbacks and telemetry off, local cost map"
        return target

    def stop(self) -> None:
        for target in reversed(self.started):
            target.stop()


def scoped_keys(n: int) -> list[dict[str, object]]:
    """`n` named clients with a model scope and every limit (high enough never to refuse),
    the first with the load's key: what scope and limits cost next to a plain key."""
    return [
        {
            "key": CLIENT_KEY if i == 0 else f"sk-bench-scoped-client-{i:02d}",
            "name": f"team-{i:02d}",
            "models": ["bench-*", "other-*"],
            "rpm": 1_000_000_000,
            "tpm": 1_000_000_000_000,
            "max-concurrent": 10_000,
            "daily-tokens": 1_000_000_000_000_000,
        }
        for i in range(n)
    ]


def keyrail_config(
    port: int,
    upstream: str,
    providers: int,
    keys_each: int,
    extra: dict[str, object] | None = None,
) -> str:
    """A keyrail config: `providers` blocks of `keys_each` keys, all serving the bench model.

    JSON is YAML, so the file is written with orjson. Every block serves the same model: one
    pool of providers*keys credentials, the worst case for picking a credential. `extra`
    adds or replaces top-level keys (`api-keys: scoped_keys(20)` for named clients).
    """
    blocks = [
        {
            "name": f"up{p}",
            "base-url": upstream + "/v1",
            "api-key-entries": [{"api-key": f"sk-bench-{p}-{k}"} for k in range(keys_each)],
            "models": [{"name": MODEL}, *({"name": f"other-{p}-{m}"} for m in range(4))],
        }
        for p in range(providers)
    ]
    config = {
        "host": "127.0.0.1",
        "port": port,
        "api-keys": [CLIENT_KEY],
        "openai-compatibility": blocks,
        **(extra or {}),
    }
    return orjson.dumps(config, option=orjson.OPT_INDENT_2).decode() + "\n"
