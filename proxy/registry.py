"""Driver registry: finds drivers through the `keyrail.drivers` entry-point group.

Owns: discovery (built-in drivers register exactly like third-party ones), loading only the
drivers a config names, refusing drivers written for another API major, and describing what
is installed (`keyrail plugins`). Does not own: what a driver is (driver.py) or how blocks are
validated (config.py asks `options_for`).

Tests and embedders can skip installed metadata: `Registry.from_classes({"name": Cls})`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from proxy.driver import API_VERSION, Driver
from proxy.errors import DriverError

if TYPE_CHECKING:
    from proxy.config import ProviderBlock

GROUP = "keyrail.drivers"
log = logging.getLogger("keyrail.registry")


@dataclass(frozen=True, slots=True)
class DriverInfo:
    name: str
    target: str  # "module:Class"
    distribution: str
    version: str


class Registry:
    """Name → driver class, loaded lazily from entry points (or given directly)."""

    def __init__(
        self,
        entry_points_by_name: Mapping[str, list[EntryPoint]] | None = None,
        classes: Mapping[str, type[Driver]] | None = None,
    ) -> None:
        self._eps = dict(entry_points_by_name or {})
        self._loaded: dict[str, type[Driver]] = dict(classes or {})

    @classmethod
    def discover(cls) -> Registry:
        by_name: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=GROUP):
            by_name.setdefault(ep.name, []).append(ep)
        return cls(by_name)

    @classmethod
    def from_classes(cls, classes: Mapping[str, type[Driver]]) -> Registry:
        return cls(classes=classes)

    def with_classes(self, classes: Mapping[str, type[Driver]]) -> Registry:
        """A copy that also knows these classes (tests add a driver beside the installed)."""
        return Registry(self._eps, {**self._loaded, **classes})

    def names(self) -> list[str]:
        return sorted(set(self._eps) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in self._eps or name in self._loaded

    def get(self, name: str) -> type[Driver]:
        """Load the driver class for a config key. Raises DriverError with the reason."""
        if name in self._loaded:
            return self._loaded[name]
        eps = self._eps.get(name)
        if not eps:
            raise DriverError(f"no driver named '{name}' is installed")
        distinct = {(_dist(ep), ep.value) for ep in eps}
        if len(distinct) > 1:
            owners = ", ".join(sorted(d for d, _ in distinct))
            raise DriverError(f"driver '{name}' is provided by several distributions: {owners}")
        try:
            loaded: Any = eps[0].load()
        except Exception as exc:
            raise DriverError(f"driver '{name}' failed to load: {exc}") from exc
        if not (isinstance(loaded, type) and issubclass(loaded, Driver)):
            raise DriverError(f"driver '{name}' ({eps[0].value}) is not a proxy.Driver subclass")
        major = str(getattr(loaded, "api_version", "")).split(".")[0]
        if major != API_VERSION.split(".")[0]:
            raise DriverError(
                f"driver '{name}' was written for driver API {loaded.api_version}, "
                f"keyrail speaks {API_VERSION}"
            )
        self._loaded[name] = loaded
        return loaded

    def options_for(self, name: str) -> tuple[Mapping[str, Any], frozenset[str], str] | None:
        """For config.py: a driver's extra keys, required keys and default base URL."""
        if name not in self:
            return None
        try:
            cls = self.get(name)
        except DriverError as exc:
            log.error("%s", exc)
            return None
        return cls.options, cls.required, cls.default_base_url

    def describe(self) -> list[DriverInfo]:
        """Every driver found, for `keyrail plugins`."""
        infos = []
        for name in self.names():
            for ep in self._eps.get(name, []):
                dist = ep.dist
                infos.append(
                    DriverInfo(
                        name, ep.value, dist.name if dist else "?", dist.version if dist else "?"
                    )
                )
            if name not in self._eps:
                cls = self._loaded[name]
                infos.append(DriverInfo(name, f"{cls.__module__}:{cls.__qualname__}", "-", "-"))
        return infos


class _OptionsLookup:
    """Adapter handed to config.py: callable for a name's options, plus `names()`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __call__(self, name: str) -> tuple[Mapping[str, Any], frozenset[str], str] | None:
        return self._registry.options_for(name)

    def names(self) -> Iterable[str]:
        return self._registry.names()

    def check_options(self, name: str, block: ProviderBlock) -> Sequence[str]:
        """The driver's errors in one of its blocks' options (`Driver.check_options`)."""
        try:
            return self._registry.get(name).check_options(block)
        except DriverError:
            return ()


def options_lookup(registry: Registry) -> _OptionsLookup:
    return _OptionsLookup(registry)


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist else "?"
