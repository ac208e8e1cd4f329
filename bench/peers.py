"""The other proxies keyrail is compared with: nginx and LiteLLM, configured for the bench.

Owns: nginx's config (one worker, upstream keepalive, no buffering of streams, bodies kept in
memory, access log to a file), LiteLLM's config and environment (no database, telemetry and
callbacks off, the bundled model cost map), and proof that LiteLLM sends nothing off the
machine: `verify_litellm` runs it under `strace -e trace=connect,sendto`, sends it requests,
and accepts only loopback, Unix and netlink addresses. The bench uses LiteLLM only after that
check has passed (`make bench-peers` runs it). Also a check of a running process's sockets.
Does not own: starting processes (targets.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PEERS = Path(__file__).resolve().parent / ".peers"
VERIFIED = PEERS / "litellm-verified.txt"
LITELLM_KEY = "sk-bench-litellm-master"
#: Everything that could make LiteLLM reach out: cost map, telemetry, feedback, hubs.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_LOG": "ERROR",
}


def litellm_env() -> dict[str, str]:
    """The environment LiteLLM runs in: ours, without a database URL, plus `LITELLM_ENV`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_HOST")}
    return {**env, **LITELLM_ENV}


def nginx_config(prefix: Path, port: int, upstream_port: int) -> Path:
    """Write nginx.conf under `prefix` (logs and temp files stay there); returns its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(exist_ok=True)
        (prefix / sub).chmod(0o777)  # workers may run as nobody when started as root
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {prefix}/logs/access.log;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  upstream bench {{ server 127.0.0.1:{upstream_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering on;
    }}
  }}
}}
"""
    )
    return conf


def litellm_exe() -> Path | None:
    exe = PEERS / "bin" / "litellm"
    return exe if exe.exists() else None


def litellm_verified() -> bool:
    return VERIFIED.exists() and VERIFIED.read_text().startswith("OK")


def litellm_argv(exe: Path, config: Path, port: int) -> list[str]:
    """LiteLLM's proxy on 127.0.0.1, one worker, telemetry off: as verified and as benched."""
    return [
        str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1", "--telemetry", "False",
        # uvicorn closes idle connections after 5 s (keyrail, the floor and nginx: 75 s);
        # between its slices LiteLLM idles longer than that, and the client's next requests
        # would race those closes
        "--keepalive_timeout", "300",
    ]  # fmt: skip


def litellm_config(upstream: str) -> str:
    config = {
        "model_list": [
            {
                "model_name": "bench-model",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": upstream + "/v1",
                    "api_key": "sk-bench-upstream",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True},
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


_ADDR = re.compile(r'(sin6?_addr=inet_(?:addr|pton)\((?:AF_INET6?, )?"([^"]+)")')
_FAMILY = re.compile(r"sa_family=(AF_[A-Z0-9]+)")


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::") or addr.startswith("::ffff:127.")


def strace_problems(trace: str) -> tuple[list[str], int]:
    """Lines of an strace log that address anything but loopback/Unix/netlink; and a count."""
    bad, seen = [], 0
    for line in trace.splitlines():
        if "connect(" not in line and "sendto(" not in line and "sendmsg(" not in line:
            continue
        families = _FAMILY.findall(line)
        if not families:
            continue  # sendto on a connected socket names no address
        seen += 1
        for family in families:
            if family in ("AF_UNIX", "AF_NETLINK", "AF_UNSPEC"):
                continue
            addrs = [m[1] for m in _ADDR.findall(line)]
            if not addrs or not all(_loopback(a) for a in addrs):
                bad.append(line.strip())
    return bad, seen


def _post(url: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {LITELLM_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        resp.read()
        return int(resp.status)


def verify_litellm(workdir: Path) -> str:
    """Run LiteLLM under strace with a fake upstream, send it requests, judge its addresses.

    Writes the verdict to `VERIFIED` ("OK …" or "FAILED …") and returns it.
    """
    from bench.targets import free_port

    exe, strace = litellm_exe(), "/usr/bin/strace"
    if exe is None:
        return "FAILED: LiteLLM is not installed under bench/.peers"
    if not Path(strace).exists():
        verdict = "FAILED: strace is not installed, so LiteLLM's traffic cannot be checked"
        VERIFIED.write_text(verdict + "\n")
        return verdict
    workdir.mkdir(parents=True, exist_ok=True)
    up_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = workdir / "litellm-verify.yaml"
    config.write_text(litellm_config(f"http://127.0.0.1:{up_port}"))
    trace_file = workdir / "litellm.strace"
    trace = [strace, "-f", "-qq", "-s", "200", "-e", "trace=connect,sendto,sendmsg"]
    argv = [*trace, "-o", str(trace_file), *litellm_argv(exe, config, port)]
    log = (workdir / "litellm-verify.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=litellm_env())
    statuses: list[int] = []
    verdict = "FAILED: no verdict"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        msg = [{"role": "user", "content": "hi"}]
        for stream in (False, True, False):
            statuses.append(_post(url, {"model": "bench-model", "messages": msg, "stream": stream}))
        time.sleep(3)  # give any background task (telemetry, cost map refresh) time to fire
    except OSError as exc:
        statuses.append(0)
        verdict = f"FAILED: LiteLLM did not serve ({exc}); see {workdir}/litellm-verify.log"
    finally:
        # strace detaches on SIGTERM and would leave LiteLLM running: end the traced tree first.
        from bench.procstat import children_of

        for pid in reversed(children_of(proc.pid)[1:]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
        upstream.terminate()
        upstream.wait(timeout=10)
        log.close()
    if statuses and all(s == 200 for s in statuses):
        bad, seen = strace_problems(trace_file.read_text(errors="replace"))
        if bad:
            verdict = "FAILED: LiteLLM addressed non-loopback hosts:\n" + "\n".join(bad[:20])
        else:
            verdict = (
                f"OK: LiteLLM served {len(statuses)} requests; all {seen} addressed "
                "connect/sendto calls under strace went to loopback, Unix or netlink sockets"
            )
    elif statuses and 0 not in statuses:
        verdict = f"FAILED: LiteLLM answered {statuses}; see {workdir}/litellm-verify.log"
    VERIFIED.write_text(verdict + "\n")
    return verdict


def remote_addresses(pids: list[int]) -> set[str]:
    """Remote IPv4/IPv6 addresses of these processes' open TCP/UDP sockets (hex from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    remotes: set[str] = set()
    if not pids:
        return remotes
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    remotes.add(_hex_addr(cols[2].split(":")[0]))
    return remotes


def _hex_addr(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def off_machine(addresses: set[str]) -> set[str]:
    return {a for a in addresses if not (_loopback(a) or a in ("0.0.0.0", "::"))}
