"""A pytest plugin for Being and its plugin authors (registered through the ``pytest11`` entry point).

Fixtures:

* ``being_plugin_manager`` - a fresh plugin manager with Being's hookspecs and no plugins loaded;
* ``being_registry`` - a fresh registry of every installed plugin;
* ``being_run_dir`` - an empty temporary run folder;
* ``being_testdata`` - ``$BEING_TESTDATA`` or ``../shared/testdata`` beside the working directory (fails when
  ``CI=true`` and it is missing, skips otherwise);
* ``being_run_stage`` - run one stage on a run folder and return its manifest entry.

Helpers: :func:`unbounded_settings` lists the numeric settings of a config model that lack a lower or an upper
bound (every number a user can set should have a sane range, so ``fps=1e308`` fails validation);
:func:`missing` skips a test whose prerequisite is absent, or fails it under ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest
from pydantic import BaseModel


def unbounded_settings(model: type[BaseModel]) -> list[str]:
    """Numeric fields of ``model`` (also inside tuples and optionals) without both a lower and an upper bound."""
    import typing

    import annotated_types as at

    def numbers(annotation: Any, metadata: list[Any], path: str) -> list[str]:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            return numbers(args[0], [*metadata, *_constraints(args[1:])], path)
        if origin is tuple:
            return [p for i, a in enumerate(args) if a is not Ellipsis for p in numbers(a, [], f"{path}[{i}]")]
        if args:  # X | None
            return [p for a in args if a is not type(None) for p in numbers(a, metadata, path)]
        if annotation in (int, float):
            low = any(isinstance(m, (at.Ge, at.Gt)) for m in metadata)
            high = any(isinstance(m, (at.Le, at.Lt)) for m in metadata)
            return [] if low and high else [path]
        return []

    return [p for name, field in model.model_fields.items()
            for p in numbers(field.annotation, list(field.metadata), name)]


def _constraints(items: tuple[Any, ...]) -> list[Any]:
    """The annotated-types constraints in ``Annotated`` extras (a pydantic ``Field`` carries its own)."""
    from pydantic.fields import FieldInfo

    out: list[Any] = []
    for item in items:
        out.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return out


@pytest.fixture
def being_plugin_manager():
    from .plugins import get_plugin_manager

    return get_plugin_manager(load_entry_points=False)


@pytest.fixture
def being_registry():
    from .plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager())


@pytest.fixture
def being_run_dir(tmp_path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    return root


def find_testdata() -> Path | None:
    env = os.environ.get("BEING_TESTDATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "testdata"]
    return next((c for c in candidates if (c / "MANIFEST.md").is_file()), None)


def missing(message: str, in_ci: str | None = None) -> NoReturn:
    """A test's prerequisite is absent: skip it with ``message``, or, under ``CI=true`` (where everything a test
    needs must be there), fail it with ``in_ci`` (``message`` when not given)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(in_ci or message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def being_testdata() -> Path:
    found = find_testdata()
    if found is None:
        missing("../shared/testdata is missing (set BEING_TESTDATA to its path)")
    return found


@pytest.fixture
def being_run_stage(being_registry):
    """``being_run_stage(root, kind, impl, config=None, runner="inprocess", force=False)`` runs one stage
    of a prepared run folder through the real pipeline and returns its ``being.json`` entry."""
    from .config import resolve
    from .pipeline import Pipeline
    from .stage import StageKind

    def run(root: Path, kind: str, impl: str, config: dict[str, Any] | None = None, runner: str = "inprocess",
            force: bool = False, registry=None) -> dict[str, Any] | None:
        registry = registry or being_registry
        resolved = resolve({"stages": {kind: {"impl": impl, "config": config or {}, "runner": runner}}},
                           registry, "test config")
        pipeline = Pipeline(root, resolved, registry, force={kind} if force else set())
        return pipeline.run_one(StageKind(kind))

    return run
