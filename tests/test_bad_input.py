"""Bad input gets a clear 4xx with an OpenAI error body, and the server keeps serving."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

CONFIG = """
api-keys: [client-key-1]
openai-compatibility:
  - name: fakeco
    base-url: {url}
    api-key-entries: [{{api-key: upstream-secret-1}}]
    models: [{{name: gpt-4o-mini}}]
"""
AUTH = {"Authorization": "Bearer client-key-1"}


@pytest.fixture
async def kr(start_upstream, start_keyrail):
    _fake, url = await start_upstream()
    return await start_keyrail(CONFIG.format(url=url))


async def _post(kr, data: bytes, headers=None, path="/v1/chat/completions"):
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            kr.url + path,
            data=data,
            headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
        ) as r,
    ):
        return r.status, await r.read()


def _error(body: bytes) -> dict:
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    return err


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "gpt-4o-mini", "x": "\xff\xfe"}', "UTF-8"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"just a string"', "JSON object"),
        (b"", "empty"),
        (b'{"messages": []}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "   ", "messages": []}', "model"),
        (b'{"model": "gpt-4o-mini", "stream": "yes"}', "stream"),
    ],
)
async def test_bad_bodies_are_400(kr, data, fragment):
    status, body = await _post(kr, data)
    assert status == 400
    err = _error(body)
    assert err["type"] == "invalid_request_error"
    assert fragment.lower() in err["message"].lower()
    # and the server keeps serving
    status, _ = await _post(kr, b'{"model": "gpt-4o-mini", "messages": []}')
    assert status == 200


async def test_oversize_body_is_413(start_upstream, start_keyrail):
    _fake, url = await start_upstream()
    kr = await start_keyrail(CONFIG.format(url=url) + "limits: {request-body-mb: 0.01}\n")
    big = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 20000}]}
    )
    status, body = await _post(kr, big)
    assert status == 413
    assert _error(body)["code"] == "request_too_large"
    status, _ = await _post(kr, b'{"model": "gpt-4o-mini", "messages": []}')
    assert status == 200


async def test_unknown_endpoint_and_method(kr):
    async with aiohttp.ClientSession() as s:
        async with s.get(kr.url + "/v1/nothing-here", headers=AUTH) as r:
            assert r.status == 404
            assert "Unknown endpoint" in _error(await r.read())["message"]
        async with s.get(kr.url + "/v1/chat/completions", headers=AUTH) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"
            assert _error(await r.read())["code"] == "method_not_allowed"
        async with s.delete(kr.url + "/", headers=AUTH) as r:
            assert r.status == 404
            assert _error(await r.read())["code"] == "not_found"
        async with s.get(kr.url + "/v1/nothing-here") as r:  # no key: nothing to learn here
            assert r.status == 401


async def test_unknown_model_is_404(kr):
    status, body = await _post(kr, b'{"model": "gpt-9", "messages": []}')
    assert status == 404
    err = _error(body)
    assert err["code"] == "model_not_found" and err["param"] == "model"


async def test_missing_and_wrong_client_key(kr):
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"x-api-key": "nope"}):
            async with s.get(kr.url + "/v1/models", headers=headers) as r:
                assert r.status == 401
                assert _error(await r.read())["code"] == "invalid_api_key"
        for headers in ({"x-api-key": "client-key-1"}, {"x-goog-api-key": "client-key-1"}):
            async with s.get(kr.url + "/v1/models", headers=headers) as r:
                assert r.status == 200


async def _raw(kr, request: bytes) -> bytes:
    host, port = kr.server.host, kr.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


@pytest.mark.parametrize(
    "header",
    [b"X-Evil: a\rInjected: 1", b"X-Evil: a\nInjected: 1\r\nX-Other: \x00"],
)
async def test_cr_lf_in_headers_rejected(kr, header):
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-key-1\r\n"
        + header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    answer = await _raw(kr, request)
    assert answer.split(b" ", 2)[1] == b"400"
    # still serving
    status, _ = await _post(kr, body)
    assert status == 200


async def test_unreachable_upstream_is_502_naming_provider(start_keyrail):
    # a port nothing listens on: bind, note it, close
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    kr = await start_keyrail(CONFIG.format(url=f"http://127.0.0.1:{port}/v1"))
    status, body = await _post(kr, b'{"model": "gpt-4o-mini", "messages": []}')
    assert status == 502
    assert "fakeco" in _error(body)["message"]


SLOW_CONFIG = CONFIG + "timeouts:\n  request-read-seconds: 0.3\n"
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def _head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-key-1\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n"
    )


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP response off a raw connection: its status and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_body_that_stops_arriving_is_408_and_the_server_keeps_serving(
    start_upstream, start_keyrail
):
    """One byte a second, or none: the client gets a 408 at `request-read-seconds`, not a
    handler held for as long as it likes."""
    fake, url = await start_upstream()
    kr = await start_keyrail(SLOW_CONFIG.format(url=url))
    reader, writer = await asyncio.open_connection(kr.server.host, kr.server.port)
    try:
        writer.write(_head(len(BODY)) + BODY[:20])  # the rest never comes
        await writer.drain()
        status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 408
    error = _error(body)
    assert error["code"] == "request_timeout" and "request-read-seconds" in error["message"]
    assert not fake.seen  # nothing went upstream
    assert (await _post(kr, BODY))[0] == 200


async def test_a_body_sent_in_pieces_within_the_deadline_is_served(start_upstream, start_keyrail):
    fake, url = await start_upstream()
    kr = await start_keyrail(SLOW_CONFIG.replace("0.3", "30").format(url=url))
    reader, writer = await asyncio.open_connection(kr.server.host, kr.server.port)
    try:
        # With `Expect: 100-continue` the server routes the request and says "continue"
        # before any body byte exists: keyrail's handler is sure to wait for the body.
        head = _head(len(BODY)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
        writer.write(head)
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        for piece in (BODY[:20], BODY[20:]):
            writer.write(piece)
            await writer.drain()
        status, body = await _response(reader)
    finally:
        writer.close()
    assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
    assert len(fake.seen) == 1
