"""The typed registry that plugins fill: stage implementations and runners, each by name."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import PluginError, UnknownImplementationError
from .stage import Stage, StageKind

if TYPE_CHECKING:
    from .runners import Runner


@dataclass(frozen=True)
class Implementation:
    cls: type[Stage[Any]]
    distribution: str


@dataclass(frozen=True)
class RunnerImplementation:
    cls: type[Runner[Any]]
    distribution: str


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or to register; it fails only a run that needs it."""

    entry_point: str
    distribution: str
    error: str

    def describe(self) -> str:
        return f"{self.distribution} (entry point '{self.entry_point}'): {self.error}"


@lru_cache(maxsize=1)
def _module_owners() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def distribution_of(cls: type) -> str:
    """The installed distribution that ships ``cls`` (or its module name when not installed)."""
    top = cls.__module__.split(".")[0]
    owners = _module_owners().get(top)
    return owners[0] if owners else top


class Registry:
    """Implementations by (kind, name) and runners by name. ``add*`` is for plugins, the rest for the core."""

    def __init__(self) -> None:
        self._impls: dict[tuple[StageKind, str], Implementation] = {}
        self._runners: dict[str, RunnerImplementation] = {}
        self.broken: list[BrokenPlugin] = []

    # --- for plugins ---------------------------------------------------------------------------

    def add(self, cls: type[Stage[Any]], distribution: str | None = None) -> None:
        """Register a stage implementation (a subclass of one of the kinds in :mod:`being_core.stage`)."""
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

    def add_runner(self, cls: type[Runner[Any]], distribution: str | None = None) -> None:
        """Register a runner (a subclass of :class:`being_core.runners.Runner`)."""
        from .runners import Runner

        if not (isinstance(cls, type) and issubclass(cls, Runner)):
            raise PluginError(f"registry.add_runner() takes a Runner subclass, got {cls!r}")
        dist = distribution or distribution_of(cls)
        problems = cls.check_definition()
        if problems:
            raise PluginError(f"runner {cls.__qualname__} from {dist}: " + "; ".join(problems))
        if cls.name in self._runners and self._runners[cls.name].cls is not cls:
            raise PluginError(f"two plugins register runner '{cls.name}': {self._runners[cls.name].distribution} "
                              f"and {dist}; uninstall one of them")
        self._runners[cls.name] = RunnerImplementation(cls, dist)

    # --- for the core --------------------------------------------------------------------------

    def get(self, kind: StageKind | str, name: str) -> type[Stage[Any]]:
        return self.implementation(kind, name).cls

    def implementation(self, kind: StageKind | str, name: str) -> Implementation:
        kind = StageKind(kind)
        try:
            return self._impls[(kind, name)]
        except KeyError:
            raise UnknownImplementationError(str(kind), name, self.names(kind), self._broken()) from None

    def names(self, kind: StageKind | str) -> list[str]:
        kind = StageKind(kind)
        return sorted(name for (k, name) in self._impls if k == kind)

    def all(self) -> list[Implementation]:
        order = {k: i for i, k in enumerate(StageKind)}
        return sorted(self._impls.values(), key=lambda i: (order[i.cls.kind], i.cls.name))

    def runner(self, name: str) -> RunnerImplementation:
        try:
            return self._runners[name]
        except KeyError:
            raise UnknownImplementationError("runner", name, sorted(self._runners), self._broken()) from None

    def runners(self) -> list[RunnerImplementation]:
        return [self._runners[name] for name in sorted(self._runners)]

    def _broken(self) -> list[str]:
        return [b.describe() for b in self.broken]

    # --- isolation between plugins -------------------------------------------------------------

    def snapshot(self) -> tuple[dict, dict]:
        return dict(self._impls), dict(self._runners)

    def restore(self, snapshot: tuple[dict, dict]) -> None:
        self._impls, self._runners = dict(snapshot[0]), dict(snapshot[1])
