"""Kiro model names: the ids keyrail exposes, and the upstream `modelId` each client name means.

Owns: the exposed list (`kiro-` + upstream id with dots as dashes, as the reference proxies
name them), the alias rules (`kiro-`/`amazonq-` prefixes, dashes or dots, dated names, family
fallback for unknown Claude names) and each model's context window (for usage estimates).
Does not own: which of these a block serves (`models` / `excluded-models` / `prefix`, applied by
the catalog to whatever `KiroDriver.list_models` returns).
"""

from __future__ import annotations

import re

#: Upstream ids Kiro serves to every account.
UPSTREAM = (
    "auto",
    "claude-sonnet-4",
    "claude-sonnet-4.5",
    "claude-sonnet-4.6",
    "claude-haiku-4.5",
    "claude-opus-4.5",
    "claude-opus-4.6",
)


def exposed(upstream: str) -> str:
    """The name keyrail shows for an upstream id: `kiro-` + the id with dots as dashes."""
    return "kiro-" + upstream.replace(".", "-")


#: What `GET /v1/models` shows for a kiro block that lists no `models` when discovery fails.
EXPOSED = tuple(exposed(m) for m in UPSTREAM)

_PREFIXES = ("kiro-", "amazonq-")
_DATED = re.compile(r"-\d{8}$")
_MINOR = re.compile(r"-(\d)-(\d)$")


def upstream_id(name: str) -> str:
    """The `modelId` to send for a configured model name.

    `kiro-claude-sonnet-4-5`, `claude-sonnet-4-5`, `claude-sonnet-4-5-20250929` and
    `claude-sonnet-4.5` all mean `claude-sonnet-4.5`. An unknown Claude name falls back to its
    family; any other name goes upstream unchanged (accounts may have more models).
    """
    n = name.strip().lower()
    for prefix in _PREFIXES:
        if n.startswith(prefix):
            n = n[len(prefix) :]
    n = _MINOR.sub(r"-\1.\2", _DATED.sub("", n))
    if n in UPSTREAM:
        return n
    if "claude" not in n:
        return name
    if "haiku" in n:
        return "claude-haiku-4.5"
    if "opus" in n:
        return "claude-opus-4.6" if "4.6" in n else "claude-opus-4.5"
    if "3.7" in n or "3-7" in n:
        return "claude-3-7-sonnet-20250219"
    return "claude-sonnet-4.6" if "4.6" in n else "claude-sonnet-4.5"


def context_window(model_id: str) -> int:
    """Tokens of context, to turn `contextUsagePercentage` into an input-token estimate."""
    return 1_000_000 if model_id in ("claude-sonnet-4.6", "claude-opus-4.6") else 200_000
