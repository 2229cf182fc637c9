"""The promises between stages, checked for a whole chain before anything runs.

Each stage class declares the files it reads (``inputs``) and writes (``outputs``) and the named
capabilities it needs (``requires``) and keeps (``provides``, see :data:`being_core.stage.CAPABILITIES`).
Walking the stages in order, every requirement must be met by ingest or an earlier stage; every unmet one
is reported at once, with the installed implementations that would meet it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import UnknownImplementationError
from .registry import Registry
from .stage import STAGE_ORDER, Stage, StageKind

#: What ingest writes into every run folder.
INGEST_FILES = ("ori_imgs/*.jpg", "aud.wav")


def covers(provided: str, wanted: str) -> bool:
    """Whether a provided path or pattern (``aud_mel.npy``, ``parsing/*.png``) satisfies a wanted pattern."""
    return provided == wanted or (fnmatch.fnmatchcase(provided, wanted) and provided.count("/") == wanted.count("/"))


@dataclass
class Provided:
    """Files and capabilities available at some point of a chain."""

    files: list[str] = field(default_factory=lambda: list(INGEST_FILES))
    capabilities: set[str] = field(default_factory=set)

    def add(self, files: Iterable[str], capabilities: Iterable[str] = ()) -> None:
        self.files += list(files)
        self.capabilities |= set(capabilities)

    def missing(self, files: Iterable[str], capabilities: Iterable[str]) -> tuple[list[str], list[str]]:
        """(files, capabilities) of those asked for that are not available, in declaration order."""
        return ([p for p in files if not any(covers(have, p) for have in self.files)],
                [c for c in capabilities if c not in self.capabilities])


def _name(cls: type[Stage[Any]]) -> str:
    return f"{cls.kind} '{cls.name}'"


def providers(registry: Registry, before: StageKind, files: list[str], capabilities: list[str]) -> list[str]:
    """Installed implementations of kinds before ``before`` that provide all of ``files`` and ``capabilities``."""
    found = []
    for impl in registry.all():
        cls = impl.cls
        if STAGE_ORDER.index(cls.kind) >= STAGE_ORDER.index(before):
            continue
        own = Provided([], set())
        own.add(writes(cls), cls.provides)
        if own.missing(files, capabilities) == ([], []):
            found.append(_name(cls))
    return found


def unmet(cls: type[Stage[Any]], provided: Provided, registry: Registry, action: str = "run") -> str | None:
    """The one-line problem when ``cls`` (running ``action``) needs something ``provided`` lacks, else None."""
    files, capabilities = provided.missing(cls.files(action)[0], cls.requires)
    if not files and not capabilities:
        return None
    who = providers(registry, cls.kind, files, capabilities)
    hint = f"{', '.join(who)} would" if who else "no installed implementation of an earlier stage does"
    needs = [*files, *(f"capability {c}" for c in capabilities)]
    return (f"stages.{cls.kind}: {_name(cls)} needs {', '.join(needs)}, which no stage before "
            f"{cls.kind if action == 'run' else action} provides; {hint}")


def check_chain(chain: list[type[Stage[Any]]], registry: Registry, provided: Provided | None = None,
                has_audio: bool = True) -> list[str]:
    """Problems of running ``chain`` (implementations in stage order) after ``provided`` (ingest by default).

    Each stage's declared outputs and capabilities become available to the stages after it.
    """
    provided = provided or Provided()
    if not has_audio:
        provided.files = [f for f in provided.files if f != "aud.wav"]
    problems = []
    for cls in chain:
        if cls.kind == StageKind.AUDIO_ENCODER and not has_audio:
            continue
        problem = unmet(cls, provided, registry)
        if problem:
            problems.append(problem)
        provided.add(writes(cls), cls.provides)
    return problems


def writes(cls: type[Stage[Any]]) -> list[str]:
    """What a stage may write for the stages after it: the outputs of its run and of its actions (a trainer's
    replay, which the core runs before a refiner)."""
    return [*cls.outputs, *(p for act in cls.actions.values() for p in act.outputs)]


def provided_by_run(stages: dict[str, Any], registry: Registry) -> Provided:
    """What a run folder's finished stages provide (``being.json``'s ``stages``): each implementation's
    declared outputs and capabilities when it is installed, else the files it recorded."""
    provided = Provided()
    for kind in STAGE_ORDER:
        entry = stages.get(str(kind))
        if not entry or entry.get("status") != "done":
            continue
        try:
            cls = registry.get(kind, entry["impl"])
        except UnknownImplementationError:  # no longer installed: what it wrote is all we know
            provided.add(entry.get("outputs", {}))
            continue
        provided.add([*writes(cls), *entry.get("outputs", {})], cls.provides)
    return provided
