"""`minimax`: MiniMax text models through their OpenAI-compatible endpoint.

Owns: the block's options and credentials (`api-key`, one or a list, or `token-file`: an
OAuth portal token refreshed through the process's token store, or a file holding an
`api_key` / the bare key), the upstream address (`base-url`, else by `region`: global
`api.minimax.io`, China `api.minimaxi.com`; a configured `…/anthropic` endpoint is served
through its `…/v1` sibling), the OAuth refresh call, turning MiniMax's errors (in a 200 or
not, streamed or not) into decisions (codes.py), reading the Coding Plan quota for keyrail's
quota watcher (`quota`) and skipping a credential whose window a 2056 said is spent
(quota.py), and the reasoning it remembers per tool call so a client that drops it still
replays it (request.py).
Does not own: the HTTP call and its headers (the openai-compatibility driver it extends),
the body rewrite (request.py), the answer's translation (chunks.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from drivers.minimax import chunks, codes, quota, request
from drivers.openai import OpenAICompatibleDriver
from drivers.rewrite import RewrittenStream
from proxy import tokens
from proxy.config import ProviderBlock
from proxy.driver import CHAT, BytesStream, Call, Credential, Reply, keyed_credentials
from proxy.errors import (
    CredentialRejected,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
    classify_upstream,
)
from proxy.quota import Quota
from proxy.redact import REDACTOR
from proxy.streaming import SSE_HEADERS

GLOBAL, CHINA = "https://api.minimax.io", "https://api.minimaxi.com"
REGIONS = {"global": GLOBAL, "cn": CHINA, "china": CHINA}
#: The MiniMax portal's OAuth client (protocols/minimax.md §2.2; same for both regions).
CLIENT_ID = "78257093-7e40-4613-99e0-527b14b39113"
QUOTA_PATH = "/v1/api/openplatform/coding_plan/remains"
#: Tool call ids whose reasoning is remembered for replay (oldest forgotten first).
RECALL_LIMIT = 4096
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class MinimaxDriver(OpenAICompatibleDriver):
    endpoints = frozenset({CHAT})
    options = {
        "api-key": (str, list),
        "token-file": str,
        "region": str,
        "quota": bool,  # false: no Coding Plan (pay-as-you-go keys), no quota reading
        "rate-limit": dict,  # CLIProxyAPI's per-block limiter: accepted, not acted on
    }
    required = frozenset()
    default_base_url = f"{GLOBAL}/v1"

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        self.tokens = tokens.shared()
        self.quotas = quota.QuotaBook()
        self._recall: OrderedDict[str, str] = OrderedDict()

    # -- configuration ----------------------------------------------------------------------

    @classmethod
    def check_options(cls, block: ProviderBlock) -> Sequence[str]:
        problems = []
        region = str(block.options.get("region") or "global").lower()
        if region not in REGIONS:
            problems.append(
                f"minimax block '{block.name}': 'region' must be global or cn, not {region!r}"
            )
        if not block.options.get("api-key") and not block.options.get("token-file"):
            problems.append(f"minimax block '{block.name}' needs 'api-key' or 'token-file'")
        return problems

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        keys = block.options.get("api-key")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        return keyed_credentials(block, keys, str(block.options.get("token-file") or "") or None)

    @classmethod
    def check(cls, block: ProviderBlock) -> Sequence[str]:
        found = []
        if block.base_url.rstrip("/").endswith("/anthropic"):
            found.append(
                f"base-url {block.base_url} is MiniMax's Anthropic endpoint; keyrail speaks its "
                "OpenAI-compatible one and uses …/v1 on the same host (every dialect still works)"
            )
        if "rate-limit" in block.options:
            found.append("'rate-limit' is accepted for CLIProxyAPI files but not acted on")
        return found

    @property
    def base_url(self) -> str:
        region = str(self.block.options.get("region") or "global").lower()
        url = (self.block.base_url or f"{REGIONS.get(region, GLOBAL)}/v1").rstrip("/")
        if url.endswith("/anthropic"):
            url = url.removesuffix("/anthropic") + "/v1"
        return url

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    async def list_models(self, credential: Credential) -> Sequence[str]:
        return request.MODELS

    def model_source(self, name: str) -> str:
        return "built-in"  # MiniMax documents its ids; it has no model list to ask

    # -- the call ---------------------------------------------------------------------------

    async def send(self, call: Call, credential: Credential) -> Reply:
        model = request.upstream_model(call.model)
        wait = self.quotas.spent_for(credential.id, model)
        if wait is not None:  # known spent: skipped without asking MiniMax
            raise RateLimited(
                f"upstream {self.block.name}: credential {credential.id} has spent its "
                f"Coding Plan window; it resets in {wait:.0f} s",
                status=429,
                provider=self.block.name,
                retry_after=wait,
            )
        attempt = _Attempt(*await self._keyed(credential), model)
        body = request.build(call.body, call.model, self._recalled)
        upstream = dataclasses.replace(call, model=model, body=body)
        try:
            reply = await super().send(upstream, attempt.credential)
        except UpstreamError as exc:
            coded = codes.code_in_error_body(exc.upstream_body) if exc.upstream_body else None
            raise (self._decide(attempt, *coded) if coded else exc) from None
        if call.stream:
            return await self._stream(reply, attempt)
        return await self._whole(reply, attempt)

    async def _stream(self, reply: Reply, attempt: _Attempt) -> Reply:
        async def convert(exc: Exception) -> UpstreamError:
            if isinstance(exc, chunks.MinimaxFailure):
                return self._decide(attempt, exc.code, exc.detail)
            return UpstreamUnavailable(
                f"upstream {self.block.name} answer unreadable: {type(exc).__name__}",
                status=502,
                provider=self.block.name,
            )

        translator = _Remembering(self._remember)
        stream = RewrittenStream(reply.body, translator, self.block.name, convert)
        await stream.open()
        return Reply(200, dict(SSE_HEADERS), stream)

    async def _whole(self, reply: Reply, attempt: _Attempt) -> Reply:
        data = await reply.read()
        try:
            answer, thought, ids = chunks.completion(orjson.loads(data))
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(
                f"upstream {self.block.name} answered 200 with a body that is not JSON",
                status=502,
                provider=self.block.name,
            ) from None
        except chunks.MinimaxFailure as exc:
            raise self._decide(attempt, exc.code, exc.detail) from None
        self._remember(ids, thought)
        return Reply(200, {"Content-Type": "application/json"}, BytesStream(orjson.dumps(answer)))

    def _decide(self, attempt: _Attempt, code: int, detail: str) -> UpstreamError:
        """MiniMax error `code` → the decision; a rejected token is marked for renewal."""
        ends_in = None
        if code == codes.WINDOW_SPENT:  # until the window ends, as the last reading knows it
            ends_in = self.quotas.window_spent(attempt.credential.id, attempt.model)
        error = codes.error_for(code, detail, provider=self.block.name, window_ends_in=ends_in)
        if isinstance(error, CredentialRejected) and attempt.slot and attempt.token:
            attempt.slot.reject(attempt.token)  # a refresh may cure it (the core asks `refresh`)
        return error

    # -- credentials ------------------------------------------------------------------------

    async def _keyed(
        self, credential: Credential
    ) -> tuple[Credential, tokens.TokenSlot | None, tokens.Token | None]:
        """The credential with the key to send now (from its token file when it has one)."""
        path = credential.extra.get("token_file")
        if not path:
            return credential, None, None
        slot = self.tokens.slot(label=credential.id, provider=self.block.name, path=Path(path))
        try:
            token = await slot.get(self._refresher(credential))
        except CredentialRejected:
            key = await asyncio.to_thread(_bare_key, Path(path))
            if not key:
                raise
            REDACTOR.add((key,), owner=f"token {credential.id}")
            return dataclasses.replace(credential, secret=key), None, None
        key = token.access_token or str(token.get("api_key") or "")
        if not key:
            raise CredentialRejected(
                f"credential {credential.id}: token file {path} has no access_token or api_key",
                status=401,
                provider=self.block.name,
            )
        if not token.access_token:
            REDACTOR.add((key,), owner=f"token {credential.id}")
        return dataclasses.replace(credential, secret=key), slot, token

    async def refresh(self, credential: Credential) -> Credential | None:
        path = credential.extra.get("token_file")
        if not path:
            return None
        slot = self.tokens.slot(label=credential.id, provider=self.block.name, path=Path(path))
        token = await slot.renew(self._refresher(credential))
        return credential if token is not None else None

    def _refresher(self, credential: Credential) -> tokens.Refresher:
        async def run(token: tokens.Token) -> Mapping[str, Any]:
            region = str(token.get("region") or "").lower()
            origin = REGIONS.get(region, self.origin) if region else self.origin
            url = (self.block.refresh_url or origin).rstrip("/")
            if not url.endswith("/oauth/token"):
                url += "/oauth/token"
            return await _refresh(self.session, url, token, self.block.name, credential)

        return run

    # -- quota ------------------------------------------------------------------------------

    async def quota(self, credential: Credential) -> Quota | None:
        """The Coding Plan window of the credential (keyrail asks every `quota_interval`
        seconds, shows it in metrics and cools a spent credential until the window ends)."""
        if self.block.options.get("quota") is False:
            return None
        keyed, _, _ = await self._keyed(credential)
        async with self.session.get(
            f"{self.origin}{QUOTA_PATH}",
            headers={"Authorization": f"Bearer {keyed.secret}", "Accept": "application/json"},
            proxy=credential.proxy_url,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as response:
            data = await response.content.read(256 * 1024)
            if response.status != 200:
                raise ValueError(f"the Coding Plan quota endpoint answered {response.status}")
        try:
            readings = quota.parse_remains(orjson.loads(data), time.time())
        except orjson.JSONDecodeError:
            raise ValueError("the Coding Plan quota endpoint answered no JSON") from None
        self.quotas.record(credential.id, readings)
        tight = quota.tightest(readings)
        if tight is None:
            return None
        return Quota(tight.used, tight.limit, tight.resets_at, unit="prompts")

    # -- reasoning replay -------------------------------------------------------------------

    def _remember(self, tool_call_ids: Sequence[str], reasoning: str) -> None:
        if not reasoning:
            return
        for call_id in tool_call_ids:
            self._recall[call_id] = reasoning
            self._recall.move_to_end(call_id)
        while len(self._recall) > RECALL_LIMIT:
            self._recall.popitem(last=False)

    def _recalled(self, tool_call_id: str) -> str | None:
        return self._recall.get(tool_call_id)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One call: the credential with the key sent, its token (to mark it rejected), the model."""

    credential: Credential
    slot: tokens.TokenSlot | None
    token: tokens.Token | None
    model: str


class _Remembering(chunks.StreamTranslator):
    """The stream translator that hands the reasoning of tool calls to the driver at the end."""

    def __init__(self, remember: Any) -> None:
        super().__init__()
        self._remember = remember

    def end(self) -> list[bytes]:
        out = super().end()
        self._remember(self.tool_call_ids, "".join(self.reasoning))
        return out


def _bare_key(path: Path) -> str:
    """A token file that is not JSON: the whole text is the key (CLIProxyAPI reads it so)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return "" if text.startswith(("{", "[")) else text


async def _refresh(
    session: aiohttp.ClientSession,
    url: str,
    token: tokens.Token,
    provider: str,
    credential: Credential,
) -> Mapping[str, Any]:
    """The portal's refresh grant (form-encoded, protocols/minimax.md §2.2) → token fields."""
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID,
            "refresh_token": token.refresh_token}  # fmt: skip
    try:
        async with session.post(
            url,
            data=form,
            headers={"Accept": "application/json"},
            proxy=credential.proxy_url,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as response:
            status = response.status
            data = await response.content.read(64 * 1024)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"{provider}: token endpoint unreachable ({type(exc).__name__})",
            status=502,
            provider=provider,
        ) from None
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        answer = None
    refused = isinstance(answer, dict) and answer.get("status") == "error"
    if status in (400, 401, 403) or refused:
        # Never relay the token endpoint's body: it answers a request that carried secrets.
        raise CredentialRejected(
            f"{provider}: the refresh token was refused; log in to MiniMax again",
            status=401,
            provider=provider,
        )
    if status >= 300:
        error = classify_upstream(status, {}, b"", provider=provider)
        error.message = f"{provider}: token endpoint answered {status}"
        raise error
    if not isinstance(answer, dict) or not answer.get("access_token"):
        raise UpstreamUnavailable(
            f"{provider}: token endpoint answered without an access token",
            status=502,
            provider=provider,
        )
    fields: dict[str, Any] = {
        "access_token": answer["access_token"],
        "refresh_token": answer.get("refresh_token"),
    }
    expiry = answer.get("expired_in") or answer.get("expires_in")
    if isinstance(expiry, int | float) and not isinstance(expiry, bool):
        # [OC] stores `expired_in` as an epoch-ms deadline; a port reads it as seconds.
        if expiry > 1e12:
            fields["expires_at"] = tokens.format_expiry(expiry / 1000.0)
        else:
            fields["expires_in"] = expiry
    if answer.get("resource_url"):
        fields["resource_url"] = answer["resource_url"]
    return fields
