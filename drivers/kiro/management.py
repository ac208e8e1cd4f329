"""Kiro's small JSON calls beside the chat: profiles, the model list, usage limits.

Owns: `ListAvailableProfiles` (a login's profile ARN, for hosts that need one), the paginated
`ListAvailableModels`, and `getUsageLimits` read as a `Quota`, each with the bearer token and
a short timeout, and their answers checked for shape. Every failure is a `ManagementError`
whose message is one clear, secret-free line. Does not own: which host to ask or when
(driver.py, hosts.py), caching the answers (driver.py), token refresh (auth.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from proxy.driver import describe_failure
from proxy.quota import Quota

TIMEOUT = aiohttp.ClientTimeout(total=15)
ORIGIN = "AI_EDITOR"
#: Pages of `ListAvailableModels` followed at most (a loop guard, not a real limit).
MAX_PAGES = 20
_BODY_LIMIT = 1024 * 1024


class ManagementError(Exception):
    """A management call failed; the message says which and why, in one line."""


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str,
    proxy: str | None,
    params: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    what: str,
) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    try:
        async with session.request(
            method,
            url,
            params=params,
            data=orjson.dumps(body) if body is not None else None,
            headers=headers,
            proxy=proxy,
            allow_redirects=False,
            timeout=TIMEOUT,
        ) as response:
            data = await response.content.read(_BODY_LIMIT)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ManagementError(f"{what}: {describe_failure(exc)}") from None
    if status != 200:
        raise ManagementError(f"{what} answered {status}{_reason(data)}")
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise ManagementError(f"{what} answered something that is not a JSON object")
    return answer


def _reason(data: bytes) -> str:
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(answer, dict):
        return ""
    reason = answer.get("reason") or answer.get("message") or ""
    return f" ({str(reason)[:120]})" if reason else ""


async def profile_arn(
    session: aiohttp.ClientSession, bases: list[str], *, token: str, proxy: str | None
) -> str:
    """The login's first profile ARN, asking each management host in turn."""
    failures = []
    for base in bases:
        try:
            answer = await _call(session, "POST", f"{base}/ListAvailableProfiles", token=token,
                                 proxy=proxy, body={}, what="ListAvailableProfiles")  # fmt: skip
        except ManagementError as exc:
            failures.append(f"{_host(base)}: {exc}")
            continue
        for profile in answer.get("profiles") or ():
            if isinstance(profile, dict) and isinstance(profile.get("arn"), str):
                return str(profile["arn"])
        failures.append(f"{_host(base)}: no profile")
    raise ManagementError("; ".join(failures) or "no management host")


async def models(
    session: aiohttp.ClientSession,
    base: str,
    *,
    token: str,
    proxy: str | None,
    profile_arn: str | None,
) -> list[dict[str, Any]]:
    """Every page of `ListAvailableModels`: the model objects (each with a `modelId`)."""
    found: list[dict[str, Any]] = []
    next_token = ""
    for _ in range(MAX_PAGES):
        params = {"origin": ORIGIN}
        if profile_arn:
            params["profileArn"] = profile_arn
        if next_token:
            params["nextToken"] = next_token
        answer = await _call(session, "GET", f"{base}/ListAvailableModels", token=token,
                             proxy=proxy, params=params, what="ListAvailableModels")  # fmt: skip
        page = answer.get("models")
        if not isinstance(page, list):
            raise ManagementError("ListAvailableModels answered without a 'models' list")
        found.extend(m for m in page if isinstance(m, dict) and isinstance(m.get("modelId"), str))
        next_token = str(answer.get("nextToken") or "")
        if not next_token:
            return found
    return found


async def usage(
    session: aiohttp.ClientSession,
    base: str,
    *,
    token: str,
    proxy: str | None,
    profile_arn: str | None,
) -> Quota:
    """`getUsageLimits` for agentic requests, as used / limit / reset time."""
    params = {"origin": ORIGIN, "resourceType": "AGENTIC_REQUEST"}
    if profile_arn:
        params["profileArn"] = profile_arn
    answer = await _call(session, "GET", f"{base}/getUsageLimits", token=token, proxy=proxy,
                         params=params, what="getUsageLimits")  # fmt: skip
    return read_usage(answer)


def read_usage(answer: Mapping[str, Any]) -> Quota:
    """The agentic-request line of a usage answer (the first line when none is marked),
    with an active free trial's allowance added."""
    lines = [b for b in answer.get("usageBreakdownList") or () if isinstance(b, dict)]
    line = next((b for b in lines if b.get("resourceType") == "AGENTIC_REQUEST"), None)
    line = line or (lines[0] if lines else None)
    if line is None:
        raise ManagementError("getUsageLimits answered without a usage line")
    used = _number(line, "currentUsageWithPrecision", "currentUsage")
    limit = _number(line, "usageLimitWithPrecision", "usageLimit")
    if used is None or limit is None:
        raise ManagementError("getUsageLimits answered without usage and limit")
    trial = line.get("freeTrialInfo")
    if isinstance(trial, dict) and str(trial.get("freeTrialStatus", "")).upper() == "ACTIVE":
        used += _number(trial, "currentUsageWithPrecision", "currentUsage") or 0.0
        limit += _number(trial, "usageLimitWithPrecision", "usageLimit") or 0.0
    reset = line.get("nextDateReset") or answer.get("nextDateReset")
    resets_at = float(reset) if isinstance(reset, int | float) and reset > 0 else None
    if resets_at is not None and resets_at > 1e11:  # milliseconds
        resets_at /= 1000.0
    unit = str(line.get("displayName") or line.get("resourceType") or "requests")
    return Quota(used=used, limit=limit, resets_at=resets_at, unit=unit)


def _number(line: Mapping[str, Any], *names: str) -> float | None:
    for name in names:
        value = line.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _host(base: str) -> str:
    return base.split("://", 1)[-1]
