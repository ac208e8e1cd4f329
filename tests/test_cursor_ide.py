"""The Cursor IDE's login as a credential (`token-file: .../state.vscdb`): the access token
read read-only from the IDE's SQLite `ItemTable`, served against the fake Cursor over h2; a
refused token not offered again (the credential is then disabled with an operator message);
a token the IDE renewed read again."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from drivers.cursor import ide
from proxy.errors import CredentialRejected
from tests.fake_cursor import Env, running

Start = Callable[..., Awaitable[Any]]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running() as started:
        yield started


def write_ide_db(path: Path, access: str, *, quoted: bool = False) -> None:
    """What the IDE keeps: `ItemTable(key, value)` with `cursorAuth/*` rows."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)"
        )
        value = f'"{access}"' if quoted else access
        db.execute("INSERT INTO ItemTable VALUES (?, ?)", (ide.ACCESS_KEY, value))
        db.execute("INSERT INTO ItemTable VALUES ('cursorAuth/cachedEmail', 'me@example.com')")
    db.close()


def test_reads_the_access_token_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "state.vscdb"
    write_ide_db(path, "tok-1", quoted=True)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ide.read_access_token(path) == "tok-1"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # opened read-only
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM ItemTable WHERE key = ?", (ide.ACCESS_KEY,))
    db.close()
    assert ide.read_access_token(path) == ""  # signed out


async def test_ide_login_serves_and_a_refused_token_waits_for_the_ides_next(
    env: Env, start_keyrail: Start, tmp_path: Path
) -> None:
    path = tmp_path / "state.vscdb"
    first, _ = env.fake.issue_login()
    write_ide_db(path, first)
    blocks = (
        f"  - token-file: {path}\n    base-url: {env.http}\n    agent-url: {env.h2}\n"
        "    transport: h2\n    heartbeat-seconds: 0.1\n"
    )
    kr = await start_keyrail(f"api-keys: [client-key]\ncursor:\n{blocks}")
    client = openai.AsyncOpenAI(base_url=kr.v1, api_key="client-key", max_retries=0)
    answer = await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert answer.choices[0].message.content == "Hello from Cursor."
    assert env.fake.runs[-1].bearer == first

    runs = len(env.fake.runs)
    env.fake.reject_once.add(first)  # Cursor now refuses it; the IDE holds no newer one
    with pytest.raises(openai.APIStatusError, match="operator must fix"):
        await client.chat.completions.create(model="gpt-5.5", messages=HI)
    assert len(env.fake.runs) == runs + 1  # the refused token was not offered again
    await client.close()


async def test_a_token_the_ide_renewed_is_read_on_the_next_request(tmp_path: Path) -> None:
    path = tmp_path / "state.vscdb"
    write_ide_db(path, "tok-1")
    held = ide.IdeTokens(path, "cursor")
    assert await held.get() == "tok-1"
    held.reject("tok-1")
    with pytest.raises(CredentialRejected, match="sign in to Cursor again"):
        await held.get()
    write_ide_db(path, "tok-2-renewed")  # the IDE refreshed its login: the file changed
    assert await held.get() == "tok-2-renewed"
    path.unlink()
    with pytest.raises(CredentialRejected, match="cannot read"):
        await held.get()
