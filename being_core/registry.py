"""The typed registry of stage implementations, filled by plugins through ``being_register_stages``."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache

from .errors import PluginError, UnknownImplementationError
from .stage import Stage, StageKind


@dataclass(frozen=True)
class Implementation:
    cls: type[Stage]
    distribution: str


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point whose module failed to import; it fails only a run that needs it."""

    entry_point: str
    distribution: str
    error: str

    def describe(self) -> str:
        return f"{self.distribution} (entry point '{self.entry_point}'): {self.error}"


@lru_cache(maxsize=1)
def _module_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(cls: type) -> str:
    """The installed distribution that ships ``cls`` (or its module name when not installed)."""
    top = cls.__module__.split(".")[0]
    owners = _module_owners().get(top)
    return owners[0] if owners else top


class Registry:
    """Implementations by (kind, name). ``add`` is for plugins, ``get`` for the core."""

    def __init__(self) -> None:
        self._impls: dict[tuple[StageKind, str], Implementation] = {}
        self.broken: list[BrokenPlugin] = []

    def add(self, cls: type[Stage], distribution: str | None = None) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise PluginError(f"registry.add() takes a Stage subclass, got {cls!r}")
        dist = distribution or distribution_of(cls)
        problems = cls.check_definition()
        if problems:
            raise PluginError(f"stage {cls.__qualname__} from {dist}: " + "; ".join(problems))
        key = (cls.kind, cls.name)
        if key in self._impls and self._impls[key].cls is not cls:
            other = self._impls[key].distribution
            raise PluginError(
                f"two plugins register {cls.kind} implementation '{cls.name}': {other} and {dist}; "
                f"uninstall one of them"
            )
        self._impls[key] = Implementation(cls, dist)

    def get(self, kind: StageKind | str, name: str) -> type[Stage]:
        return self.implementation(kind, name).cls

    def implementation(self, kind: StageKind | str, name: str) -> Implementation:
        kind = StageKind(kind)
        try:
            return self._impls[(kind, name)]
        except KeyError:
            raise UnknownImplementationError(
                str(kind), name, self.names(kind), [b.describe() for b in self.broken]
            ) from None

    def names(self, kind: StageKind | str) -> list[str]:
        kind = StageKind(kind)
        return sorted(name for (k, name) in self._impls if k == kind)

    def all(self) -> list[Implementation]:
        order = {k: i for i, k in enumerate(StageKind)}
        return sorted(self._impls.values(), key=lambda i: (order[i.cls.kind], i.cls.name))
