"""openai-compatibility: any upstream that already speaks OpenAI's HTTP API.

Byte passthrough: the client's body goes upstream with only `model` rewritten (plus
`stream_options.include_usage` on streams, so usage can be counted), and the upstream's bytes
come back untouched. One credential per `api-key-entries` item (a blank key sends no
`Authorization`; `disable-cooling: true` on an item exempts that key from cooldowns).
Models come from the block's `models`, else from `GET {base-url}/models`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from proxy.config import ProviderBlock
from proxy.driver import (
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
from proxy.errors import UpstreamUnavailable, classify_upstream
from proxy.retry_hints import retry_after_seconds
from proxy.scheduler import DISABLE_COOLING


class OpenAICompatibleDriver(Driver):
    endpoints = frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES})
    options = {"api-key-entries": list, "models-endpoint": str}
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

    def _headers(self, call_headers: Mapping[str, str], credential: Credential) -> dict[str, str]:
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
        url = f"{self.base_url}/{call.endpoint}"
        response = await self.post(
            url, data=orjson.dumps(body), headers=self._headers(call.headers, credential),
            credential=credential,
        )  # fmt: skip
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
        return Reply(response.status, response.headers, ResponseStream(response, self.block.name))

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


def _credential_id(provider: str, key: str, index: int) -> str:
    """Stable across reloads and reorderings, and never the key itself."""
    if not key:
        return f"{provider}/{index}"
    return f"{provider}/{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _proxy(entry_proxy: Any, block_proxy: str | None) -> str | None:
    value = str(entry_proxy).strip() if entry_proxy else (block_proxy or "")
    return None if value in ("", "direct", "none") else value
