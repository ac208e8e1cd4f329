"""A real headless Chromium for page tests, driven over the DevTools protocol.

Starts Debian's `chromium` with an empty profile and no background networking, every host name
resolving nowhere but 127.0.0.1, and talks CDP over a WebSocket (aiohttp, already a
dependency: no Playwright or Selenium download). `Page` records the URL of every request the
page makes, so a test can prove nothing left 127.0.0.1, waits on conditions inside the page
(bounded, no sleeps in the test), and takes PNG screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

CHROMIUM = os.environ.get("KEYRAIL_CHROMIUM") or shutil.which("chromium") or ""


class BrowserError(Exception):
    """Chromium did not start, or the page did not do what was waited for."""


class Page:
    """One tab: `evaluate`, `wait_for`, `screenshot`; `requests` lists every URL asked for."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = orjson.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Network.requestWillBeSent":
                self.requests.append(data["params"]["request"]["url"])
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console_errors.append(str(data["params"]["exceptionDetails"]))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the browser closed the connection"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        message = orjson.dumps({"id": call_id, "method": method, "params": params})
        await self._ws.send_str(message.decode())  # CDP takes text frames only
        async with asyncio.timeout(30):
            answer = await future
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, within: float = 10.0) -> Any:
        """Wait inside the page until the JS expression `condition` is truthy; return it.

        The page re-checks every 50 ms and gives up after `within` seconds with an error that
        names the condition."""
        script = (
            "new Promise((resolve, reject) => { const t0 = Date.now(); (function check() {"
            f" let v; try {{ v = ({condition}); }} catch (e) {{ v = undefined; }}"
            " if (v) resolve(v);"
            f" else if (Date.now() - t0 > {int(within * 1000)}) reject(new Error('timed out'));"
            " else setTimeout(check, 50); })(); })"
        )
        try:
            return await self.evaluate(script)
        except BrowserError:
            text = await self.evaluate("document.body ? document.body.innerText : ''")
            raise BrowserError(
                f"not true within {within:g} s: {condition}\npage text:\n{text}"
            ) from None

    async def screenshot(self, path: Path, width: int = 1280, height: int = 900) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        full = await self.evaluate("document.documentElement.scrollHeight")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=max(height, int(full)),
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, closed (and its process ended) on exit."""
    if not CHROMIUM:
        raise BrowserError("no chromium binary (apt-get install chromium)")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        # Any host name resolves nowhere: a page that tried to load from outside would fail,
        # and the test would see the attempt in `requests`.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        port = await _devtools_port(process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            target = next(t for t in targets if t.get("type") == "page")
            async with session.ws_connect(
                target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024
            ) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Network"):
                    await page.send(f"{domain}.enable")
                try:
                    yield page
                finally:
                    await page.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def _devtools_port(process: asyncio.subprocess.Process) -> int:
    """Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...` on stderr when ready."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            if not line:
                raise BrowserError("chromium exited before it was ready")
            text = line.decode(errors="replace")
            if "DevTools listening on ws://" in text:
                # Keep draining stderr so that Chromium never blocks on a full pipe.
                asyncio.get_running_loop().create_task(_drain(process.stderr))
                return int(text.split("ws://127.0.0.1:")[1].split("/")[0])


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
