"""`kiro`: Claude (and other) models through Kiro / Amazon Q, with the Kiro IDE's login.

Owns: the block's options and its one credential (a token file, default the IDE's
`~/.aws/sso/cache/kiro-auth-token.json`, or `access-token`/`refresh-token` given inline, which
then live in memory only), the API host (`base-url`, else `q.{region}.amazonaws.com` with the
region from `region`, else from the profile ARN, else us-east-1), the request headers, reading
the event-stream answer up to its first output before returning (so an early error still
fails over), and mapping Kiro's errors onto the proxy's decisions: 401 and invalid-token 403
→ `CredentialRejected` with the token marked for renewal; other 403 (suspended) and 402
(monthly quota) → `CredentialRejected`; 429 and throttling frames → `RateLimited`; 400 →
`UpstreamRejected`; 5xx, corrupt frames and unknown exception frames → `UpstreamUnavailable`
before the first byte, `StreamInterrupted` after it.
Does not own: token timing, refresh single-flight and persistence (proxy/tokens.py, the
process's store, which this driver reaches through `self.tokens`), the refresh flows
(auth.py), the body mapping (request.py, response.py), the framing (eventstream.py).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from drivers.kiro import auth, models, request
from drivers.kiro.eventstream import Decoder, FrameError
from drivers.kiro.response import KiroException, Translator
from proxy import tokens
from proxy.config import ProviderBlock
from proxy.driver import (
    BytesStream,
    Call,
    Credential,
    Driver,
    Reply,
    describe_failure,
    read_error_body,
)
from proxy.errors import (
    CredentialRejected,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    classify_upstream,
)
from proxy.retry_hints import retry_after_seconds
from proxy.streaming import DONE, SSE_HEADERS, data_event

DEFAULT_TOKEN_FILE = "~/.aws/sso/cache/kiro-auth-token.json"
_SDK = "aws-sdk-js/1.0.27"
_IDE = "KiroIDE-0.7.45"
_THROTTLED = ("ThrottlingException", "ServiceQuotaExceededException")
_INVALID = ("ValidationException",)
_Failure = (FrameError, KiroException, aiohttp.ClientError, TimeoutError)


class KiroDriver(Driver):
    options = {
        "token-file": str,
        "region": str,
        "profile-arn": str,
        "access-token": str,
        "refresh-token": str,
    }
    default_base_url = "https://q.us-east-1.amazonaws.com"

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        self.tokens = tokens.shared()

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        opts = block.options
        inline = opts.get("refresh-token") or opts.get("access-token")
        if inline:
            basis, extra = f"inline:{inline}", {}
        else:
            path = Path(str(opts.get("token-file") or DEFAULT_TOKEN_FILE)).expanduser()
            basis, extra = str(path.absolute()), {"token_file": str(path.absolute())}
        digest = hashlib.sha256(basis.encode()).hexdigest()[:8]
        return [
            Credential(
                id=f"{block.name}/{digest}",
                provider=block.name,
                proxy_url=None if block.proxy_url in ("direct", "none") else block.proxy_url,
                extra=extra,
            )
        ]

    @classmethod
    def check(cls, block: ProviderBlock) -> Sequence[str]:
        """A token file that cannot be read: every request would fail until it can."""
        if block.options.get("refresh-token") or block.options.get("access-token"):
            return []
        path = Path(str(block.options.get("token-file") or DEFAULT_TOKEN_FILE)).expanduser()
        try:
            with path.open("rb"):
                return []
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        return [
            f"{block.at('token-file')}: {block.name}: token file {path} cannot be read "
            f"({why}); its requests fail (upstream_auth_failed) until it can: log in with "
            "the Kiro IDE, or point 'token-file' at the right file"
        ]

    async def list_models(self, credential: Credential) -> Sequence[str]:
        return models.EXPOSED

    # -- tokens -----------------------------------------------------------------------------

    def _token_file(self, credential: Credential) -> Path | None:
        path = credential.extra.get("token_file")
        return Path(path) if path else None

    def _slot(self, credential: Credential) -> tokens.TokenSlot:
        path = self._token_file(credential)
        if path is not None:
            return self.tokens.slot(label=credential.id, provider=self.block.name, path=path)
        opts = self.block.options
        inline = {
            "access_token": opts.get("access-token", ""),
            "refresh_token": opts.get("refresh-token", ""),
        }
        return self.tokens.slot(label=credential.id, provider=self.block.name, inline=inline)

    def _refresher(self, credential: Credential) -> tokens.Refresher:
        async def run(token: tokens.Token) -> Mapping[str, Any]:
            return await auth.refresh(
                self.session,
                token,
                token_file=self._token_file(credential),
                refresh_url=self.block.refresh_url,
                provider=self.block.name,
                proxy=credential.proxy_url,
            )

        return run

    async def refresh(self, credential: Credential) -> Credential | None:
        """After an invalid-token rejection: a newer token (single-flight), else None."""
        token = await self._slot(credential).renew(self._refresher(credential))
        return credential if token is not None else None

    # -- the call ---------------------------------------------------------------------------

    def _url(self, token: tokens.Token) -> str:
        if self.block.base_url:
            base = self.block.base_url.rstrip("/")
        else:
            arn = str(self.block.options.get("profile-arn") or token.get("profile_arn") or "")
            arn_region = arn.split(":")[3] if arn.count(":") >= 5 else ""
            region = self.block.options.get("region") or arn_region or "us-east-1"
            base = f"https://q.{region}.amazonaws.com"
        return f"{base}/generateAssistantResponse"

    def _headers(self, call: Call, credential: Credential, token: tokens.Token) -> dict[str, str]:
        machine = str(token.get("machine_id") or hashlib.sha256(credential.id.encode()).hexdigest())
        return {
            "Content-Type": "application/json",
            "Accept": "*/*",
            "x-amzn-codewhisperer-optout": "true",
            "x-amzn-kiro-agent-mode": "vibe",
            "amz-sdk-invocation-id": str(uuid.uuid4()),
            "amz-sdk-request": "attempt=1; max=3",
            "User-Agent": (
                f"{_SDK} ua/2.1 os/linux lang/js md/nodejs#22.21.1 "
                f"api/codewhispererstreaming#1.0.27 m/E {_IDE}-{machine}"
            ),
            "x-amz-user-agent": f"{_SDK} {_IDE}-{machine}",
            **call.headers,
            "Authorization": f"Bearer {token.access_token}",
        }

    async def send(self, call: Call, credential: Credential) -> Reply:
        slot = self._slot(credential)
        token = await slot.get(self._refresher(credential))
        model_id = models.upstream_id(call.model)
        arn = self.block.options.get("profile-arn") or token.get("profile_arn")
        social = auth.is_social(token, self._token_file(credential))
        body = orjson.dumps(request.build(call.body, model_id, profile_arn=arn if social else None))
        response = await self.post(
            self._url(token), data=body, headers=self._headers(call, credential, token),
            credential=credential,
        )  # fmt: skip
        if response.status != 200:
            raise await self._error(response, slot, token)
        translator = Translator(
            call.model, context_window=models.context_window(model_id), request_chars=len(body)
        )
        answer = _Answer(response, translator)
        head: list[dict[str, Any]] = [translator.first()] if call.stream else []
        try:
            if call.stream:  # up to the first output: an early error can still fail over
                while not answer.ended and len(head) == 1:
                    head.extend(await answer.read())
            else:
                while not answer.ended:
                    await answer.read()
        except _Failure as exc:
            answer.close()
            raise _before_first_byte(exc, self.block.name) from None
        except BaseException:  # cancelled (client gone, first-byte timeout): drop the connection
            answer.close()
            raise
        if not call.stream:
            answer.close()
            data = orjson.dumps(translator.completion())
            return Reply(200, {"Content-Type": "application/json"}, BytesStream(data))
        return Reply(200, dict(SSE_HEADERS), _SSEBody(answer, head, self.block.name))

    async def _error(
        self, response: aiohttp.ClientResponse, slot: tokens.TokenSlot, token: tokens.Token
    ) -> UpstreamError:
        data = await read_error_body(response)
        status, headers = response.status, dict(response.headers)
        if status == 401 or (status == 403 and _invalid_token(data)):
            slot.reject(token)
        return classify_upstream(
            status,
            headers,
            data,
            provider=self.block.name,
            retry_after=retry_after_seconds(headers, data),
        )


def _invalid_token(body: bytes) -> bool:
    text = body.decode("utf-8", "replace").lower()
    if "suspended" in text:
        return False
    return "bearer token" in text or ("token" in text and ("invalid" in text or "expired" in text))


def _before_first_byte(exc: BaseException, provider: str) -> UpstreamError:
    """A failure while nothing reached the client: the decision still matters."""
    message = f"upstream {provider} stream failed: {_describe(exc)}"
    if isinstance(exc, KiroException):
        if exc.kind in _THROTTLED:
            return RateLimited(message, status=429, provider=provider)
        if exc.kind in _INVALID:
            return UpstreamRejected(message, status=400, provider=provider)
        if exc.kind == "AccessDeniedException":
            return CredentialRejected(message, status=403, provider=provider)
    return UpstreamUnavailable(message, status=502, provider=provider)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KiroException | FrameError):
        return str(exc)[:300]
    return describe_failure(exc)


class _Answer:
    """The event-stream body of one answer, read as OpenAI chunks."""

    def __init__(self, response: aiohttp.ClientResponse, translator: Translator) -> None:
        self.response = response
        self.translator = translator
        self.decoder = Decoder()
        self.ended = False

    async def read(self) -> list[dict[str, Any]]:
        """The chunks the next network read completes (maybe none). Sets `ended` at the end."""
        if self.decoder.error is not None:
            raise self.decoder.error
        data = await self.response.content.readany()
        if not data:
            self.ended = True
            self.decoder.end()
            return []
        out: list[dict[str, Any]] = []
        for message in self.decoder.feed(data):
            out.extend(self.translator.feed(message))
        return out

    def close(self) -> None:
        if self.ended:
            self.response.release()
        else:
            self.response.close()


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(data_event(orjson.dumps(c)) for c in chunks)


class _SSEBody:
    """`ByteStream` of OpenAI SSE: the chunks read so far, then the rest as it arrives."""

    def __init__(self, answer: _Answer, head: list[dict[str, Any]], provider: str) -> None:
        self._answer = answer
        self._head = head
        self._provider = provider

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        answer = self._answer
        yield _sse(self._head)
        try:
            while not answer.ended:
                chunks = await answer.read()
                if chunks:
                    yield _sse(chunks)
        except _Failure as exc:
            raise StreamInterrupted(
                f"upstream {self._provider} stream broke: {_describe(exc)}",
                status=502,
                provider=self._provider,
            ) from None
        yield _sse(answer.translator.last()) + DONE

    async def aclose(self) -> None:
        self._answer.close()
