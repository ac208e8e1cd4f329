"""The OAuth token store: spellings, refresh timing, single flight, safe writes, outside edits."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest

from proxy.errors import CredentialRejected, UpstreamUnavailable
from proxy.tokens import Token, TokenStore, format_expiry, parse_expiry, read_document, write_atomic

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Refresher:
    """A token endpoint: counts calls, can be held at a gate or told to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail = False

    async def __call__(self, token: Token) -> Mapping[str, Any]:
        self.calls.append(token.refresh_token)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamUnavailable("token endpoint down", status=503)
        n = len(self.calls)
        return {"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "expires_in": 3600,
                "profile_arn": "arn:new"}  # fmt: skip


def token_file(path: Path, *, expires_in: float, snake: bool = False, **extra: Any) -> Path:
    names = ("access_token", "refresh_token", "expires_at") if snake else (
        "accessToken", "refreshToken", "expiresAt")  # fmt: skip
    doc = dict(zip(names, ("at-0", "rt-0", format_expiry(NOW + expires_in)), strict=True))
    path.write_bytes(orjson.dumps({**doc, **extra}))
    path.chmod(0o600)
    return path


def store() -> tuple[TokenStore, Clock]:
    clock = Clock()
    return TokenStore(lead=600, clock=clock), clock


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2027-01-15T08:00:00Z", 1800000000.0),
        ("2027-01-15T08:00:00.123Z", 1800000000.123),
        ("2027-01-15T08:00:00.123456789Z", 1800000000.123456),
        ("2027-01-15T10:00:00+02:00", 1800000000.0),
        (1800000000123, 1800000000.123),
        ("yesterday", None),
        (None, None),
    ],
)
def test_parse_expiry(text: Any, epoch: float | None) -> None:
    got = parse_expiry(text)
    assert got == pytest.approx(epoch) if epoch is not None else got is None


async def test_valid_token_used_as_is_in_either_spelling(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    for snake in (False, True):
        path = token_file(tmp_path / f"{snake}.json", expires_in=3600, snake=snake, region="r")
        token = await s.slot(label="c", provider="p", path=path).get(fn)
        assert (token.access_token, token.refresh_token) == ("at-0", "rt-0")
        assert token.expires_at == NOW + 3600 and token.get("region") == "r"
    assert fn.calls == []
    assert "at-0" not in repr(token) and "rt-0" not in repr(token)


@pytest.mark.parametrize("snake", [False, True])
async def test_refresh_within_lead_written_back_in_its_spelling(
    tmp_path: Path, snake: bool
) -> None:
    s, _ = store()
    fn = Refresher()
    path = token_file(tmp_path / "t.json", expires_in=300, snake=snake, provider="Github")
    os.umask(old := os.umask(0))  # even with a permissive umask, the file stays 0600
    try:
        token = await s.slot(label="c", provider="p", path=path).get(fn)
    finally:
        os.umask(old)
    assert token.access_token == "at-1" and fn.calls == ["rt-0"]
    doc = json.loads(path.read_text())
    keys = ("access_token", "refresh_token", "expires_at", "profile_arn") if snake else (
        "accessToken", "refreshToken", "expiresAt", "profileArn")  # fmt: skip
    assert [doc[k] for k in keys] == ["at-1", "rt-1", format_expiry(NOW + 3600), "arn:new"]
    assert doc["provider"] == "Github" and len(doc) == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [".t.json.lock", "t.json"]  # no temp file left


async def test_single_flight_for_many_waiters(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    fn.gate = asyncio.Event()
    path = token_file(tmp_path / "t.json", expires_in=60)
    slot = s.slot(label="c", provider="p", path=path)
    jobs = [asyncio.create_task(slot.get(fn)) for _ in range(50)]
    await asyncio.wait_for(fn.entered.wait(), 5)
    fn.gate.set()
    tokens = await asyncio.gather(*jobs)
    assert {t.access_token for t in tokens} == {"at-1"} and fn.calls == ["rt-0"]


async def test_renew_after_rejection_once_per_generation(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    slot = s.slot(label="c", provider="p", path=token_file(tmp_path / "t.json", expires_in=3600))
    assert await slot.renew(fn) is None  # nothing was rejected
    old = await slot.get(fn)
    slot.reject(old)
    slot.reject(old)
    first, second = await asyncio.gather(slot.renew(fn), slot.renew(fn))
    assert first is not None and second is not None
    assert first.access_token == second.access_token == "at-1"
    slot.reject(old)  # a late 403 for the old token: the new one is already here
    late = await slot.renew(fn)
    assert late is not None and late.access_token == "at-1" and fn.calls == ["rt-0"]


async def test_failed_refresh_keeps_a_valid_token_and_rejects_an_expired_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s, clock = store()
    fn = Refresher()
    fn.fail = True
    slot = s.slot(
        label="kiro/abc", provider="p", path=token_file(tmp_path / "t.json", expires_in=120)
    )
    token = await slot.get(fn)
    assert token.access_token == "at-0" and len(fn.calls) == 1
    assert "kiro/abc: token refresh failed" in caplog.text and "rt-0" not in caplog.text
    await slot.get(fn)  # within the retry pause: no new attempt
    assert len(fn.calls) == 1
    clock.now += 121  # expired now: the token endpoint being down is a transient failure
    with pytest.raises(UpstreamUnavailable) as down:
        await slot.get(fn)
    assert down.value.status == 503 and "rt-0" not in down.value.message
    fn.fail = False
    assert (await slot.get(fn)).access_token == "at-3"


async def test_refused_refresh_of_an_expired_token_rejects_the_credential(tmp_path: Path) -> None:
    s, _ = store()

    async def refused(token: Token) -> Mapping[str, Any]:
        raise CredentialRejected("invalid_grant", status=401)

    slot = s.slot(label="c", provider="p", path=token_file(tmp_path / "t.json", expires_in=-1))
    with pytest.raises(CredentialRejected, match="token expired and refresh failed"):
        await slot.get(refused)


async def test_file_rewritten_by_the_ide_is_picked_up(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    path = token_file(tmp_path / "t.json", expires_in=3600)
    slot = s.slot(label="c", provider="p", path=path)
    first = await slot.get(fn)
    ide = path.with_name("ide.tmp")  # the IDE replaces the file (new inode)
    ide.write_text(json.dumps({"accessToken": "at-ide", "refreshToken": "rt-ide",
                               "expiresAt": format_expiry(NOW + 7200)}))  # fmt: skip
    ide.replace(path)
    second = await slot.get(fn)
    assert second.access_token == "at-ide" and second.generation > first.generation
    path.write_text("{ half written")  # a non-atomic writer mid-way: keep what we have
    assert (await slot.get(fn)).access_token == "at-ide"
    assert fn.calls == []


async def test_refresh_token_rotated_by_the_ide_meanwhile(tmp_path: Path) -> None:
    s, _ = store()
    path = token_file(tmp_path / "t.json", expires_in=60)
    seen: list[str] = []

    async def endpoint(token: Token) -> Mapping[str, Any]:
        seen.append(token.refresh_token)
        if token.refresh_token == "rt-0":
            # the IDE refreshed first: our refresh token is spent, the file holds a new one
            doc = {
                "accessToken": "at-ide",
                "refreshToken": "rt-ide",
                "expiresAt": format_expiry(NOW + 100),
            }
            write_atomic(path, doc)
            raise CredentialRejected("invalid_grant", status=401)
        return {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600}

    token = await s.slot(label="c", provider="p", path=path).get(endpoint)
    assert token.access_token == "at-new" and seen == ["rt-0", "rt-ide"]


async def test_refresh_survives_its_caller_leaving(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    fn.gate = asyncio.Event()
    path = token_file(tmp_path / "t.json", expires_in=60)
    slot = s.slot(label="c", provider="p", path=path)
    caller = asyncio.create_task(slot.get(fn))
    await asyncio.wait_for(fn.entered.wait(), 5)
    caller.cancel()
    fn.gate.set()
    assert (await slot.get(fn)).access_token == "at-1"
    assert json.loads(path.read_text())["accessToken"] == "at-1" and fn.calls == ["rt-0"]


async def test_inline_tokens_and_missing_files(tmp_path: Path) -> None:
    s, _ = store()
    fn = Refresher()
    inline = s.slot(label="i", provider="p", inline={"access_token": "a", "refresh_token": "r"})
    assert (await inline.get(fn)).access_token == "at-1"  # no expiry known: refreshed
    assert (
        s.slot(label="i", provider="p", inline={"access_token": "a", "refresh_token": "r"})
        is inline
    )
    bare = s.slot(label="j", provider="p", inline={"access_token": "only"})
    assert (await bare.get(fn)).access_token == "only"
    with pytest.raises(CredentialRejected, match="unreadable"):
        await s.slot(label="m", provider="p", path=tmp_path / "none.json").get(fn)


def test_open_permissions_repaired_and_orphans_removed(tmp_path: Path) -> None:
    path = token_file(tmp_path / "t.json", expires_in=3600)
    path.chmod(0o644)
    old = tmp_path / ".t.json.abc.tmp"
    old.write_text("{")
    os.utime(old, (time.time() - 3600,) * 2)
    fresh = tmp_path / ".t.json.def.tmp"  # may be another writer's, mid-write: left alone
    fresh.write_text("{")
    live = tmp_path / f".t.json.{os.getppid()}-ghi.tmp"  # a live writer's: left alone
    live.write_text("{")
    # An interrupted write of a process that is gone: removed on the next start, however
    # recent (it used to wait for ORPHAN_AGE, so a quick restart left it there).
    gone = tmp_path / f".t.json.{_dead_pid()}-jkl.tmp"
    gone.write_text("{")
    s, _ = store()
    asyncio.run(s.slot(label="c", provider="p", path=path).get(Refresher()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".t.json.def.tmp", live.name, "t.json"]
    )


def test_write_atomic_names_its_temp_file_after_the_writer(tmp_path: Path) -> None:
    seen: list[str] = []
    real = os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append(os.path.basename(src))
        real(src, dst)

    with mock.patch.object(os, "replace", spy):
        write_atomic(tmp_path / "t.json", {"a": 1})
    assert seen[0].startswith(f".t.json.{os.getpid()}-")


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _writer(path: Path, report: int, naive: bool) -> None:
    """Child process: rewrite the token file forever, reporting each finished write."""
    n = 0
    pad = "x" * 900  # a token file of about 1 KiB
    while True:
        n += 1
        doc = {"accessToken": f"at-{n}", "refreshToken": f"rt-{n}", "pad": pad}
        if naive:
            with open(path, "wb") as out:
                out.write(orjson.dumps(doc))
        else:
            write_atomic(path, doc)
        os.write(report, n.to_bytes(4, "big"))


def _kill_loop(path: Path, kills: int, naive: bool) -> tuple[int, int]:
    """SIGKILL a writer at random moments; (unreadable files seen, kills landing mid-write)."""
    rng = random.Random(42)
    write_atomic(path, {"accessToken": "at-0", "refreshToken": "rt-0"})
    unreadable = 0
    for _ in range(kills):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                os.close(r)
                _writer(path, w, naive)
            finally:
                os._exit(0)
        os.close(w)
        done = 0
        for _ in range(rng.randint(1, 3)):
            done = int.from_bytes(os.read(r, 4), "big")
        time.sleep(rng.random() / 2000)  # jitter: where in its next write the kill lands
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as rest:  # every write the child finished before it died
            reports = rest.read()
        if reports:
            done = int.from_bytes(reports[-4:], "big")
        try:
            doc = read_document(path)
        except (OSError, ValueError):
            unreadable += 1
            continue
        if not naive:
            # the last finished write, or the one in flight: never anything older
            assert doc["refreshToken"] in (f"rt-{done}", f"rt-{done + 1}")
    return unreadable, kills


def test_kill_9_during_token_writes_never_leaves_an_unreadable_file(tmp_path: Path) -> None:
    unreadable, kills = _kill_loop(tmp_path / "kiro-auth-token.json", 250, naive=False)
    assert kills == 250 and unreadable == 0
    assert stat.S_IMODE((tmp_path / "kiro-auth-token.json").stat().st_mode) == 0o600


def test_kill_9_harness_catches_a_naive_writer(tmp_path: Path) -> None:
    """The same loop against truncate-and-write: proof that the loop above can fail."""
    unreadable, _ = _kill_loop(tmp_path / "naive.json", 250, naive=True)
    assert unreadable > 0


async def test_two_processes_sharing_a_file_refresh_once(tmp_path: Path) -> None:
    """Two stores stand for two keyrail processes: the file lock serialises their refreshes."""
    path = token_file(tmp_path / "t.json", expires_in=60)
    (first, _), (second, _) = store(), store()
    slow, fast = Refresher(), Refresher()
    slow.gate = asyncio.Event()
    one = asyncio.create_task(first.slot(label="c", provider="p", path=path).get(slow))
    await asyncio.wait_for(slow.entered.wait(), 5)  # the first holds the lock, mid-refresh
    two = asyncio.create_task(second.slot(label="c", provider="p", path=path).get(fast))
    slow.gate.set()
    a, b = await asyncio.gather(one, two)
    # the second waited for the lock, then adopted the token the first wrote
    assert fast.calls == [] and a.access_token == b.access_token == "at-1"
    assert sorted(os.listdir(tmp_path)) == [".t.json.lock", "t.json"]
