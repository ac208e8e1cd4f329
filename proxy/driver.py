"""The driver contract: what a provider driver is given, what it must return.

Owns: `Driver` (one class, one required coroutine `send`), and the values that cross the seam:
`Credential` (passed in, never stored by a driver), `Call` (one upstream attempt), `Reply`
(status, headers and an async byte stream whose closing releases the upstream connection).
Does not own: choosing credentials (scheduler.py), routing (catalog.py), relaying bytes to the
client (streaming.py), or loading drivers (registry.py).

A driver speaks OpenAI on its output side: a `Reply` body is OpenAI JSON (or OpenAI SSE for
`call.stream`), whatever the upstream speaks. Failures are exceptions from `proxy.errors`:
`send` raises `RateLimited`, `CredentialRejected`, `UpstreamUnavailable` or `UpstreamRejected`
for an answer that is an error, and the body iterator raises `StreamInterrupted` when the
stream breaks later. That is all the core needs to rotate, cool down, reject or disable.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from proxy.errors import StreamInterrupted, UpstreamUnavailable

if TYPE_CHECKING:
    from proxy.config import ProviderBlock

#: Bumped on a breaking change to this module. Drivers declare the major they were written for.
API_VERSION = "1"

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


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at the upstream, as the core hands it to a driver.

    `body` is the client's parsed JSON with `model` already rewritten to the upstream name
    (`model` repeats it); every other field is the client's, untouched. `headers` are the
    block's configured `headers`. `endpoint` is one of the module constants (CHAT, ...).
    """

    endpoint: str
    model: str
    body: dict[str, Any]
    stream: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""


@runtime_checkable
class ByteStream(Protocol):
    """An async iterator of bytes; `aclose()` releases the upstream connection (idempotent)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Reply:
    """A successful upstream answer: status, headers, and the body as a byte stream."""

    status: int
    headers: Mapping[str, str]
    body: ByteStream

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body, then the stream closed. For non-streamed answers."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self.body:
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"upstream body larger than {limit} bytes")
                chunks.append(chunk)
        finally:
            await self.body.aclose()
        return b"".join(chunks)


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
      api_version   the major of `proxy.driver.API_VERSION` it was written for
      endpoints     which endpoints it serves; others get a clear 400
      options       its own config keys beyond the common ones, with their types
      required      which of `options` (or `base-url`) must be present
      default_base_url   the upstream address when the block gives no `base-url`
    """

    api_version: ClassVar[str] = API_VERSION
    endpoints: ClassVar[frozenset[str]] = frozenset({CHAT})
    options: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    required: ClassVar[frozenset[str]] = frozenset()
    default_base_url: ClassVar[str] = ""

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        self.block = block
        self.session = session

    @property
    def base_url(self) -> str:
        return (self.block.base_url or self.default_base_url).rstrip("/")

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
        """Offline findings about a block that `keyrail check` prints as warnings, each
        "FILE:LINE:COL: message" (`block.at(key)` says where a key is written), e.g. a token
        file that cannot be read. Never calls an upstream. Default: none."""
        return []

    async def list_models(self, credential: Credential) -> Sequence[str]:
        """Upstream model names, when the block lists none. Default: none."""
        return []

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
