"""`keyrail canary MODEL`: one small chat request through a running keyrail, measured.

Owns: sending the request (streamed by default, `--no-stream` for a plain one), timing it
(latency to the end, TTFT to the first content), reading which provider block answered from
keyrail's `X-Keyrail-Provider` header (and which upstream host, and which hosts failed before
it, from `X-Keyrail-Upstream-Host` / `X-Keyrail-Upstream-Host-Failed`), and the one-line
verdict with its exit code (0 when the answer arrived whole, 1 otherwise). Does not own:
anything on the server side.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

DEFAULT_URL = "http://127.0.0.1:8317"
PROMPT = "Reply with the single word: ok"


@dataclass(slots=True)
class Verdict:
    ok: bool
    status: int = 0
    provider: str = ""
    host: str = ""
    hosts_failed: str = ""
    request_id: str = ""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    reply: str = ""
    error: str = ""
    retry_after: str = ""

    def line(self, model: str) -> str:
        ttft = "-" if self.ttft_ms is None else f"{self.ttft_ms:.1f}"
        parts = [
            "ok" if self.ok else "FAIL",
            f"model={model}",
            f"status={self.status or '-'}",
            f"provider={self.provider or '-'}",
            f"latency_ms={self.latency_ms:.1f}",
            f"ttft_ms={ttft}",
            f"request_id={self.request_id or '-'}",
        ]
        if self.host:  # a driver with several upstream addresses: the one that answered
            parts.append(f"host={self.host}")
        if self.hosts_failed:
            parts.append(f"hosts_failed={self.hosts_failed!r}")
        if self.retry_after:
            parts.append(f"retry_after={self.retry_after}")
        if self.ok:
            parts.append(f"reply={self.reply.strip()[:80]!r}")
        else:
            parts.append(f"error={self.error[:300]!r}")
        return " ".join(parts)


def base_url(url: str | None) -> str:
    """`--url`, else `$KEYRAIL_URL`, else the default; with or without a trailing `/v1`."""
    url = (url or os.environ.get("KEYRAIL_URL") or DEFAULT_URL).rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def run(
    model: str, url: str, key: str | None, *, stream: bool = True, limit_seconds: float = 60.0
) -> Verdict:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    verdict = Verdict(ok=False)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_seconds)) as session,
            session.post(
                f"{url}/v1/chat/completions", data=orjson.dumps(body), headers=headers
            ) as response,
        ):
            verdict.status = response.status
            verdict.provider = response.headers.get("X-Keyrail-Provider", "")
            verdict.host = response.headers.get("X-Keyrail-Upstream-Host", "")
            verdict.hosts_failed = response.headers.get("X-Keyrail-Upstream-Host-Failed", "")
            verdict.request_id = response.headers.get("X-Request-Id", "")
            verdict.retry_after = response.headers.get("Retry-After", "")
            if response.status != 200:
                verdict.error = _error_message(await response.read())
            elif stream:
                await _read_stream(response, verdict, started)
            else:
                _read_body(await response.read(), verdict)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        verdict.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    verdict.latency_ms = (time.perf_counter() - started) * 1000
    return verdict


async def _read_stream(response: aiohttp.ClientResponse, verdict: Verdict, started: float) -> None:
    done = False
    pieces: list[str] = []
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True  # read on to the end, so that keyrail sees a client that stayed
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            verdict.error = f"not JSON in the stream: {data[:80]!r}"
            return
        if isinstance(event, dict) and "error" in event:
            verdict.error = _error_message(data)
            return
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if verdict.ttft_ms is None:
                    verdict.ttft_ms = (time.perf_counter() - started) * 1000
                pieces.append(content)
    verdict.reply = "".join(pieces)
    if not done:
        verdict.error = "the stream ended without data: [DONE]"
        return
    verdict.ok = True


def _read_body(data: bytes, verdict: Verdict) -> None:
    try:
        answer = orjson.loads(data)
        verdict.reply = answer["choices"][0]["message"].get("content") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        verdict.error = f"not a chat completion: {data[:120]!r}"
        return
    verdict.ok = True


def _error_message(data: bytes) -> str:
    try:
        err = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return data[:300].decode("utf-8", "replace")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def main(model: str, url: str | None, key: str | None, stream: bool, timeout: float) -> int:
    target = base_url(url)
    verdict = asyncio.run(
        run(
            model,
            target,
            key or os.environ.get("KEYRAIL_API_KEY"),
            stream=stream,
            limit_seconds=timeout,
        )
    )
    print(verdict.line(model))
    return 0 if verdict.ok else 1
