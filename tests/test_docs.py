"""The documented outputs cannot drift: each example output in docs/operations.md and the
README is compared with what keyrail prints for the same command, run now against a live
keyrail in front of fake upstreams (the docs' own example config).

Values differ from run to run (ids, timings), so lines are compared by their shape: for a
`key=value` line, its keys in order, each value reduced to `-` (none), a number, or text (so a
documented `request_id=-` no longer matches once every answer has an id); for other lines, the
text with numbers, ids and quoted parts masked. A documented line ending in `…` only has to be
a prefix. A test here fails when a documented example no longer matches what keyrail does:
update the doc from a real run.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.canary import run as run_canary
from tests.fakes import FakeOpenAI, Script

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "operations.md", ROOT / "README.md"]
CLIENT_KEY = "client-key-docs"

#: The kinds of documented output, each recognized by a pattern on the doc's line.
KINDS = {
    "canary-ok": re.compile(r"^ok model="),
    "canary-fail": re.compile(r"^FAIL model="),
    "access": re.compile(r"keyrail\.access "),
    "attempt": re.compile(r"keyrail\.upstream attempt failed "),
    "check-ok": re.compile(r"^\S+: OK \(\d+ provider blocks\)$"),
    "pool-note": re.compile(r"^note: \S+ is served by several providers"),
    "unlisted-note": re.compile(r"^note: \S+ lists no models"),
    "discovery": re.compile(r"model discovery failed \("),
}


def documented() -> list[tuple[str, str, str]]:
    """(kind, where, line) for every example output line of a known kind in the docs."""
    found = []
    for doc in DOCS:
        inside = False
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                inside = line.strip() == "```console" if not inside else False
                continue
            if not inside or line.startswith("$ "):
                continue
            for kind, pattern in KINDS.items():
                if pattern.search(line):
                    found.append((kind, f"{doc.name}:{number}", line))
    return found


_PAIR = re.compile(r"""(\w+)=("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\S+)""")


def shape(line: str) -> tuple[str, ...]:
    """A line's shape: `key=class` tokens for key=value lines, else masked text."""
    line = line.removeprefix("… ")
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)  # a real log timestamp
    pairs = _PAIR.findall(line)
    if len(pairs) >= 3:
        head = line[: line.index(pairs[0][0] + "=")].split()
        tokens = [f"{k}={_value_class(v)}" for k, v in pairs if k not in OPTIONAL_KEYS]
        if " … " in line:  # an elision in the middle of the documented line
            cut = len(_PAIR.findall(line[: line.index(" … ")]))
            tokens.insert(cut, "…")
        return (*head, *tokens)
    text = re.sub(r"^\S+: OK ", "FILE: OK ", line)  # the checked file's name
    text = re.sub(r"\(.*\)", "(…)", text)  # what is in parentheses varies (errors, ports)
    text = re.sub(r"\b[0-9a-f]{8,12}\b|\d+(\.\d+)?", "N", text)
    return tuple(text.split())


#: Keys a line has only in some runs (a Kiro answer's host): not part of the shape.
OPTIONAL_KEYS = frozenset({"host", "hosts_failed", "retry_after"})


def _value_class(value: str) -> str:
    if value == "-":
        return "-"
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return "N"
    return "V"


def matches(doc_line: str, real: str) -> bool:
    """The real line has the documented shape; `…` in the doc stands for any tokens."""
    open_end = doc_line.rstrip().endswith("…")
    doc_shape, real_shape = shape(doc_line.rstrip(" …")), shape(real)
    segments: list[list[str]] = [[]]
    for token in doc_shape:
        if token == "…":
            segments.append([])
        else:
            segments[-1].append(token)
    at = 0
    for i, segment in enumerate(segments):
        if i == 0:
            if list(real_shape[: len(segment)]) != segment:
                return False
            at = len(segment)
            continue
        while at + len(segment) <= len(real_shape):
            if list(real_shape[at : at + len(segment)]) == segment:
                break
            at += 1
        else:
            return False
        at += len(segment)
    return open_end or at == len(real_shape)


def example_config(urls: dict[str, str], closed_port: int) -> str:
    """The docs' example config, as written, pointed at the fakes; plus a block that lists no
    models and whose upstream is down (the missing-models playbook's `catalog`)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    start = text.index("The example config used below")
    block = text[text.index("```yaml", start) + len("```yaml\n") :]
    block = block[: block.index("```")]
    for name, url in urls.items():
        block = re.sub(rf"https://{name}\.example/v1", url, block)
    return block + (
        f"  - name: catalog\n    prefix: cat\n    base-url: http://127.0.0.1:{closed_port}/v1\n"
    )


@pytest.fixture
async def live(start_upstream_app, start_keyrail, monkeypatch, tmp_path, log_text):
    """keyrail from the docs' config (and the file, for the offline commands)."""
    for var, value in {
        "KEYRAIL_CLIENT_KEY": CLIENT_KEY, "KEYRAIL_MANAGEMENT_KEY": "management-key-docs",
        "PRIMARY_KEY_1": "pk-docs-1", "PRIMARY_KEY_2": "pk-docs-2", "BACKUP_KEY_1": "bk-docs-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    primary = FakeOpenAI("primary", ("gpt-4o-mini", "o1-pro"))
    backup = FakeOpenAI("backup", ("gpt-4o",))
    urls = {
        "primary": await start_upstream_app(primary.app) + "/v1",
        "aggregator": await start_upstream_app(backup.app) + "/v1",
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    text = example_config(urls, closed)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    kr = await start_keyrail(text)
    return kr, primary, path, log_text


async def real_outputs(live, capsys) -> dict[str, list[str]]:
    """One real line (or more) of each kind, from the commands the docs show."""
    kr, primary, path, log_text = live
    out: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for model in ("chat", "direct/chat", "agg/chat"):  # `keyrail canary MODEL`
        verdict = await run_canary(model, kr.url, CLIENT_KEY)
        assert verdict.ok, verdict.line(model)
        out["canary-ok"].append(verdict.line(model))
    out["canary-fail"].append((await run_canary("nope", kr.url, CLIENT_KEY)).line("nope"))
    primary.script = lambda seen: Script(status=401)  # the 401/403 playbook's state
    failed = await run_canary("direct/chat", kr.url, CLIENT_KEY)
    assert failed.status == 502, failed.line("direct/chat")
    out["canary-fail"].append(failed.line("direct/chat"))
    for logged in log_text().splitlines():  # "logger LEVEL message", as the test kit logs
        name, level, message = [*logged.split(" ", 2), "", ""][:3]
        line = f"{level} {name} {message}"  # as `keyrail serve` writes it, after its timestamp
        for kind in ("access", "attempt", "discovery"):
            if KINDS[kind].search(line):
                out[kind].append(line)
    main(["check", "-c", str(path)])  # `keyrail check -c config.yaml`
    main(["models", "-c", str(path), "--offline"])  # `keyrail models -c config.yaml`
    for line in capsys.readouterr().out.splitlines():
        for kind in ("check-ok", "pool-note", "unlisted-note"):
            if KINDS[kind].search(line):
                out[kind].append(line)
    return out


async def test_every_documented_output_matches_a_real_run(live, capsys):
    examples = documented()
    assert {kind for kind, _, _ in examples} == set(KINDS), "an example kind went missing"
    real = await real_outputs(live, capsys)
    stale = []
    for kind, where, line in examples:
        assert real[kind], f"the run produced no {kind} line to compare {where} with"
        if not any(matches(line, candidate) for candidate in real[kind]):
            stale.append(f"{where} ({kind}):\n    doc:  {line}\n    real: {real[kind][0]}")
    assert not stale, "documented outputs that keyrail no longer prints:\n" + "\n".join(stale)


def test_the_shape_check_fails_on_drift():
    """The comparison is strict enough to catch the drift that happened before."""
    real = "request_id=3994a3deb9c5 method=POST path=/v1/chat/completions model=chat status=200"
    assert matches("… INFO keyrail.access " + real, "INFO keyrail.access " + real)
    assert not matches("… INFO keyrail.access 3994a3deb9c5 POST /v1/chat/completions "
                       "model=chat provider=b credential=b/1 status=200 …", real)  # fmt: skip
    ok = "FAIL model=x status=404 provider=- latency_ms=2.5 ttft_ms=- request_id=abc123abc123"
    assert not matches(ok.replace("request_id=abc123abc123", "request_id=-"), ok)
