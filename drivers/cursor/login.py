"""`keyrail login cursor`: Cursor's browser login (PKCE), for users without a user API key.

Owns: the command's flow: print the login URL, poll Cursor until the user finished in the
browser, write the token file (atomically, mode 0600, in a 0700 directory if it makes one) and
say which `token-file` line to put in config.yaml. Does not own: PKCE values and polling
(auth.py), the atomic write (proxy/tokens.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from drivers.cursor import auth
from proxy.errors import ProxyError
from proxy.tokens import write_atomic

DEFAULT_TOKEN_FILE = "~/.keyrail/cursor.json"


async def login(token_file: Path, auth_url: str, login_url: str, first_wait: float) -> Path:
    pending = auth.new_login()
    print("Open this URL in a browser and log in to Cursor:\n")
    print(f"  {pending.url(login_url)}\n", flush=True)
    print("Waiting for the login to finish...", flush=True)
    async with aiohttp.ClientSession() as session:
        answer = await auth.poll(session, auth_url, pending, first_wait=first_wait)
    document = auth.token_document(answer, time.time())
    token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    await asyncio.to_thread(write_atomic, token_file, document)
    return token_file


def main(token_file: str, auth_url: str, login_url: str, first_wait: float) -> int:
    path = Path(token_file).expanduser().absolute()
    try:
        written = asyncio.run(login(path, auth_url, login_url, first_wait))
    except (ProxyError, aiohttp.ClientError, OSError) as exc:
        message = exc.message if isinstance(exc, ProxyError) else str(exc) or type(exc).__name__
        print(f"login failed: {message}")
        return 1
    except KeyboardInterrupt:
        print("login cancelled")
        return 130
    print(f"Logged in. Token file written (mode 0600): {written}")
    print("In config.yaml:\n\ncursor:\n  - token-file: " + str(written))
    return 0
