"""The deployment files: Dockerfile, deploy/docker-compose.yml, nginx.conf, config, systemd unit.

Where no Docker daemon runs (CI, this machine), the Dockerfile is linted here and its
commands are run by `make test-deploy` (`KEYRAIL_TEST_DEPLOY=1`): the files it copies are
laid out as in the image, its `RUN pip install .` builds a fresh venv from the registries, the
`ENTRYPOINT` serves from it, and its `HEALTHCHECK` command must pass against that server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from ruamel.yaml import YAML

from proxy import config
from proxy.registry import Registry, options_lookup
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _healthcheck_argv() -> list[str]:
    [health] = [args for word, args in _instructions() if word == "HEALTHCHECK"]
    return list(orjson.loads(health.split(" CMD ", 1)[1]))


def test_dockerfile_lint():
    steps = _instructions()
    words = [w for w, _ in steps]
    assert words[0] == "FROM" and re.fullmatch(r"python:3\.1[1-9]-slim", steps[0][1])
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD"}  # fmt: skip
    assert set(words) <= known, set(words) - known
    # a non-root user, set before the process starts, and created in the image
    [user] = [a for w, a in steps if w == "USER"]
    assert user not in ("root", "0") and words.index("USER") < words.index("ENTRYPOINT")
    assert any("useradd" in a and user in a for w, a in steps if w == "RUN")
    # `keyrail serve` as the entry point, exec form (signals reach keyrail, not a shell)
    [entry] = [a for w, a in steps if w == "ENTRYPOINT"]
    assert orjson.loads(entry) == ["keyrail", "serve"]
    assert "/health" in " ".join(_healthcheck_argv())
    # every COPY source is in the repository and not excluded by .dockerignore
    ignored = {
        ln.strip().lstrip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for word, args in steps:
        if word == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source not in ignored, source
    # what `pip install .` needs: the packages pyproject names, and its readme
    copied = " ".join(a for w, a in steps if w == "COPY")
    for needed in ("pyproject.toml", "README.md", "proxy", "drivers"):
        assert needed in copied
    assert {".git", ".venv"} <= ignored  # no history, no local venv in the build context


def test_compose_runs_two_instances_redis_and_nginx():
    doc = YAML(typ="safe").load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "keyrail-1", "keyrail-2", "nginx"} <= set(services)
    for name in ("keyrail-1", "keyrail-2"):
        svc = services[name]
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert (context / svc["build"]["dockerfile"]).is_file()
        assert "redis" in svc["depends_on"]
        for volume in svc["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).is_file(), volume
    assert services["nginx"]["ports"] == ["8317:8317"]
    for volume in services["nginx"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).is_file()
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server keyrail-1:8317" in nginx and "server keyrail-2:8317" in nginx
    assert "proxy_buffering off" in nginx  # streams pass through as they come


def test_deploy_config_is_valid_and_shares_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KEYRAIL_API_KEY", "a-client-key-for-the-test-0123456789")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    settings = config.load(DEPLOY / "config.yaml", options_lookup(Registry.discover()))
    assert settings.state == "redis://redis:6379/0"
    assert config.bind_problem(settings) is None  # 0.0.0.0 with a client key is allowed
    assert settings.providers[0].name == "openai"


def test_systemd_unit():
    unit = (DEPLOY / "keyrail.service").read_text()
    assert re.search(r"^ExecStart=\S+/keyrail serve --workers \d+$", unit, re.M)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "KillMode=mixed" in unit  # SIGTERM to the supervisor, which drains the workers
    assert re.search(r"^User=keyrail$", unit, re.M)
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(DEPLOY / "keyrail.service")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        # the unit's own syntax; a missing /opt/keyrail binary or user is this machine's state
        problems = [
            ln for ln in done.stderr.splitlines()
            if "keyrail.service" in ln and "not executable" not in ln
            and "No such file" not in ln and "Failed to" not in ln
        ]  # fmt: skip
        assert not problems, done.stderr


@pytest.mark.skipif(
    os.environ.get("KEYRAIL_TEST_DEPLOY") != "1", reason="make test-deploy runs it (pip installs)"
)
def test_dockerfile_commands_build_and_serve(tmp_path: Path):
    """The image's steps without Docker: COPY, RUN pip install ., ENTRYPOINT, HEALTHCHECK."""
    image = tmp_path / "image"
    workdir = image / "opt" / "keyrail"
    workdir.mkdir(parents=True)
    for word, args in _instructions():
        if word == "COPY":
            *sources, dest = shlex.split(args)
            target = image / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            for source in sources:
                src = ROOT / source
                out = target / src.name if dest.endswith("/") else target
                if src.is_dir():
                    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, out)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    [run] = [a for w, a in _instructions() if w == "RUN"]
    pip_step = run.split("&&")[0].strip()
    assert pip_step == "pip install ."
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "."], cwd=workdir, check=True,
        timeout=600,
    )  # fmt: skip
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"port: {port}\n")
    server = subprocess.Popen(
        [str(venv / "bin" / "keyrail"), "serve", "-c", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        argv = _healthcheck_argv()
        argv[0] = str(venv / "bin" / argv[0])
        env = {**os.environ, "KEYRAIL_HEALTH_URL": f"http://127.0.0.1:{port}/health"}
        deadline = time.monotonic() + 30
        while subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "never healthy"
            time.sleep(0.1)  # polling a process that is starting, bounded by the deadline
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the health check fails when nothing answers
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode != 0
