"""Errors: one exception class per decision the proxy makes, and their OpenAI-shaped bodies.

Owns: the exception tree (which class means rotate, cool down, reject or disable), the mapping
of an upstream HTTP error response onto that tree (`classify_upstream`), and the JSON error
body every client sees. Does not own: what the scheduler does with a decision (scheduler.py),
nor how errors are written onto a stream (streaming.py).

    ProxyError                     anything keyrail answers with an error
      ConfigError                  the config file is wrong (file:line:col: message)
      DriverError                  a driver cannot be loaded, or cannot serve this endpoint (400)
      RequestError                 the client's request is wrong; no credential is touched
        AuthError                  401 invalid_api_key
        InvalidRequest             400 (or 413) about the request itself
        UnknownModel               404 model_not_found
        ModelNotAllowed            403 model_not_allowed: outside the client key's `models`
        ClientRateLimited          429 client_rate_limited: the client key's own limit, with
                                   Retry-After (not an upstream's cooldown: model_cooldown)
      NoCredential                 429 model_cooldown / 503 provider_unavailable, with retry_after
      UpstreamError                an upstream answered badly; the decision is the subclass
        RateLimited                429: cool the (credential, model) down for retry_after
        CredentialRejected         401/402/403: disable the credential for a while
        UpstreamUnavailable        408/5xx, connect or read timeout: brief cooldown, next one
        UpstreamRejected           400/413/422 about the request: back to the client, touch nothing
        StreamInterrupted          the stream broke after its first byte: end it, never replay
        ProviderDiscontinued       503: the service is gone for good; disable the credential
                                   until a reload, answer every later request at once
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> bytes:
    """The OpenAI error envelope: `{"error": {"message", "type", "code", "param"}}`."""
    return orjson.dumps({"error": {"message": message, "type": type, "code": code, "param": param}})


class ProxyError(Exception):
    """Base of every error keyrail answers with. Carries what the client will see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
            self.type = _TYPE_BY_STATUS.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            )
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


class ConfigError(ProxyError):
    """The configuration is invalid. `problems` holds `FILE:LINE:COL: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DriverError(ProxyError):
    """A driver could not be loaded, or cannot serve the endpoint asked of it."""

    status = 400
    type = "invalid_request_error"
    code = "unsupported_endpoint"


class RequestError(ProxyError):
    """The client's request is wrong. Goes straight back; no credential is touched."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InvalidRequest(RequestError):
    pass


class UnknownModel(RequestError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ModelNotAllowed(RequestError):
    """The client's key may not call this model (its `models` globs)."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ClientRateLimited(RequestError):
    """The client's key is over one of its own limits (rpm, tpm, daily-tokens,
    max-concurrent). 429 with `Retry-After`: when the window ends (1 s for concurrency)."""

    status = 429
    type = "rate_limit_error"
    code = "client_rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class NoCredential(ProxyError):
    """Every credential of the pool is cooling down or disabled; nothing was tried.

    429 `model_cooldown` when the soonest recovery is a quota cooldown, else
    503 `provider_unavailable`. `retry_after` is whole seconds until the soonest recovery.
    """

    def __init__(self, message: str, *, retry_after: int, quota: bool) -> None:
        status, code = (429, "model_cooldown") if quota else (503, "provider_unavailable")
        super().__init__(
            message,
            status=status,
            code=code,
            headers={"Retry-After": str(retry_after), "x-should-retry": "false"},
        )
        self.retry_after = retry_after


class UpstreamError(ProxyError):
    """An upstream answered with an error. The subclass is the decision.

    `body` is the upstream's own error body (relayed to the client when it is JSON),
    `upstream_headers` its headers; `provider` names the block for messages and metrics.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        provider: str = "",
        upstream_body: bytes = b"",
        upstream_headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=_code_for(status))
        self.provider = provider
        self.upstream_body = upstream_body
        self.upstream_headers: Mapping[str, str] = upstream_headers or {}
        self.retry_after = retry_after

    def body(self) -> bytes:
        """The client's error body, secrets masked: upstreams may quote the key they got, and
        this body also leaves as an in-band event once a stream has started."""
        from proxy.redact import REDACTOR  # here: redact.py imports config.py, which imports us

        # An OpenAI error object from the upstream is passed through as is: SDKs read its
        # fields. Any other shape (Kiro's `{"message": ...}`) is wrapped: the message has it.
        if self.upstream_body[:1] == b"{" and _is_openai_error(self.upstream_body):
            return REDACTOR.redact_bytes(self.upstream_body)
        return REDACTOR.redact_bytes(super().body())


class RateLimited(UpstreamError):
    """429: cool this (credential, model) down for `retry_after` (or backoff), try the next."""


class CredentialRejected(UpstreamError):
    """401/402/403: this credential is bad. Refresh once if the driver can, else disable it."""


class UpstreamUnavailable(UpstreamError):
    """408/5xx, a refused connection or a timeout: transient cooldown, next credential."""


class UpstreamRejected(UpstreamError):
    """The upstream says the request itself is wrong (400/413/422): back to the client."""


class StreamInterrupted(UpstreamError):
    """The upstream stream failed after its first byte. The stream ends; nothing is replayed."""


class ProviderDiscontinued(UpstreamError):
    """The upstream service was shut down for good (Roo Code Router's sunset answer).

    The credential is disabled until a reload (no cooldown that ends and retries, so no
    rotation storm), and every later request for its pool gets this 503 at once. The message
    says what happened and what to do; it is ours, not the upstream's body.
    """

    def __init__(self, message: str, *, provider: str = "", upstream_body: bytes = b"") -> None:
        super().__init__(message, status=503, provider=provider, upstream_body=upstream_body)
        self.code = "provider_discontinued"

    def body(self) -> bytes:
        return ProxyError.body(self)


def _code_for(status: int) -> str:
    if status == 401:
        return "invalid_api_key"
    if status in (402, 403):
        return "insufficient_quota"
    if status == 429:
        return "rate_limit_exceeded"
    if status == 404:
        return "model_not_found"
    if status >= 500 or status in (0, 408):
        return "upstream_error"
    return "invalid_request_error"


def _is_openai_error(data: bytes) -> bool:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def classify_upstream(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    retry_after: float | None = None,
) -> UpstreamError:
    """Map an upstream HTTP error response to the exception that decides what happens next.

    Drivers call this for any non-2xx answer; `retry_after` is the cooldown hint (seconds)
    the caller parsed, if any (see `proxy.retry_hints`).
    """
    text = body[:2000].decode("utf-8", "replace")
    message = f"upstream {provider} answered {status}"
    detail = _upstream_message(body)
    if detail:
        message = f"{message}: {detail}"
    kwargs: dict[str, Any] = {
        "status": status,
        "provider": provider,
        "upstream_body": body,
        "upstream_headers": headers,
        "retry_after": retry_after,
    }
    if 300 <= status < 400:
        # Redirects are not followed (the credential must not go to another host), and a bare
        # 3xx without its Location would mean nothing to the client: the upstream failed.
        kwargs.update(status=502, upstream_body=b"")
        return UpstreamUnavailable(
            f"upstream {provider} answered {status} (a redirect; keyrail does not follow them)",
            **kwargs,
        )
    if status == 429:
        return RateLimited(message, **kwargs)
    if status in (401, 402, 403):
        return CredentialRejected(message, **kwargs)
    if status == 408 or status >= 500:
        return UpstreamUnavailable(message, **kwargs)
    if status in (400, 413, 422) and _about_the_request(text):
        return UpstreamRejected(message, **kwargs)
    # Any other 4xx (a 404 for a model this credential cannot see, "model not supported"):
    # this credential cannot serve it, another in the pool may.
    return UpstreamUnavailable(message, **kwargs)


_MODEL_UNSUPPORTED = (
    "model_not_supported",
    "unsupported model",
    "not available for your plan",
    "not available for your account",
    "does not have access to model",
)


def _about_the_request(text: str) -> bool:
    """False when the 4xx is really about this credential's access to the model."""
    lowered = text.lower()
    return not any(marker in lowered for marker in _MODEL_UNSUPPORTED)


def _upstream_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if isinstance(data.get("message"), str):
            return str(data["message"])[:300]
    return ""
