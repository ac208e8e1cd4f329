"""openai-compatibility: any upstream that already speaks OpenAI's HTTP API.

Byte passthrough: the client's body goes upstream with only `model` rewritten (plus
`stream_options.include_usage` on streams, so usage can be counted), and the upstream's bytes
come back untouched. One credential per `api-key-entries` item (a blank key sends no
`Authorization`; `disable-cooling: true` on an item exempts that key from cooldowns).
Models come from the block's `models`, else from `GET {base-url}/models`.

Dialects: chat clients always pass through. A Responses client passes through to
`{base-url}/responses` when the block's `dialects` lists `responses` (the default: `[chat,
responses]`); with `dialects: [chat]` (an upstream without a Responses API: vLLM, most
gateways) keyrail translates it, like every Anthropic Messages client, through the chat API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from yarl import URL

from proxy.config import ProviderBlock
from proxy.driver import (
    BODY_LIMIT,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    Call,
    Credential,
    Driver,
    Reply,
    ResponseStream,
    read_error_body,
)
from proxy.errors import StreamInterrupted, UpstreamUnavailable, classify_upstream
from proxy.retry_hints import retry_after_seconds
from proxy.scheduler import DISABLE_COOLING

_NATIVE = frozenset({"chat", "responses"})


class OpenAICompatibleDriver(Driver):
    endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES})
    options = {"api-key-entries": list, "models-endpoint": str, "dialects": list}
    dialects = frozenset({"chat", "responses"})
    required = frozenset({"base-url"})

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        entries: Sequence[Mapping[str, Any]] = block.options.get("api-key-entries") or ()
        creds = []
        for i, entry in enumerate(entries):
            key = str(entry.get("api-key") or "").strip() if isinstance(entry, Mapping) else ""
            proxy = entry.get("proxy-url") if isinstance(entry, Mapping) else None
            cooling_off = isinstance(entry, Mapping) and entry.get(DISABLE_COOLING) is True
            creds.append(
                Credential(
                    id=_credential_id(block.name, key, i),
                    provider=block.name,
                    secret=key,
                    proxy_url=_proxy(proxy, block.proxy_url),
                    extra={DISABLE_COOLING: True} if cooling_off else {},
                )
            )
        return creds or [Credential(id=f"{block.name}/0", provider=block.name)]

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        listed = block.options.get("dialects")
        if listed:  # which client dialects this upstream serves itself (chat always)
            self.dialects = frozenset({"chat", *(str(d) for d in listed)} & _NATIVE)
        # Built once, not per request: the URL of each endpoint, the headers of each credential.
        self._urls = {endpoint: URL(f"{self.base_url}/{endpoint}") for endpoint in self.endpoints}
        self._cached_headers: dict[tuple[str, str], dict[str, str]] = {}
        # Answers are read without aiohttp's per-chunk socket timer (`sock_read`), which is
        # re-armed on every chunk: the core's first-byte timeout bounds a stream's wait for its
        # first event and a non-streamed answer as a whole (it arrives when it is complete, so
        # the upstream is silent until then), and the relay's idle watchdog a stream after it.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=session.timeout.sock_connect, sock_read=None
        )

    def _headers(self, call_headers: Mapping[str, str], credential: Credential) -> dict[str, str]:
        if call_headers is self.block.headers:  # the usual case: one dict per credential
            key = (credential.id, credential.secret)
            headers = self._cached_headers.get(key)
            if headers is None:
                if len(self._cached_headers) > 4096:  # credentials come and go on refresh
                    self._cached_headers.clear()
                headers = self._cached_headers[key] = self._build_headers(call_headers, credential)
            return headers
        return self._build_headers(call_headers, credential)

    @staticmethod
    def _build_headers(call_headers: Mapping[str, str], credential: Credential) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **call_headers}
        if credential.secret:
            headers["Authorization"] = f"Bearer {credential.secret}"
        return headers

    async def send(self, call: Call, credential: Credential) -> Reply:
        body = call.body
        if call.stream and call.endpoint == CHAT:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        url = self._urls.get(call.endpoint) or URL(f"{self.base_url}/{call.endpoint}")
        data, headers = orjson.dumps(body), self._headers(call.headers, credential)
        response = await self.post(
            url, data=data, headers=headers, credential=credential, client_timeout=self._timeout
        )
        if response.status >= 300:
            data = await read_error_body(response)
            headers = dict(response.headers)
            raise classify_upstream(
                response.status,
                headers,
                data,
                provider=self.block.name,
                retry_after=retry_after_seconds(headers, data),
            )
        stream = ResponseStream(response, self.block.name)
        return _Reply(response.status, response.headers, stream, response, self.block.name)

    async def list_models(self, credential: Credential) -> Sequence[str]:
        endpoint = str(self.block.options.get("models-endpoint") or "models").lstrip("/")
        async with self.session.get(
            f"{self.base_url}/{endpoint}",
            headers=self._headers(self.block.headers, credential),
            proxy=credential.proxy_url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            if response.status != 200:
                raise UpstreamUnavailable(
                    f"GET /{endpoint} answered {response.status}",
                    status=502,
                    provider=self.block.name,
                )
            data = orjson.loads(await response.read())
        items = data.get("data", []) if isinstance(data, dict) else data
        return [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]


class _Reply(Reply):
    """A `Reply` whose whole-body `read` is aiohttp's own, without a chunk iterator."""

    __slots__ = ("_provider", "_response")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: ResponseStream,
        response: aiohttp.ClientResponse,
        provider: str,
    ) -> None:
        super().__init__(status, headers, body)
        self._response = response
        self._provider = provider

    async def read(self, limit: int = BODY_LIMIT) -> bytes:
        length = self._response.content_length
        if length is None or length > limit or "Content-Encoding" in self._response.headers:
            # Chunked, too big, or compressed (its Content-Length says nothing of what it
            # inflates to): counted chunk by chunk as it is inflated.
            return await super().read(limit)
        try:
            return await self._response.read()  # releases the connection at the end
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._response.close()
            raise StreamInterrupted(
                f"upstream {self._provider} body broke: {type(exc).__name__}",
                status=502,
                provider=self._provider,
            ) from exc


def _credential_id(provider: str, key: str, index: int) -> str:
    """Stable across reloads and reorderings, and never the key itself."""
    if not key:
        return f"{provider}/{index}"
    return f"{provider}/{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _proxy(entry_proxy: Any, block_proxy: str | None) -> str | None:
    value = str(entry_proxy).strip() if entry_proxy else (block_proxy or "")
    return None if value in ("", "direct", "none") else value
