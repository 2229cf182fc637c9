"""A pytest plugin for Being and its plugin authors (registered through the ``pytest11`` entry point).

Fixtures:

* ``being_plugin_manager`` - a fresh plugin manager with Being's hookspecs and no plugins loaded;
* ``being_registry`` - a fresh registry of every installed plugin;
* ``being_run_dir`` - an empty temporary run folder;
* ``being_testdata`` - ``$BEING_TESTDATA`` or ``../shared/testdata`` beside the working directory (fails when
  ``CI=true`` and it is missing, skips otherwise);
* ``being_run_stage`` - run one stage on a run folder and return its manifest entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


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


@pytest.fixture(scope="session")
def being_testdata() -> Path:
    found = find_testdata()
    if found is None:
        message = "../shared/testdata is missing (set BEING_TESTDATA to its path)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
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
