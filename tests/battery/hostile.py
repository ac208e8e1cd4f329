"""The hostile client: raw HTTP/1.1 over a socket (so that it can send what aiohttp's client
refuses to: bytes that are not UTF-8 in a header, a body that lies about its encoding), and a
deterministic generator of fuzzed requests."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

CLIENT_KEY = "client-key-battery-0123456789abcdef"
PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/chat/completions",
)


@dataclass
class Raw:
    """One request as bytes: what the fuzzer sends."""

    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    kind: str  # which fuzz class made it, for the failure message

    def wire(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in self.headers]
        lines.append(b"Content-Length: " + str(len(self.body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


async def send_raw(
    port: int,
    data: bytes,
    *,
    local_addr: tuple[str, int] | None = None,
    seconds: float = 10.0,
) -> tuple[int, bytes]:
    """Send `data` on a new connection; the status and body of the answer (0 if none)."""
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local_addr)
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            if chunked:
                body = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    body += await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                body = await reader.readexactly(length)
            return status, body
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, b""
        finally:
            writer.close()


_BASE = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "stream": False,
    "stream_options": {"include_usage": True},
    "max_tokens": 16,
    "temperature": 0.5,
    "input": "hi",
    "max_output_tokens": 16,
    "tool_choice": "auto",
}  # fmt: skip


def _random_value(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(12 if depth < 3 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 5])
    if choice == 3:
        return rng.choice([0.0, -1.5, 1e308, 3.14])
    if choice == 4:
        return rng.choice(["", "x", "auto", "none", "\u0000", "é" * 3, "🙂", "required"])
    if choice == 5:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
    if choice in (6, 7):
        return rng.choice([[], {}, [1], {"a": 1}])
    if choice in (8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["role", "content", "type", "text", "function", "name", "arguments", "id",
            "tool_calls", "image_url", "url", "parameters", "include_usage", "x"]  # fmt: skip
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, value: object, depth: int = 0) -> object:
    """`value` with one random place replaced by a random value (or a key dropped)."""
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.7):
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _mutate(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate(rng, value[i], depth + 1), *value[i + 1 :]]
    return _random_value(rng)


def _nested(depth: int) -> bytes:
    return b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b"}"


def fuzz(rng: random.Random, count: int, models: tuple[str, ...]) -> Iterator[Raw]:
    """`count` hostile requests, most with the right client key (so they reach the handlers)."""
    auth = (b"Authorization", b"Bearer " + CLIENT_KEY.encode())
    json_type = (b"Content-Type", b"application/json")
    for n in range(count):
        path = rng.choice(PATHS)
        body_obj = dict(_BASE, model=rng.choice(models))
        for _ in range(rng.randrange(1, 4)):
            body_obj = _mutate(rng, body_obj)  # type: ignore[assignment]
        if rng.random() < 0.3 and isinstance(body_obj, dict):
            body_obj["stream"] = True
        try:
            body = orjson.dumps(body_obj)
        except orjson.JSONEncodeError:
            body = b"{}"
        headers = [auth, json_type]
        kind = "body"
        roll = n % 20
        if roll == 0:
            kind = "key-bytes"
            headers = [
                (rng.choice([b"x-api-key", b"Authorization", b"x-goog-api-key"]),
                 bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 8)))),
                json_type,
            ]  # fmt: skip
        elif roll == 1:
            kind = "header-bytes"
            name = rng.choice(
                [b"Content-Type", b"User-Agent", b"X-Request-Id", b"anthropic-beta",
                 b"anthropic-version", b"OpenAI-Beta", b"X-Stainless-Lang"]
            )  # fmt: skip
            headers.append((name, bytes(rng.randrange(128, 256) for _ in range(5))))
        elif roll == 2:
            kind = "content-encoding"
            encoding = rng.choice([b"gzip", b"deflate", b"br", b"zstd", b"x-nope", b"gzip, gzip"])
            headers.append((b"Content-Encoding", encoding))
            if rng.random() < 0.3:
                body = gzip.compress(body)[: rng.randrange(5, 40)]  # cut short
        elif roll == 3:
            kind = "nesting"
            body = _nested(rng.choice([200, 255, 256, 300, 1000, 1023, 1024, 1025, 5000]))
        elif roll == 4:
            kind = "bytes"
            body = rng.choice([
                b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"model":"m","x":"\xff"}',
                b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
                b'{"model":"m","n":NaN}', b'{"model":"m","max_tokens":1e999}',
                b'{"model":"m","messages":5}', b'{"model":"m","tools":1,"messages":[]}',
                b'{"model":"m","stream":true,"stream_options":"yes","messages":[]}',
                bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
            ])  # fmt: skip
            if b'"m"' in body:
                body = body.replace(b'"m"', orjson.dumps(rng.choice(models)))
        yield Raw(path, headers, body, kind)
