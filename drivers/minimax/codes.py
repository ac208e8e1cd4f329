"""MiniMax's error codes → the proxy's decisions (protocols/minimax.md §5 and M1).

Owns: finding a MiniMax error in an answer (a non-zero `base_resp.status_code` inside an HTTP
200, or `(NNNN)` at the end of an OpenAI/Anthropic-style error message) and turning its code
into the exception that decides what happens next. Does not own: reading the answer
(driver.py, chunks.py) or the quota window a 2056 waits for (quota.py supplies it).

    1039 token limit, 1041 connection limit, 2045 rate growth limit,
    1002 rate limit, 1028/1030 plan quota (LIKELY)   → 429 RateLimited (short backoff)
    2056 usage limit of the 5-hour window             → 429 RateLimited until the window ends
    1004 not authorized, 2049 invalid API key         → 401 CredentialRejected (disabled)
    1008 insufficient balance                         → 402 CredentialRejected (disabled)
    1026 / 1027 input / output sensitive content      → 400 UpstreamRejected, content_filter
    1042 invisible characters, 2013 invalid params    → 400 UpstreamRejected
    2061 model not on this plan (LIKELY)              → 403 UpstreamUnavailable (next credential)
    1001 timeout                                      → 504 UpstreamUnavailable
    1000, 1024, 1033 and any other code               → 500/502 UpstreamUnavailable
A 400 goes back to the client and cools nothing; none of these is ever a success.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.errors import (
    CredentialRejected,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)

RATE = frozenset({1002, 1028, 1030, 1039, 1041, 2045})
WINDOW_SPENT = 2056
DEAD = {1004: 401, 2049: 401, 1008: 402}
CONTENT_FILTER = frozenset({1026, 1027})
BAD_REQUEST = frozenset({1042, 2013})
NOT_ON_PLAN = 2061

_MEANING = {
    1000: "unknown error", 1001: "request timeout", 1002: "rate limit",
    1004: "not authorized", 1008: "insufficient balance", 1024: "internal error",
    1026: "input flagged as sensitive content", 1027: "output flagged as sensitive content",
    1028: "plan quota exhausted", 1030: "plan quota exhausted", 1033: "system error",
    1039: "token rate limit", 1041: "connection limit", 1042: "too many invisible characters",
    2013: "invalid parameters", 2045: "rate growth limit", 2049: "invalid API key",
    2056: "usage limit of the 5-hour window exceeded", 2061: "model not available on this plan",
}  # fmt: skip
_TRAILING_CODE = re.compile(r"\((\d{4})\)\s*$")


def base_resp_error(data: Any) -> tuple[int, str] | None:
    """(code, message) when a parsed answer carries a non-zero `base_resp.status_code`."""
    if not isinstance(data, dict):
        return None
    base = data.get("base_resp")
    if not isinstance(base, dict):
        return None
    code = base.get("status_code")
    if not isinstance(code, int) or isinstance(code, bool) or code == 0:
        return None
    return code, str(base.get("status_msg") or "")[:300]


def code_in_error_body(body: bytes) -> tuple[int, str] | None:
    """(code, message) from an HTTP error body: `base_resp`, or `… (2013)` in `error.message`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = base_resp_error(data)
    if found is not None:
        return found
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str):
        match = _TRAILING_CODE.search(message)
        if match:
            return int(match.group(1)), message[:300]
    return None


def error_for(
    code: int, detail: str, *, provider: str, window_ends_in: float | None = None
) -> UpstreamError:
    """The decision for MiniMax error `code`. `window_ends_in`: seconds until the quota window
    ends, when known (2056 cools until then; unknown: the scheduler's backoff)."""
    meaning = _MEANING.get(code, "error")
    message = f"upstream {provider} answered MiniMax error {code} ({meaning})"
    if detail:
        message = f"{message}: {detail}"
    if code in RATE:
        return RateLimited(message, status=429, provider=provider)
    if code == WINDOW_SPENT:
        return RateLimited(message, status=429, provider=provider, retry_after=window_ends_in)
    if code in DEAD:
        return CredentialRejected(message, status=DEAD[code], provider=provider)
    if code in CONTENT_FILTER or code in BAD_REQUEST:
        error = UpstreamRejected(message, status=400, provider=provider)
        if code in CONTENT_FILTER:
            error.code = "content_filter"
        return error
    if code == NOT_ON_PLAN:
        return UpstreamUnavailable(message, status=403, provider=provider)
    if code == 1001:
        return UpstreamUnavailable(message, status=504, provider=provider)
    return UpstreamUnavailable(message, status=500 if code in (1000, 1024, 1033) else 502,
                               provider=provider)  # fmt: skip
