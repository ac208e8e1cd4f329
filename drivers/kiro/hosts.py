"""Kiro's hosts: where a block's requests go, in which order, and what each host insists on.

Owns: the host table (one row per host family, with its address, its `X-Amz-Target`, whether
it needs `profileArn` always or only for social logins), the API region (the `region` option,
else the profile ARN's region, else the token's SSO region mapped onto the two regions Kiro
serves), the management host, reading `base-url` / `base-urls` / `management-url`, which
answers mean "this host is gone, try the next" (connection errors, 404, 410, "retired"), and
remembering the host that last worked. Does not own: the HTTP calls (driver.py), the body
(request.py).

The table, in the order tried (kiro.md, December 2026):

    runtime        https://runtime.{region}.kiro.dev            profileArn always (400 without)
    codewhisperer  https://codewhisperer.us-east-1.amazonaws.com  X-Amz-Target; social only
    q              https://q.{region}.amazonaws.com              social only (retired 2026-05-15)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from yarl import URL

#: `profileArn` rules: sent on every request (resolved when the token has none), or only for
#: social (Google/GitHub) logins; IdC and Builder ID logins get 403 with it on the old hosts.
ALWAYS, SOCIAL_ONLY = "always", "social-only"
#: The only regions Kiro's own hosts serve; every EU SSO region maps to the EU one.
US, EU = "us-east-1", "eu-central-1"
MANAGEMENT = "https://management.{region}.kiro.dev"
#: How long a host that answered after an earlier one failed stays first in line.
REMEMBER_SECONDS = 600.0
_RETIRED_WORDS = ("retired", "deactivated", "decommissioned", "no longer available",
                  "no longer supported", "has moved")  # fmt: skip
_PLACES = ("endpoint", "host", "domain", "url", "region")


@dataclass(frozen=True, slots=True)
class Kind:
    """One row of the host table: a host family and its request rules."""

    name: str
    template: str  # the address, `{region}` filled with the API region
    target: str | None  # the `X-Amz-Target` header this host wants, if any
    profile_arn: str  # ALWAYS or SOCIAL_ONLY


TABLE: tuple[Kind, ...] = (
    Kind("runtime", "https://runtime.{region}.kiro.dev", None, ALWAYS),
    Kind(
        "codewhisperer",
        "https://codewhisperer.us-east-1.amazonaws.com",
        "AmazonCodeWhispererStreamingService.GenerateAssistantResponse",
        SOCIAL_ONLY,
    ),
    Kind("q", "https://q.{region}.amazonaws.com", None, SOCIAL_ONLY),
)
KINDS: Mapping[str, Kind] = {k.name: k for k in TABLE}
#: What a `base-url` on an unknown host (a relay, a fake) follows unless its entry says `kind`:
#: the rules every block had before the host table existed.
LEGACY = KINDS["q"]


@dataclass(frozen=True, slots=True)
class Host:
    """One address to try, with the rules of its row."""

    base: str  # no trailing slash
    kind: Kind

    @property
    def name(self) -> str:
        """How logs and headers name it: host[:port][/path], no scheme."""
        url = URL(self.base)
        port = "" if url.is_default_port() else f":{url.port}"
        path = url.path.rstrip("/")
        return f"{url.host}{port}{path}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One configured address: a table row (its address filled per region), or a URL."""

    kind: Kind
    url: str = ""  # "" → the row's own address

    def host(self, region: str) -> Host:
        base = self.url or self.kind.template.format(region=region)
        return Host(base.rstrip("/"), self.kind)


def kind_of(url: str) -> Kind:
    """The row a URL's host name belongs to; LEGACY for any other host."""
    host = (URL(url).host or "").lower()
    for kind in TABLE:
        if host.startswith(kind.name + ".") and (
            host.endswith(".kiro.dev") or host.endswith(".amazonaws.com")
        ):
            return kind
    return LEGACY


def read_entries(base_url: str, base_urls: object) -> tuple[Entry, ...]:
    """The block's addresses, in order: `base-url` alone, else `base-urls`, else the table.

    A `base-urls` item is a row name (`runtime`), a URL (its row read from the host name), or
    `{url: ..., kind: runtime}` for a relay. Raises ValueError saying what is wrong.
    """
    if base_url:
        return (Entry(kind_of(base_url), base_url),)
    if base_urls is None:
        return tuple(Entry(k) for k in TABLE)
    if isinstance(base_urls, str) or not isinstance(base_urls, Sequence) or not base_urls:
        raise ValueError("'base-urls' must be a non-empty list")
    entries = []
    for item in base_urls:
        if isinstance(item, str) and item in KINDS:
            entries.append(Entry(KINDS[item]))
        elif isinstance(item, str) and _is_url(item):
            entries.append(Entry(kind_of(item), item))
        elif isinstance(item, Mapping) and _is_url(item.get("url")):
            kind = item.get("kind")
            if kind is not None and kind not in KINDS:
                raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
            if set(item) - {"url", "kind"}:
                raise ValueError(f"a 'base-urls' item has only 'url' and 'kind', not {item!r}")
            url = str(item["url"])
            entries.append(Entry(KINDS[kind] if kind else kind_of(url), url))
        else:
            raise ValueError(
                f"'base-urls' item {item!r} is not a URL, a mapping with 'url', "
                f"or one of {', '.join(KINDS)}"
            )
    return tuple(entries)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def arn_region(arn: str) -> str:
    """The region of `arn:aws:codewhisperer:<region>:<account>:profile/<id>`, or ""."""
    parts = arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[0] == "arn" else ""


def serving_region(sso_region: str) -> str:
    """An SSO (auth) region mapped onto the two regions Kiro serves: EU → eu-central-1."""
    return EU if sso_region.lower().startswith("eu-") else US


def api_region(override: str, profile_arn: str, sso_region: str) -> str:
    """The region of the API hosts: the `region` option, else the profile ARN's, else the
    token's SSO region mapped. (The refresh keeps the token's own region: auth.py.)"""
    return override or arn_region(profile_arn) or serving_region(sso_region or US)


def management_bases(override: str, region: str) -> list[str]:
    """Where to ask for profiles and usage: `management-url`, else the management host of the
    API region, then of the other serving regions (a profile lives in one of them)."""
    if override:
        return [override.rstrip("/")]
    regions = list(dict.fromkeys((region, US, EU)))
    return [MANAGEMENT.format(region=r) for r in regions]


def moved(status: int, body: bytes) -> bool:
    """Whether an answer means "not here (any more)": try the next host, not the next key.

    404 and 410, or an error that says the endpoint (host, URL) is retired; a retired *model*
    ("model X is no longer supported") is about the request, not the host."""
    if status in (404, 410):
        return True
    if status < 400 or status == 429:
        return False
    text = body[:4000].decode("utf-8", "replace").lower()
    return any(word in text for word in _RETIRED_WORDS) and any(place in text for place in _PLACES)


class Memory:
    """The host that last answered after an earlier one failed, first in line for a while."""

    def __init__(
        self, seconds: float = REMEMBER_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self._working: dict[tuple[Host, ...], tuple[Host, float]] = {}

    def order(self, hosts: tuple[Host, ...]) -> tuple[Host, ...]:
        held = self._working.get(hosts)
        if held is None:
            return hosts
        host, until = held
        if self.clock() >= until:
            del self._working[hosts]
            return hosts
        return (host, *(h for h in hosts if h != host))

    def worked(self, hosts: tuple[Host, ...], host: Host) -> None:
        """`host` answered: remember it when it is not the table's first choice."""
        if host == hosts[0]:
            self._working.pop(hosts, None)
        else:
            self._working[hosts] = (host, self.clock() + self.seconds)
