"""The stage contract, checked for every registered implementation (built-in and third-party alike)."""

import json

import pytest

from being_core.manifest import matches_any
from being_core.plugins import load_registry
from being_core.protocol import StageResult
from being_core.stage import CAPABILITIES, PREPARE_STAGES, Resources, StageConfig
from being_core.testing import unbounded_settings

IMPLEMENTATIONS = load_registry().all()
IDS = [f"{i.cls.kind}-{i.cls.name}" for i in IMPLEMENTATIONS]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=IDS)
def test_declaration(impl, tmp_path):
    """What the registry does not check: a summary for `being plugins`, a config the contract test can use,
    capabilities that someone provides, and an image tag of the implementation's own version."""
    cls = impl.cls
    assert cls.summary(), "the class docstring's first line is shown by `being plugins`"
    cls.Config.model_validate(cls.contract_config(tmp_path))  # raises when the test config is stale
    assert cls.Config is not StageConfig or not cls.test_config, "a config type of its own, from the generic"
    providers = {c for i in IMPLEMENTATIONS for c in i.cls.provides}
    assert set(cls.requires) <= providers, "every required capability has an installed provider"
    assert set(cls.requires) | set(cls.provides) <= set(CAPABILITIES), "capabilities are documented"
    assert cls.image() == f"being/{cls.slug()}:{cls.version}"
    assert unbounded_settings(cls.Config) == [], "every numeric setting has a sane range"
    needs = cls.resources(cls.Config.model_validate(cls.contract_config(tmp_path)))
    assert isinstance(needs, Resources) and needs.cpus > 0 and needs.gpus >= 0, "what a scheduler must reserve"


@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS if i.cls.kind in PREPARE_STAGES],
                         ids=[x for x, i in zip(IDS, IMPLEMENTATIONS) if i.cls.kind in PREPARE_STAGES])
def test_runs_on_a_real_clip(impl, prepared_copy, being_run_stage, tmp_path_factory):
    cls = impl.cls
    config = cls.contract_config(tmp_path_factory.mktemp("assets"))
    entry = being_run_stage(prepared_copy, str(cls.kind), cls.name, config, force=True)
    assert entry["status"] == "done" and entry["impl"] == cls.name and entry["version"] == cls.version
    outputs = list(entry["outputs"])
    assert all(matches_any(rel, cls.outputs) for rel in outputs)
    assert all(any(matches_any(rel, (p,)) for rel in outputs) for p in cls.outputs)
    assert all((prepared_copy / rel).is_file() for rel in outputs)
    work = prepared_copy / ".being" / "stages" / str(cls.kind)
    result = StageResult.model_validate_json((work / "work" / "result.json").read_text())
    assert result.ok and result.kind == "being.stage-result" and result.schema_version == 2
    request = json.loads((work / "request.json").read_text())
    assert request["kind"] == "being.stage-request" and request["impl"] == cls.name
    assert all(not p.startswith("/") for p in request["inputs"]), "paths are relative to the run folder"
    assert not (work / "work" / "out").exists(), "published outputs leave nothing behind"
    assert json.loads(json.dumps(entry["metrics"])) == result.metrics  # recorded once, as the stage reported
    n = json.loads((prepared_copy / "being.json").read_text())["dataset"]["n_frames"]
    per_frame = [p for p in cls.outputs if "*" in p]
    for pattern in per_frame:
        assert sum(matches_any(rel, (pattern,)) for rel in outputs) == n, f"{pattern}: one file per frame"
