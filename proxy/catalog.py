"""Model catalog: client model id → the ordered targets that can serve it.

Owns: prefixes and `force-model-prefix`, aliases and `force-mapping`, `excluded-models` globs,
pools (one id served by several blocks or credentials), collisions, and the `/v1/models` list.
Built once per config (re)load; lookups on the hot path are one dict access.
Does not own: which target is tried next (scheduler.py), or discovering upstream models
(app.py asks drivers before building the catalog).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from proxy.config import ModelEntry, ProviderBlock, Settings
from proxy.driver import Credential
from proxy.errors import UnknownModel


@dataclass(frozen=True, slots=True)
class Target:
    """One way to serve a client model id: a credential of a block, and the upstream name."""

    provider: str
    driver: str
    credential: Credential
    upstream_model: str
    priority: int = 0
    force_mapping: bool = False
    disable_cooling: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """Everything that serves one client model id, in declaration order."""

    model: str
    targets: tuple[Target, ...]
    owned_by: str
    providers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exclusion:
    provider: str
    model: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Catalog:
    routes: Mapping[str, Route]
    created: int
    #: client id → the providers that all serve it (only ids served by more than one block)
    collisions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    excluded: tuple[Exclusion, ...] = ()
    _lower: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, model: str) -> Route:
        """The route for a client model id (exact, then case-insensitive), or UnknownModel."""
        route = self.routes.get(model)
        if route is None:
            exact = self._lower.get(model.lower())
            route = self.routes.get(exact) if exact else None
        if route is None:
            raise UnknownModel(
                f"The model '{model}' does not exist or is not served by this proxy. "
                "GET /v1/models lists the models you can use.",
                param="model",
            )
        return route

    def model_list(self) -> list[dict[str, object]]:
        """`/v1/models` data: sorted by id, OpenAI's shape."""
        return [
            {"id": mid, "object": "model", "created": self.created, "owned_by": r.owned_by}
            for mid, r in sorted(self.routes.items())
        ]


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(p) for p in pattern.lower().split("*"))
    return re.compile("^" + ".*".join(parts) + "$", re.IGNORECASE)


def excluded_by(model: str, patterns: Sequence[str]) -> str | None:
    """The first `excluded-models` glob (case-insensitive, `*` = anything) that matches."""
    for pattern in patterns:
        if _glob(pattern).match(model):
            return pattern
    return None


def build(
    settings: Settings,
    credentials: Mapping[str, Sequence[Credential]],
    discovered: Mapping[str, Sequence[str]],
    *,
    now: float | None = None,
) -> Catalog:
    """Build the catalog from the settings, each block's credentials, and discovered models.

    `credentials` and `discovered` are keyed by provider (block) name; `discovered` holds the
    upstream model names of blocks that list no `models`.
    """
    targets: dict[str, list[Target]] = {}
    providers: dict[str, list[str]] = {}
    excluded: list[Exclusion] = []
    for block in settings.providers:
        if block.disabled:
            continue
        entries = block.models or tuple(
            ModelEntry(name=n, alias=n) for n in discovered.get(block.name, ())
        )
        cooling_off = settings.disable_cooling or bool(block.disable_cooling)
        for entry in entries:
            pattern = excluded_by(entry.alias, block.excluded_models) or excluded_by(
                entry.name, block.excluded_models
            )
            if pattern:
                excluded.append(Exclusion(block.name, entry.alias, pattern))
                continue
            for client_id in _client_ids(block, entry.alias, settings.force_model_prefix):
                seen = providers.setdefault(client_id, [])
                if block.name not in seen:
                    seen.append(block.name)
                for cred in credentials.get(block.name, ()):
                    targets.setdefault(client_id, []).append(
                        Target(
                            provider=block.name,
                            driver=block.driver,
                            credential=cred,
                            upstream_model=entry.name,
                            priority=block.priority,
                            force_mapping=entry.force_mapping,
                            disable_cooling=cooling_off,
                        )
                    )
    routes = {
        mid: Route(mid, tuple(ts), providers[mid][0], tuple(providers[mid]))
        for mid, ts in targets.items()
    }
    collisions = {mid: tuple(ps) for mid, ps in providers.items() if len(ps) > 1 and mid in routes}
    lower: dict[str, str] = {}
    for mid in sorted(routes):
        lower.setdefault(mid.lower(), mid)
    return Catalog(
        routes=routes,
        created=int(now if now is not None else time.time()),
        collisions=collisions,
        excluded=tuple(excluded),
        _lower=lower,
    )


def _client_ids(block: ProviderBlock, alias: str, force_prefix: bool) -> list[str]:
    if not block.prefix:
        return [alias]
    ids = [f"{block.prefix}/{alias}"]
    if not force_prefix:
        ids.append(alias)
    return ids
