"""The Cursor IDE's own login as a credential: `token-file: .../state.vscdb`.

Owns: reading the access token the IDE keeps in its SQLite `state.vscdb` (table
`ItemTable(key, value)`, key `cursorAuth/accessToken`), opened read-only so keyrail never
writes to or locks the IDE's database, and `IdeTokens`: the token read afresh when the file
changed, a token Cursor refused remembered so it is not offered again until the IDE has
written a new one (the IDE refreshes its own login; keyrail does not).
Does not own: `cursorAuth/refreshToken` (the notes give that key only as LIKELY, and a refresh
keyrail did would fork the IDE's session), the other token sources (auth.py, proxy/tokens.py).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from proxy.errors import CredentialRejected

ACCESS_KEY = "cursorAuth/accessToken"


def is_ide_database(path: Path) -> bool:
    return path.suffix == ".vscdb"


def read_access_token(path: Path) -> str:
    """The IDE's access token, or '' when it holds none (signed out)."""
    uri = f"{path.as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=5) as db:
        row = db.execute("SELECT value FROM ItemTable WHERE key = ?", (ACCESS_KEY,)).fetchone()
    if row is None or row[0] is None:
        return ""
    value = row[0]
    token = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return token.strip().strip('"')  # the IDE stores some values JSON-quoted


class IdeTokens:
    """One IDE database's token: re-read when the file changed, refused tokens not reused."""

    def __init__(self, path: Path, provider: str) -> None:
        self.path = path
        self.provider = provider
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the last read
        self._token = ""
        self._refused: set[str] = set()

    async def get(self) -> str:
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size) != self._seen or not self._token:
                self._token = await asyncio.to_thread(read_access_token, self.path)
                self._seen = (st.st_mtime_ns, st.st_size)
        except (OSError, sqlite3.Error) as exc:
            raise CredentialRejected(
                f"{self.provider}: cannot read the Cursor IDE database ({type(exc).__name__})",
                status=401, provider=self.provider,
            ) from None  # fmt: skip
        if not self._token or self._token in self._refused:
            raise CredentialRejected(
                f"{self.provider}: the Cursor IDE holds no usable login; sign in to Cursor "
                "again, or use an 'api-key' (crsr_…)",
                status=401, provider=self.provider,
            )  # fmt: skip
        return self._token

    def reject(self, token: str) -> None:
        self._refused.add(token)


_SHARED: dict[Path, IdeTokens] = {}


def ide_tokens(path: Path, provider: str) -> IdeTokens:
    """One holder per database for the process (credentials are rebuilt on reload)."""
    held = _SHARED.get(path)
    if held is None:
        held = _SHARED[path] = IdeTokens(path, provider)
    return held
