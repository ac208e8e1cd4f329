"""`roo`: a Roo Code Router (or a router speaking its protocol) at `base-url`.

The Roo Code Router itself was shut down on 2026-05-15 (protocols/roo.md, December 2026) and
answers every call with a sunset notice. This driver still speaks its protocol to any router
that does at a configured `base-url`, and turns the sunset answer, or any answer of that kind,
into `ProviderDiscontinued`: the credential is disabled until a reload and every later request
gets a 503 that says what happened and how to move the block (docs/providers.md).

Owns: the block's options and credentials (`api-key`, one or a list; else `token-file`,
default `~/.roo/cli-credentials.json`, whose `token` is the Roo CLI's login; else
`ROO_API_KEY`), the expiry check of a CLI login (the CLI treats a token as expired 24 h
before its `exp`; there is no refresh call, so the answer is "log in again"), the address
(`…/proxy/v1`, `/v1` added when missing), Roo's request headers and `reasoning` object, and
the answer's deviations (`reasoning_details` / `reasoning` → `reasoning_content`; usage kept,
`total_tokens` filled in). Events without reasoning pass through as bytes.
Does not own: the HTTP call (the openai-compatibility driver it extends), the stream framing
(drivers/rewrite.py).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from drivers.openai import OpenAICompatibleDriver
from drivers.rewrite import RewrittenStream
from proxy.config import ProviderBlock
from proxy.driver import CHAT, BytesStream, Call, Credential, Reply, keyed_credentials
from proxy.errors import (
    CredentialRejected,
    ProviderDiscontinued,
    UpstreamError,
    UpstreamUnavailable,
)
from proxy.redact import REDACTOR
from proxy.streaming import SSE_HEADERS

log = logging.getLogger("keyrail.roo")

DEFAULT_BASE_URL = "https://api.roocode.com/proxy/v1"
DEFAULT_TOKEN_FILE = "~/.roo/cli-credentials.json"
#: The Roo CLI considers a login expired this long before the token's `exp`.
EXPIRY_MARGIN = 24 * 3600.0
CLIENT_VERSION = "3.36.4"
HEADERS = {
    "HTTP-Referer": "https://github.com/RooVetGit/Roo-Cline",
    "X-Title": "Roo Code",
    "User-Agent": f"RooCode/{CLIENT_VERSION}",
    "X-Roo-App-Version": CLIENT_VERSION,
}
#: What a shut-down service says ("…we also ended the Roo Code Router… Please select a
#: different provider"), and answers of the same kind.
_SUNSET = re.compile(
    r"sunset|shut\s*down|discontinued|decommissioned|end[- ]of[- ]life|"
    r"no longer (?:available|supported|offered|operat)|ended the [\w\s]{0,40}router|"
    r"select a different provider",
    re.IGNORECASE,
)
_DISPLAYED = ("reasoning.text", "reasoning.summary")


def discontinued_message(provider: str, base_url: str, said: str) -> str:
    said = " ".join(REDACTOR.redact(said).split())[:300]
    where = "The Roo Code Router" if base_url == DEFAULT_BASE_URL else f"The router at {base_url}"
    return (
        f"{where} (provider '{provider}') was shut down"
        + (f' and answers: "{said}"' if said else "")
        + ". Move this block's models to an 'openai-compatibility' block pointing at a live "
        "OpenAI-compatible gateway (see docs/providers.md); keyrail will not call this "
        "provider again until the config is reloaded."
    )


def is_sunset(text: str) -> bool:
    return bool(_SUNSET.search(text))


class RooDriver(OpenAICompatibleDriver):
    endpoints = frozenset({CHAT})
    options = {"api-key": (str, list), "token-file": str, "rate-limit": dict}
    required = frozenset()
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        self._files: dict[str, tuple[tuple[int, int, int], str, float | None]] = {}

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        opts = block.options
        keys = opts.get("api-key")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        if not keys and not opts.get("token-file") and os.environ.get("ROO_API_KEY"):
            keys = [os.environ["ROO_API_KEY"]]
        keys = [str(k).strip() for k in keys if str(k).strip()]
        for i, key in enumerate(keys):
            REDACTOR.add((key,), owner=f"key {block.name}/{i}")  # ROO_API_KEY too
        token_file = str(opts.get("token-file") or "") or (None if keys else DEFAULT_TOKEN_FILE)
        return keyed_credentials(block, keys, token_file)

    @classmethod
    def check(cls, block: ProviderBlock) -> Sequence[str]:
        found = []
        if not block.base_url:
            found.append(
                "no base-url: the default Roo Code Router was shut down on 2026-05-15 and "
                "answers every request with a sunset notice; set base-url to a router that "
                "speaks its protocol, or move the models to an 'openai-compatibility' block "
                "(docs/providers.md)"
            )
        if "rate-limit" in block.options:
            found.append("'rate-limit' is accepted for CLIProxyAPI files but not acted on")
        return found

    @property
    def base_url(self) -> str:
        url = (self.block.base_url or DEFAULT_BASE_URL).rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"

    @staticmethod
    def _build_headers(call_headers: Any, credential: Credential) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **HEADERS, **call_headers}
        headers["Authorization"] = f"Bearer {credential.secret or 'unauthenticated'}"
        return headers

    # -- the call ---------------------------------------------------------------------------

    async def send(self, call: Call, credential: Credential) -> Reply:
        keyed = self._keyed(credential)
        body = _with_reasoning(call.body)
        try:
            reply = await super().send(dataclasses.replace(call, body=body), keyed)
        except UpstreamError as exc:
            text = exc.upstream_body.decode("utf-8", "replace")
            if exc.status == 410 or is_sunset(text):
                raise self._discontinued(_said(exc.upstream_body)) from None
            raise
        if call.stream:
            stream = RewrittenStream(reply.body, _Answer(self), self.block.name, self._convert)
            await stream.open()
            return Reply(200, dict(SSE_HEADERS), stream)
        data = await reply.read()
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable(
                f"upstream {self.block.name} answered 200 with a body that is not JSON",
                status=502,
                provider=self.block.name,
            ) from None
        if isinstance(answer, dict):
            self.refuse_sunset(answer)
            _clean_completion(answer)
        return Reply(200, {"Content-Type": "application/json"}, BytesStream(orjson.dumps(answer)))

    def _discontinued(self, said: str) -> ProviderDiscontinued:
        message = discontinued_message(self.block.name, self.base_url, said)
        log.error("%s", message)
        return ProviderDiscontinued(message, provider=self.block.name)

    def refuse_sunset(self, data: dict[str, Any]) -> None:
        """A 200 whose whole answer is the sunset notice is no answer."""
        text = _text_of(data)
        if text and "roo" in text.lower() and is_sunset(text):
            raise self._discontinued(text)

    async def _convert(self, exc: Exception) -> UpstreamError:
        return UpstreamUnavailable(
            f"upstream {self.block.name} stream unreadable: {type(exc).__name__}",
            status=502,
            provider=self.block.name,
        )

    async def list_models(self, credential: Credential) -> Sequence[str]:
        try:
            return await super().list_models(self._keyed(credential))
        except UpstreamError as exc:
            if self.block.base_url == "" or is_sunset(exc.message):
                log.warning("%s", discontinued_message(self.block.name, self.base_url, ""))
            raise

    # -- credentials ------------------------------------------------------------------------

    def _keyed(self, credential: Credential) -> Credential:
        path = credential.extra.get("token_file")
        if not path:
            return credential
        token, expires = self._read_token(Path(path), credential.id)
        if expires is not None and expires - time.time() < EXPIRY_MARGIN:
            raise CredentialRejected(
                f"credential {credential.id}: the Roo login in {path} has expired "
                "(or expires within 24 h); log in again with `roo auth login`",
                status=401,
                provider=self.block.name,
            )
        return dataclasses.replace(credential, secret=token)

    def _read_token(self, path: Path, label: str) -> tuple[str, float | None]:
        """The file's token and its expiry; re-read only when the file changed."""
        try:
            st = path.stat()
            file_id = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._files.get(str(path))
            if cached is not None and cached[0] == file_id:
                return cached[1], cached[2]
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialRejected(
                f"credential {label}: cannot read {path} ({type(exc).__name__}); log in with "
                "`roo auth login` or set api-key / ROO_API_KEY",
                status=401,
                provider=self.block.name,
            ) from None
        token = text
        if text.startswith("{"):
            try:
                document = orjson.loads(text)
            except orjson.JSONDecodeError:
                document = {}
            token = ""
            if isinstance(document, dict):
                for name in ("token", "access_token", "accessToken", "api_key"):
                    if isinstance(document.get(name), str) and document[name]:
                        token = document[name]
                        break
        if not token:
            raise CredentialRejected(
                f"credential {label}: {path} holds no 'token'; log in with `roo auth login`",
                status=401,
                provider=self.block.name,
            )
        REDACTOR.add((token,), owner=f"token {label}")
        expires = _jwt_expiry(token)
        self._files[str(path)] = (file_id, token, expires)
        return token, expires


class _Answer:
    """The stream rewriter: events with reasoning or the sunset notice are parsed, the rest
    pass through as they came."""

    def __init__(self, driver: RooDriver) -> None:
        self._driver = driver
        self._first = True

    def feed(self, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return []
        if self._first:  # a sunset notice streamed as the answer is no answer
            self._first = False
            first = _object(payload)
            if first is not None:
                self._driver.refuse_sunset(first)
        if b'"reasoning' not in payload and b'"usage"' not in payload:
            return [payload]
        data = _object(payload)
        if data is None:
            return [payload]
        for choice in data.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                _flatten_reasoning(delta)
        _fill_usage(data.get("usage"))
        return [orjson.dumps(data)]

    def end(self) -> list[bytes]:
        return []


def _with_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """`reasoning_effort` → Roo's `reasoning` object (an explicit `reasoning` wins)."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return body
    out = {k: v for k, v in body.items() if k != "reasoning_effort"}
    if not isinstance(body.get("reasoning"), dict):
        enabled = effort not in ("none", "minimal")
        out["reasoning"] = {"enabled": True, "effort": effort} if enabled else {"enabled": False}
    return out


def _flatten_reasoning(holder: dict[str, Any]) -> None:
    """`reasoning_details` (displayable parts) or legacy `reasoning` → `reasoning_content`."""
    details = holder.pop("reasoning_details", None)
    legacy = holder.pop("reasoning", None)
    text = ""
    if isinstance(details, list):
        text = "".join(
            str(d.get("text") or d.get("summary") or "")
            for d in details
            if isinstance(d, dict) and d.get("type") in _DISPLAYED
        )
    if not text and isinstance(legacy, str):
        text = legacy
    if text and not holder.get("reasoning_content"):
        holder["reasoning_content"] = text


def _fill_usage(usage: Any) -> None:
    if isinstance(usage, dict) and "total_tokens" not in usage:
        usage["total_tokens"] = int(usage.get("prompt_tokens") or 0) + int(
            usage.get("completion_tokens") or 0
        )


def _clean_completion(answer: dict[str, Any]) -> None:
    for choice in answer.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            _flatten_reasoning(message)
    _fill_usage(answer.get("usage"))


def _text_of(data: dict[str, Any]) -> str:
    """The text a 200 answer (or chunk) carries: content of its first choice, or a message."""
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        part = choices[0].get("message") or choices[0].get("delta") or {}
        content = part.get("content") if isinstance(part, dict) else None
        return content if isinstance(content, str) else ""
    message = data.get("message") or data.get("error")
    if isinstance(message, dict):
        message = message.get("message")
    return message if isinstance(message, str) else ""


def _object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _said(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    return _text_of(data) if isinstance(data, dict) else ""


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (not verified: only the CLI's own expiry rule uses it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
