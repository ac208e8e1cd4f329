"""The driver contract: what a provider driver is given, what it must return.

Owns: `Driver` (one class, one required coroutine `send`), and the values that cross the seam:
`Credential` (passed in, never stored by a driver), `Call` (one upstream attempt), `Reply`
(status, headers and an async byte stream whose closing releases the upstream connection).
Does not own: choosing credentials (scheduler.py), routing (catalog.py), relaying bytes to the
client (streaming.py), or loading drivers (registry.py).

A driver declares the client dialects its upstream speaks natively in `dialects` (`"chat"`,
`"responses"`, `"messages"`; see proxy/dialects). For a client in one of them the driver gets the
client's body (`call.body`, only `model` rewritten) and returns the upstream's bytes, which
pass through untouched. For any other client, keyrail translates through the neutral model
(proxy/dialects/neutral.py): a byte driver that speaks `"chat"` gets a chat body made from the
client's request and its chat answer is translated back; a translating driver (`dialects =
NEUTRAL`) reads the neutral request in `call.request` and returns a `Reply` whose `events` is an
async stream of neutral events (`Reply.of_events`), which keyrail encodes in whatever dialect
the client speaks, streamed or not. Failures are exceptions from `proxy.errors`:
`send` raises `RateLimited`, `CredentialRejected`, `UpstreamUnavailable` or `UpstreamRejected`
for an answer that is an error, and the body iterator raises `StreamInterrupted` when the
stream breaks later. That is all the core needs to rotate, cool down, reject or disable.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from proxy.errors import StreamInterrupted, UpstreamUnavailable

if TYPE_CHECKING:
    from proxy.config import ProviderBlock
    from proxy.dialects.assembler import EventStream
    from proxy.dialects.neutral import Request
    from proxy.quota import Quota

#: Bumped on a change to this module: the major when it breaks drivers, the minor when it adds
#: (1.1: `Driver.dialects`, `Call.request`, `Reply.events`). Drivers declare the version they
#: were written for; keyrail loads any driver of its own major.
API_VERSION = "1.1"

#: `Driver.dialects` of a translating driver: it speaks no client dialect natively, reads the
#: neutral `call.request` and answers neutral events.
NEUTRAL: frozenset[str] = frozenset()

#: Endpoints (paths below /v1) a driver can declare in `Driver.endpoints`.
CHAT = "chat/completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"


@dataclass(frozen=True, slots=True)
class Credential:
    """One way to authenticate to one provider block.

    `id` is stable and never secret: it names the credential in logs, metrics and the
    scheduler's state. `secret` (an API key, or an OAuth access token) is hidden from `repr`.
    `extra` carries driver-specific, non-secret facts (a token file's path, a region).
    """

    id: str
    provider: str
    secret: str = field(default="", repr=False)
    proxy_url: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def keyed_credentials(
    block: ProviderBlock, keys: Sequence[str], token_file: str | None
) -> list[Credential]:
    """For blocks that take `api-key` (one or a list) and/or `token-file`: one credential per
    non-blank key, its id a digest of the key, and one for the token file, its id a digest of
    the file's path (`extra["token_file"]` holds the path; the driver reads the file). Ids are
    stable across reloads and never the secret."""
    proxy = None if block.proxy_url in ("direct", "none") else block.proxy_url
    creds = []
    for key in (str(k).strip() for k in keys):
        if key:
            digest = hashlib.sha256(key.encode()).hexdigest()[:8]
            creds.append(Credential(f"{block.name}/{digest}", block.name, key, proxy))
    if token_file:
        path = str(Path(token_file).expanduser().absolute())
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        extra = {"token_file": path}
        creds.append(Credential(f"{block.name}/{digest}", block.name, "", proxy, extra))
    return creds


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at the upstream, as the core hands it to a driver.

    `body` is the client's parsed JSON with `model` already rewritten to the upstream name
    (`model` repeats it); every other field is the client's, untouched. `headers` are the
    block's configured `headers`. `endpoint` is one of the module constants (CHAT, ...).

    `dialect` is the client's dialect. When it is not one the driver speaks, `request` holds
    the client's request as a neutral `Request` (`model` rewritten too), and `body` is either
    the chat body made from it (a driver speaking `"chat"`) or the client's own body.
    """

    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    dialect: str = "chat"
    request: Request | None = None


@runtime_checkable
class ByteStream(Protocol):
    """An async iterator of bytes; `aclose()` releases the upstream connection (idempotent)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


#: The largest upstream answer read whole, after decompression (`limits.upstream-body-mb`).
BODY_LIMIT = 64 * 1024 * 1024
#: Bytes read from one answer before the reader lets other tasks run: inflating a compressed
#: answer needs no network wait, so without it a bomb would hold the event loop.
_SHARE_EVERY = 1024 * 1024


def body_too_large(limit: int, provider: str = "") -> UpstreamUnavailable:
    """An upstream answer grew past `limits.upstream-body-mb` while it was read (inflated)."""
    what = f"answer larger than {limit / (1024 * 1024):g} MiB after decompression"
    what += " (limits.upstream-body-mb)"
    return UpstreamUnavailable(
        f"upstream {provider}: {what}" if provider else what,
        status=502,
        provider=provider,
    )


async def inflated_within(
    chunks: AsyncIterator[bytes] | ByteStream, limit: int, provider: str = ""
) -> AsyncIterator[bytes]:
    """`chunks`, raising `body_too_large` once more than `limit` bytes came, and letting other
    tasks run after every MiB (a compressed answer inflates without waiting for the network)."""
    size = shared = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit, provider)
        if size - shared >= _SHARE_EVERY:
            shared = size
            await asyncio.sleep(0)
        yield chunk


@dataclass(slots=True)
class Reply:
    """A successful upstream answer: status, headers, and the body as a byte stream; or, from
    a translating driver, `events`: neutral events keyrail encodes in the client's dialect
    (nothing reaches the client before the first one, so an error before it fails over).

    A driver that can reach its upstream at several addresses names the one that answered in
    `host`, and those it tried first that did not (each "host (why)") in `hosts_failed`: the
    access line and the `X-Keyrail-Upstream-Host` headers show them.
    """

    status: int
    headers: Mapping[str, str]
    body: ByteStream = field(default_factory=lambda: BytesStream())
    events: EventStream | None = None
    host: str = ""
    hosts_failed: tuple[str, ...] = ()

    @classmethod
    def of_events(
        cls, events: EventStream, *, host: str = "", hosts_failed: tuple[str, ...] = ()
    ) -> Reply:
        """A translating driver's answer: an `EventStream` (see `proxy.dialects.EventStream`,
        or wrap an async generator and a close callback in `proxy.dialects.IteratorEvents`)."""
        return cls(200, {}, events=events, host=host, hosts_failed=hosts_failed)

    async def read(self, limit: int = BODY_LIMIT) -> bytes:
        """The whole body, then the stream closed. For non-streamed answers.

        Counted as it is read, after decompression: aiohttp inflates a compressed body in
        small pieces as they are read, so an answer past `limit` stops being read (and
        inflated) there, with an `UpstreamUnavailable` (`body_too_large`).
        """
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in inflated_within(self.body, limit):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            await self.body.aclose()
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]


class ResponseStream:
    """`ByteStream` over an aiohttp `ClientResponse`: yields chunks as they arrive.

    Read errors after the first byte surface as `StreamInterrupted`. Closing releases the
    connection back to the pool when the body was read to its end, and drops it otherwise.
    """

    __slots__ = ("_provider", "_response")

    def __init__(self, response: aiohttp.ClientResponse, provider: str = "") -> None:
        self._response = response
        self._provider = provider

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StreamInterrupted(
                f"upstream {self._provider} stream broke: {type(exc).__name__}",
                status=502,
                provider=self._provider,
            ) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class BytesStream:
    """`ByteStream` over chunks already in memory (a driver that builds its own answer)."""

    __slots__ = ("_chunks",)

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        return None


class Driver(abc.ABC):
    """A provider driver: serves one provider block of `config.yaml`.

    Subclass it, implement `send`, and register the class under the entry-point group
    `keyrail.drivers`; the entry-point name is the config key of its blocks. The core creates
    one instance per block, with the block's settings and its pooled `aiohttp.ClientSession`
    (proxy, timeouts and TLS already set up).

    Class attributes a driver may set:
      api_version   the `proxy.driver.API_VERSION` it was written for (its major must match)
      endpoints     which endpoints it serves; others get a clear 400
      dialects      the client dialects its upstream speaks natively (passed through as
                    bytes); NEUTRAL for a translating driver (neutral request in, events out)
      options       its own config keys beyond the common ones, with their types
      required      which of `options` (or `base-url`) must be present
      default_base_url   the upstream address when the block gives no `base-url`
      quota_interval     seconds between two `quota` reads of one credential (default 300)
    """

    api_version: ClassVar[str] = API_VERSION
    endpoints: ClassVar[frozenset[str]] = frozenset({CHAT})
    dialects: frozenset[str] = frozenset({"chat"})
    options: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    required: ClassVar[frozenset[str]] = frozenset()
    default_base_url: ClassVar[str] = ""
    quota_interval: ClassVar[float] = 300.0

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        self.block = block
        self.session = session

    @property
    def base_url(self) -> str:
        return (self.block.base_url or self.default_base_url).rstrip("/")

    @classmethod
    def check_options(cls, block: ProviderBlock) -> Sequence[str]:
        """Errors in a block's own options beyond their types (one line each, no secrets):
        `keyrail check`, start-up and reload refuse a config with any (unlike `check`'s
        warnings). Default: none."""
        return ()

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        """The credentials a block declares. Default: one, keyless, named after the block."""
        return [Credential(id=f"{block.name}/0", provider=block.name)]

    @abc.abstractmethod
    async def send(self, call: Call, credential: Credential) -> Reply:
        """Make one upstream attempt. Return a 2xx `Reply`, or raise an `UpstreamError`."""

    async def post(
        self,
        url: str | URL,
        *,
        data: bytes,
        headers: Mapping[str, str],
        credential: Credential,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """POST through the block's pooled session and the credential's proxy, redirects not
        followed; `client_timeout` replaces the session's. A connection failure or timeout becomes
        `UpstreamUnavailable` (502)."""
        try:
            return await self.session.post(
                url,
                data=data,
                headers=headers,
                proxy=credential.proxy_url,
                allow_redirects=False,
                timeout=client_timeout if client_timeout is not None else self.session.timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {self.block.name} unreachable: {describe_failure(exc)}",
                status=502,
                provider=self.block.name,
            ) from exc

    @classmethod
    def check(cls, block: ProviderBlock) -> Sequence[str]:
        """Warnings about a block that loads but will not work as its operator expects (a
        default upstream that was shut down, a token file that cannot be read). Never calls an
        upstream. `keyrail check` prints them and `serve` logs them at start. Default: none."""
        return ()

    async def list_models(self, credential: Credential) -> Sequence[str]:
        """Upstream model names, when the block lists none. Default: none."""
        return []

    def model_source(self, name: str) -> str:
        """Where a name `list_models` gave came from, for `keyrail models` (e.g. "discovered"
        or "built-in"). Default: "driver"."""
        return "driver"

    async def quota(self, credential: Credential) -> Quota | None:
        """The credential's usage against its allowance, when the upstream tells (optional).

        keyrail calls it beside the requests, at most every `quota_interval` seconds per
        credential, shows the answer in `/v1/metrics/providers` and `/metrics`, and cools a
        credential whose quota is spent until `resets_at`. Raise (any exception, one clear
        message) when the read fails. Default: None, nothing to report.
        """
        return None

    async def refresh(self, credential: Credential) -> Credential | None:
        """Renew an expired or rejected credential (OAuth drivers). None: cannot refresh."""
        return None

    async def aclose(self) -> None:
        """Release what the driver opened itself (the session belongs to the core)."""
        return None


#: How much of an upstream's error body is read (it is relayed to the client when JSON).
ERROR_BODY_LIMIT = 256 * 1024


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer's body, then the connection dropped (not reused)."""
    try:
        return await response.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        return b""
    finally:
        response.close()


def describe_failure(exc: BaseException) -> str:
    """A short, secret-free description of a transport failure, for messages."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return type(exc).__name__
