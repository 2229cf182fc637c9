"""The typed registry that plugins fill: stage implementations and runners, each by name."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import PluginError, UnknownImplementationError
from .runners import Runner
from .stage import Stage, StageKind


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


def _checked(cls: Any, base: type[Any], method: str, noun: str, distribution: str | None) -> str:
    """The distribution of a class a plugin registers, after checking it is a ``base`` written correctly."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"registry.{method}() takes a {base.__name__} subclass, got {cls!r}")
    dist = distribution or distribution_of(cls)
    declared: Any = cls  # a Stage or Runner subclass: both check their own definition
    problems: list[str] = declared.check_definition()
    if problems:
        raise PluginError(f"{noun} {cls.__qualname__} from {dist}: " + "; ".join(problems))
    return dist


class Registry:
    """Implementations by (kind, name) and runners by name. ``add*`` is for plugins, the rest for the core."""

    def __init__(self) -> None:
        self._impls: dict[tuple[StageKind, str], Implementation] = {}
        self._runners: dict[str, RunnerImplementation] = {}
        self.broken: list[BrokenPlugin] = []

    # --- for plugins ---------------------------------------------------------------------------

    def add(self, cls: type[Stage[Any]], distribution: str | None = None) -> None:
        """Register a stage implementation (a subclass of one of the kinds in :mod:`being_core.stage`)."""
        dist = _checked(cls, Stage, "add", "stage", distribution)
        self._put(self._impls, (cls.kind, cls.name), Implementation(cls, dist),
                  f"{cls.kind} implementation '{cls.name}'")

    def add_runner(self, cls: type[Runner[Any]], distribution: str | None = None) -> None:
        """Register a runner (a subclass of :class:`being_core.runners.Runner`)."""
        dist = _checked(cls, Runner, "add_runner", "runner", distribution)
        self._put(self._runners, cls.name, RunnerImplementation(cls, dist), f"runner '{cls.name}'")

    @staticmethod
    def _put(table: dict[Any, Any], key: Any, entry: Implementation | RunnerImplementation, what: str) -> None:
        """Add ``entry``; the same class twice is harmless, two classes under one name are an error."""
        if key in table and table[key].cls is not entry.cls:
            raise PluginError(f"two plugins register {what}: {table[key].distribution} and {entry.distribution}; "
                              f"uninstall one of them")
        table[key] = entry

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
