"""`kiro`: Claude (and other) models through Kiro / Amazon Q, with the Kiro IDE's login.

Owns: the block's options and its one credential (a token file, default the IDE's
`~/.aws/sso/cache/kiro-auth-token.json`, or `access-token`/`refresh-token` given inline, which
then live in memory only), walking the host line (hosts.py) for each request: the profile ARN
each host gets (resolved once per credential through the management host when a host needs
one and the token has none), `X-Amz-Target` where the host wants it, moving on when a host is
unreachable, answers 404/410 or says it is retired, and naming the host that answered (and
those that broke) on the `Reply`; the request headers; the first-byte deadline
(`first-byte-seconds`); reading the event-stream answer up to its first output before
returning (so an early error still fails over); model discovery and the quota reading
(through management.py); and mapping Kiro's errors onto the proxy's decisions: 401 and
invalid-token 403 → `CredentialRejected` with the token marked for renewal; other 403
(suspended) and 402 (monthly quota) → `CredentialRejected`; 429 and throttling frames →
`RateLimited`; 400 → `UpstreamRejected` (`REQUEST_BODY_INVALID` with the field named); 5xx,
corrupt frames and unknown exception frames → `UpstreamUnavailable` before the first byte,
`StreamInterrupted` after it.
Does not own: token timing, refresh single-flight and persistence (proxy/tokens.py, the
process's store, which this driver reaches through `self.tokens`), the refresh flows
(auth.py), the host table and regions (hosts.py), the body mapping (request.py, response.py,
thinking.py), the framing (eventstream.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from drivers.kiro import auth, hosts, management, models, request
from drivers.kiro.eventstream import Decoder, FrameError
from drivers.kiro.response import KiroException, Translator
from proxy import tokens
from proxy.config import ProviderBlock
from proxy.dialects import neutral
from proxy.driver import (
    NEUTRAL,
    Call,
    Credential,
    Driver,
    Reply,
    describe_failure,
    read_error_body,
)
from proxy.errors import (
    ConfigError,
    CredentialRejected,
    ProxyError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    classify_upstream,
)
from proxy.quota import Quota
from proxy.retry_hints import retry_after_seconds

log = logging.getLogger("keyrail.kiro")
DEFAULT_TOKEN_FILE = "~/.aws/sso/cache/kiro-auth-token.json"
#: Where older Kiro IDEs kept it: used when the default file does not exist and this one does.
LEGACY_TOKEN_FILE = "~/.kiro/kiro-auth-token.json"
#: Seconds to the first event before the attempt moves on (kiro.md K5: a gateway uses 15 s).
FIRST_BYTE_SECONDS = 15.0
#: Start-up and reload wait at most this long for the model list (then: the built-in one).
DISCOVERY_SECONDS = 8.0
#: After a failed profileArn lookup, the next one waits this long.
ARN_RETRY_SECONDS = 300.0
_SDK = "aws-sdk-js/1.0.27"
_IDE = "KiroIDE-0.7.45"
_THROTTLED = ("ThrottlingException", "ServiceQuotaExceededException")
_INVALID = ("ValidationException",)
_Failure = (FrameError, KiroException, aiohttp.ClientError, TimeoutError)


class KiroDriver(Driver):
    dialects = NEUTRAL  # the neutral request in (`call.request`), neutral events out
    options = {
        "token-file": str,
        "region": str,
        "profile-arn": str,
        "access-token": str,
        "refresh-token": str,
        "base-urls": list,
        "management-url": str,
        "first-byte-seconds": (int, float),
        "agent-task-type": str,
    }
    default_base_url = "https://runtime.us-east-1.kiro.dev"
    quota_interval = 300.0

    def __init__(self, block: ProviderBlock, session: aiohttp.ClientSession) -> None:
        super().__init__(block, session)
        self.tokens = tokens.shared()
        opts = block.options
        try:
            self.entries = hosts.read_entries(block.base_url, opts.get("base-urls"))
        except ValueError as exc:
            raise ConfigError([f"{block.where}: kiro block '{block.name}': {exc}"]) from None
        self.memory = hosts.Memory()
        self.first_byte_seconds = float(opts.get("first-byte-seconds") or FIRST_BYTE_SECONDS)
        self._arns: dict[str, str] = {}  # credential id → profile ARN resolved through management
        self._arn_failed: dict[str, tuple[str, float]] = {}  # credential id → (why, retry after)
        self._arn_locks: dict[str, asyncio.Lock] = {}
        self._upstream: dict[str, str] = {}  # exposed name → discovered upstream id
        self._sources: dict[str, str] = {}  # exposed name → "discovered" | "built-in"

    @classmethod
    def check_options(cls, block: ProviderBlock) -> Sequence[str]:
        problems = []
        try:
            hosts.read_entries(block.base_url, block.options.get("base-urls"))
        except ValueError as exc:
            problems.append(f"kiro block '{block.name}': {exc}")
        first_byte = block.options.get("first-byte-seconds")
        if first_byte is not None and first_byte <= 0:
            problems.append(f"kiro block '{block.name}': 'first-byte-seconds' must be above 0")
        return problems

    @classmethod
    def credentials(cls, block: ProviderBlock) -> Sequence[Credential]:
        opts = block.options
        inline = opts.get("refresh-token") or opts.get("access-token")
        if inline:
            basis, extra = f"inline:{inline}", {}
        else:
            path = Path(str(opts.get("token-file") or _default_token_file())).expanduser()
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

    async def _token(self, credential: Credential) -> tokens.Token:
        return await self._slot(credential).get(self._refresher(credential))

    # -- where: region, hosts, profile ARN --------------------------------------------------

    def _known_arn(self, credential: Credential, token: tokens.Token) -> str:
        opts = self.block.options
        return str(
            opts.get("profile-arn")
            or token.get("profile_arn")
            or self._arns.get(credential.id)
            or ""
        )

    def region(self, credential: Credential, token: tokens.Token) -> str:
        """The API region: `region`, else the profile ARN's, else the SSO region mapped."""
        return hosts.api_region(
            str(self.block.options.get("region") or ""),
            self._known_arn(credential, token),
            str(token.get("region") or ""),
        )

    def host_line(self, region: str) -> tuple[hosts.Host, ...]:
        """The addresses to try for a region, in the configured order (not the remembered)."""
        return tuple(e.host(region) for e in self.entries)

    def _management(self, region: str) -> list[str]:
        override = str(self.block.options.get("management-url") or self.block.base_url or "")
        return hosts.management_bases(override, region)

    async def _resolve_arn(self, credential: Credential, token: tokens.Token, region: str) -> str:
        """The login's profile ARN through the management host, once per credential (a
        failure is remembered for a few minutes, and logged once). Raises ManagementError."""
        lock = self._arn_locks.setdefault(credential.id, asyncio.Lock())
        async with lock:
            if credential.id in self._arns:
                return self._arns[credential.id]
            failed = self._arn_failed.get(credential.id)
            if failed is not None and time.monotonic() < failed[1]:
                raise management.ManagementError(failed[0])
            try:
                arn = await management.profile_arn(
                    self.session, self._management(region), token=token.access_token,
                    proxy=credential.proxy_url,
                )  # fmt: skip
            except management.ManagementError as exc:
                why = f"no profileArn: {exc}"
                if failed is None or failed[0] != why:
                    log.warning("provider %s, credential %s: %s", self.block.name, credential.id,
                                why)  # fmt: skip
                self._arn_failed[credential.id] = (why, time.monotonic() + ARN_RETRY_SECONDS)
                raise management.ManagementError(why) from None
            self._arns[credential.id] = arn
            self._arn_failed.pop(credential.id, None)
            log.info("provider %s, credential %s: profileArn resolved through the management "
                     "host", self.block.name, credential.id)  # fmt: skip
            return arn

    async def _arn_for(
        self, host: hosts.Host, credential: Credential, token: tokens.Token, region: str
    ) -> str | None:
        """The profile ARN this host gets, by its row's rule (None: send none)."""
        known = self._known_arn(credential, token)
        if host.kind.profile_arn == hosts.SOCIAL_ONLY:
            social = auth.is_social(token, self._token_file(credential))
            return (known or None) if social else None
        return known or await self._resolve_arn(credential, token, region)

    # -- models and quota -------------------------------------------------------------------

    async def list_models(self, credential: Credential) -> Sequence[str]:
        """The built-in names plus what `ListAvailableModels` lists (the built-in list alone,
        with a warning, when discovery fails)."""
        try:
            async with asyncio.timeout(DISCOVERY_SECONDS):
                found = await self._discover(credential)
        except (management.ManagementError, ProxyError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("provider %s: model discovery failed (%s); serving the built-in list",
                        self.block.name, why)  # fmt: skip
            self._sources = dict.fromkeys(models.EXPOSED, "built-in")
            return models.EXPOSED
        self._upstream = {models.exposed(m): m for m in found}
        names = list(dict.fromkeys([*self._upstream, *models.EXPOSED]))
        self._sources = {n: "discovered" if n in self._upstream else "built-in" for n in names}
        return names

    def model_source(self, name: str) -> str:
        return self._sources.get(name, "built-in")

    async def _discover(self, credential: Credential) -> list[str]:
        token = await self._token(credential)
        region = self.region(credential, token)
        order = self.memory.order(self.host_line(region))
        failures = []
        bases = [h.base for h in order] + self._management(region)
        for base in dict.fromkeys(bases):  # the current host first, then the management host
            arn = self._known_arn(credential, token) or None
            if arn is None and any(h.kind.profile_arn == hosts.ALWAYS for h in order):
                try:
                    arn = await self._resolve_arn(credential, token, region)
                except management.ManagementError:
                    arn = None
            try:
                found = await management.models(
                    self.session, base, token=token.access_token, proxy=credential.proxy_url,
                    profile_arn=arn,
                )  # fmt: skip
            except management.ManagementError as exc:
                failures.append(f"{hosts.Host(base, hosts.LEGACY).name}: {exc}")
                continue
            ids = [str(m["modelId"]) for m in found]
            if ids:
                log.info("provider %s: %d models discovered at %s", self.block.name, len(ids),
                         hosts.Host(base, hosts.LEGACY).name)  # fmt: skip
                return ids
            failures.append(f"{hosts.Host(base, hosts.LEGACY).name}: an empty list")
        raise management.ManagementError("; ".join(failures))

    async def quota(self, credential: Credential) -> Quota | None:
        """`getUsageLimits` on the management host: agentic requests used and allowed."""
        token = await self._token(credential)
        region = self.region(credential, token)
        arn = self._known_arn(credential, token) or None
        if arn is None:
            try:
                arn = await self._resolve_arn(credential, token, region)
            except management.ManagementError:
                arn = None
        failures = []
        for base in self._management(region):
            try:
                return await management.usage(
                    self.session, base, token=token.access_token, proxy=credential.proxy_url,
                    profile_arn=arn,
                )  # fmt: skip
            except management.ManagementError as exc:
                failures.append(f"{hosts.Host(base, hosts.LEGACY).name}: {exc}")
        raise management.ManagementError("; ".join(failures))

    # -- the call ---------------------------------------------------------------------------

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
        model_id = self._upstream.get(call.model) or models.upstream_id(call.model)
        assert call.request is not None, "keyrail hands a NEUTRAL driver the neutral request"
        budget = request.thinking_budget(call.request, call.model)
        agent_task_type = self.block.options.get("agent-task-type") or None
        built = request.build(
            call.request, model_id, thinking=budget, agent_task_type=agent_task_type
        )
        region = self.region(credential, token)
        table = self.host_line(region)
        failed: list[str] = []
        for host in self.memory.order(table):
            try:
                arn = await self._arn_for(host, credential, token, region)
            except management.ManagementError as exc:
                failed.append(f"{host.name} ({exc})")
                continue
            body = orjson.dumps({**built, "profileArn": arn} if arn else built)
            headers = self._headers(call, credential, token)
            if host.kind.target:
                headers["X-Amz-Target"] = host.kind.target
            deadline = asyncio.timeout(self.first_byte_seconds)
            try:
                async with deadline:
                    response = await self._post(host, body, headers, credential)
                    if response is None:  # unreachable: the next host
                        failed.append(f"{host.name} (unreachable)")
                        continue
                    if response.status != 200:
                        data = await read_error_body(response)
                        if hosts.moved(response.status, data):
                            failed.append(f"{host.name} ({response.status})")
                            continue
                        raise self._error(
                            response, data, slot, token, host, failed, agent_task_type
                        )
                    self.memory.worked(table, host)
                    return await self._answer(call, response, model_id, len(body), budget, host,
                                              failed, deadline)  # fmt: skip
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise UpstreamUnavailable(
                    f"upstream {self.block.name} sent nothing for {self.first_byte_seconds:g} s "
                    f"(first-byte-seconds) at {host.name}",
                    status=502,
                    provider=self.block.name,
                ) from None
        raise UpstreamUnavailable(
            f"upstream {self.block.name}: no host answered: {'; '.join(failed)}",
            status=502,
            provider=self.block.name,
        )

    async def _post(
        self, host: hosts.Host, body: bytes, headers: dict[str, str], credential: Credential
    ) -> aiohttp.ClientResponse | None:
        """The POST; None when the host cannot be reached at all (DNS, refused, reset)."""
        try:
            return await self.session.post(
                f"{host.base}/generateAssistantResponse",
                data=body,
                headers=headers,
                proxy=credential.proxy_url,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise UpstreamUnavailable(
                    f"upstream {self.block.name} at {host.name}: {describe_failure(exc)}",
                    status=502,
                    provider=self.block.name,
                ) from exc
            log.info("provider %s: %s unreachable (%s)", self.block.name, host.name,
                     describe_failure(exc))  # fmt: skip
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {self.block.name} at {host.name}: {describe_failure(exc)}",
                status=502,
                provider=self.block.name,
            ) from exc

    async def _answer(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        model_id: str,
        request_chars: int,
        budget: int | None,
        host: hosts.Host,
        failed: list[str],
        deadline: asyncio.Timeout,
    ) -> Reply:
        """Read the answer up to its first output (the whole of it when not streamed); the
        first-byte `deadline` ends with the first output."""
        translator = Translator(
            call.model,
            context_window=models.context_window(model_id),
            request_chars=request_chars,
            thinking=budget is not None,
        )
        answer = _Answer(response, translator)
        head: list[neutral.Event] = []
        try:
            while not answer.ended and not head:  # up to the first output: an early error
                head.extend(await answer.read())  # can still fail over
            deadline.reschedule(None)
            while not call.stream and not answer.ended:
                head.extend(await answer.read())
        except _Failure as exc:
            answer.close()
            raise _before_first_byte(exc, self.block.name) from None
        except BaseException:  # cancelled (client gone, first-byte timeout): drop the connection
            answer.close()
            raise
        if not call.stream:
            answer.close()
        return Reply.of_events(
            _Events(answer, head, self.block.name), host=host.name, hosts_failed=tuple(failed)
        )

    def _error(
        self,
        response: aiohttp.ClientResponse,
        data: bytes,
        slot: tokens.TokenSlot,
        token: tokens.Token,
        host: hosts.Host,
        failed: list[str],
        agent_task_type: str | None,
    ) -> UpstreamError:
        status, headers = response.status, dict(response.headers)
        if status == 401 or (status == 403 and _invalid_token(data)):
            slot.reject(token)
        where = f" (at {host.name}" + (f"; failed first: {', '.join(failed)})" if failed else ")")
        if status == 400 and b"REQUEST_BODY_INVALID" in data:
            sent = [f for f in request.AGENT_FIELDS if f == "agentTaskType" and agent_task_type]
            fields = ", ".join(sent) if sent else "none of the optional agent fields"
            return UpstreamRejected(
                f"upstream {self.block.name} refused the request body (REQUEST_BODY_INVALID): "
                f"{_upstream_detail(data) or 'no detail'}; optional fields sent: {fields}"
                + (" (remove 'agent-task-type' from the block)" if sent else "")
                + where,
                status=400,
                provider=self.block.name,
            )
        error = classify_upstream(
            status,
            headers,
            data,
            provider=self.block.name,
            retry_after=retry_after_seconds(headers, data),
        )
        error.message += where
        return error


def _upstream_detail(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        return str(data.get("message") or "")[:200]
    return ""


def _default_token_file() -> str:
    """The IDE's token file, or the legacy location when only that one exists."""
    default, legacy = Path(DEFAULT_TOKEN_FILE).expanduser(), Path(LEGACY_TOKEN_FILE).expanduser()
    return LEGACY_TOKEN_FILE if not default.exists() and legacy.exists() else DEFAULT_TOKEN_FILE


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
    """The event-stream body of one answer, read as neutral events."""

    def __init__(self, response: aiohttp.ClientResponse, translator: Translator) -> None:
        self.response = response
        self.translator = translator
        self.decoder = Decoder()
        self.ended = False

    async def read(self) -> list[neutral.Event]:
        """The events the next network read completes (maybe none). Sets `ended` at the end."""
        if self.decoder.error is not None:
            raise self.decoder.error
        data = await self.response.content.readany()
        if not data:
            self.ended = True
            self.decoder.end()
            return []
        out: list[neutral.Event] = []
        for message in self.decoder.feed(data):
            out.extend(self.translator.feed(message))
        return out

    def close(self) -> None:
        if self.ended:
            self.response.release()
        else:
            self.response.close()


class _Events:
    """The answer's neutral events (`EventStream`): those read so far, then the rest as they
    arrive, then the closing ones (usage, finish)."""

    def __init__(self, answer: _Answer, head: list[neutral.Event], provider: str) -> None:
        self._answer = answer
        self._head = head
        self._provider = provider

    def __aiter__(self) -> AsyncIterator[neutral.Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[neutral.Event]:
        answer = self._answer
        for event in self._head:
            yield event
        try:
            while not answer.ended:
                for event in await answer.read():
                    yield event
        except _Failure as exc:
            raise StreamInterrupted(
                f"upstream {self._provider} stream broke: {_describe(exc)}",
                status=502,
                provider=self._provider,
            ) from None
        for event in answer.translator.last():
            yield event

    async def aclose(self) -> None:
        self._answer.close()
