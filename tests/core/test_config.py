"""Configs: shipped ones by name, files by path, every problem reported at once."""

from __future__ import annotations

import pytest

from being_core.config import RunConfig, apply_overrides, find_config, load, resolve, shipped_configs
from being_core.errors import ConfigError, UsageError


def test_shipped_configs_are_package_data_selectable_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is read from the checkout or the working directory
    names = shipped_configs()
    assert {"default", "cpu-small", "docker"} <= set(names)
    assert find_config("cpu-small") == names["cpu-small"] == find_config("cpu-small.yaml")
    assert find_config(None) == names["default"]
    assert all(path.is_file() for path in names.values())


def test_a_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu-small").write_text("stages: {}\n")
    assert find_config("cpu-small").resolve() == tmp_path / "cpu-small"


def test_a_missing_config_is_an_error_never_an_empty_one(tmp_path, registry):
    with pytest.raises(UsageError) as err:
        load(tmp_path / "nope.yaml", registry)
    shipped = ", ".join(shipped_configs())
    assert str(err.value) == f"config file {tmp_path / 'nope.yaml'} does not exist; shipped configs: {shipped}"
    with pytest.raises(UsageError) as err:
        load("cpu-smal", registry)
    assert str(err.value) == f"config file cpu-smal does not exist; shipped configs: {shipped}"


def test_every_problem_is_reported_at_once(registry):
    data = {"ingest": {"fps": 0}, "stages": {
        "audio_encoder": {"impl": "toy", "config": {"valeu": 1}, "runner": "slurm"},
        "teeth_segmenter": {"impl": "nope"},
        "trainer": {"impl": "toy", "runner": "subprocess", "runner_options": {"memory": "2g"}}}}
    with pytest.raises(ConfigError) as err:
        resolve(data, registry, "my.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "my.yaml has 5 problems:"
    assert lines[1] == "  - ingest.fps: Input should be greater than or equal to 1"
    assert lines[2] == "  - stages.audio_encoder.config.valeu: unknown key"
    runners = ", ".join(r.cls.name for r in registry.runners())
    assert lines[3] == (f"  - stages.audio_encoder.runner: unknown runner implementation 'slurm'; installed: {runners}. "
                        "Install the plugin that provides it (see `being plugins`).")
    assert lines[4].startswith("  - stages.teeth_segmenter.impl: unknown teeth_segmenter implementation 'nope'")
    assert lines[5] == ("  - stages.trainer.runner_options.memory: not an option of runner 'subprocess' (its options: "
                        "timeout_s)")


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["stages.audio_encoder.config.n_mels=64", "stages.refiner=null", "a.b=[1, 2]"])
    assert data == {"stages": {"audio_encoder": {"config": {"n_mels": 64}}, "refiner": None}, "a": {"b": [1, 2]}}
    with pytest.raises(UsageError) as err:
        apply_overrides({}, ["novalue"])
    assert str(err.value) == "--set expects KEY=VALUE, got 'novalue'"


def test_the_saved_config_has_every_default(registry):
    resolved = resolve({"stages": {"audio_encoder": {"impl": "toy", "runner": "toy-thread"}}}, registry)
    data = resolved.to_dict()
    assert data["ingest"]["val_split"] == 11
    assert data["stages"]["audio_encoder"]["config"] == {"value": 0.0, "fail": False, "undeclared": False,
                                                         "pause": 0.0, "face": [1 / 3, 1 / 4, 2 / 3, 3 / 4]}
    assert data["stages"]["audio_encoder"]["runner_options"] == {"thread_name": "toy-worker"}
    assert RunConfig.model_validate(data)


def test_absurd_numbers_are_refused(registry):
    with pytest.raises(ConfigError) as err:
        resolve({"ingest": {"fps": 1e308, "size": 100000}}, registry, "c.yaml")
    assert str(err.value) == ("c.yaml has 2 problems:\n  - ingest.fps: Input should be less than or equal to 120\n"
                              "  - ingest.size: Input should be less than or equal to 4096")


def test_every_core_number_has_a_range(registry):
    """The ingest settings and every runner's options; the contract test checks each stage's config."""
    from typing import Annotated

    from pydantic import BaseModel, Field

    from being_core.config import IngestConfig
    from being_core.testing import unbounded_settings

    class Loose(BaseModel):
        a: int = Field(1, ge=0)
        b: tuple[Annotated[float, Field(gt=0, le=1)], float] = (0.5, 2.0)
        c: float | None = Field(None, ge=0, le=1)
        d: str = "text"

    assert unbounded_settings(Loose) == ["a", "b[1]"]
    assert unbounded_settings(IngestConfig) == []
    for runner in registry.runners():
        assert unbounded_settings(runner.cls.Options) == [], runner.cls.name


def test_an_audio_shift_changes_what_ingest_decodes_and_none_keeps_earlier_runs_keys():
    from being_core.config import IngestConfig

    plain = IngestConfig().decoding()
    assert "audio_shift_ms" not in plain  # runs prepared before the setting existed keep their cache
    assert IngestConfig(audio_shift_ms=-90).decoding() == {**plain, "audio_shift_ms": -90.0}
    assert IngestConfig(val_split=5).decoding() == plain
