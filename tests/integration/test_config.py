import pytest
import yaml

from being_core.config import RunConfig, apply_overrides, load, resolve, shipped_configs
from being_core.contracts import check_chain
from being_core.errors import ConfigError, UsageError


def test_every_shipped_config_keeps_every_promise(being_registry):
    for name, path in shipped_configs().items():
        resolved = load(name, being_registry)
        assert check_chain([rs.impl.cls for rs in resolved.stages.values()], being_registry) == [], name
        assert resolved.source == str(path)


def test_the_refiner_block_cpu_small_carries_commented_out_is_a_valid_config(being_registry, tmp_path):
    text = shipped_configs()["cpu-small"].read_text()
    block = [line for line in text.splitlines() if line.startswith("  # refiner:") or line.startswith("  #   ")]
    assert len(block) == 3, "cpu-small.yaml no longer carries the commented refiner block the docs point to"
    path = tmp_path / "cpu-small-refined.yaml"
    path.write_text(text.replace("\n".join(block), "\n".join(line.replace("# ", "", 1) for line in block)))
    resolved = load(path, being_registry)
    refiner = resolved.stages["refiner"]
    assert refiner.impl.cls.name == "unet" and refiner.config.steps == 500 and refiner.config.width == 16
    assert check_chain([rs.impl.cls for rs in resolved.stages.values()], being_registry) == []


def test_default_config_matches_the_built_in_defaults(being_registry):
    data = yaml.safe_load(shipped_configs()["default"].read_text())
    assert RunConfig.model_validate(data).ingest == RunConfig().ingest


def test_default_is_used_without_a_config(being_registry):
    resolved = load(None, being_registry)
    assert resolved.source.endswith("default.yaml")
    assert resolved.stages["face_tracker"].impl.cls.name == "mediapipe"


def test_all_problems_are_reported_at_once(being_registry, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "ingest": {"fps": -1, "colour": "yes"},
        "stages": {"audio_encoder": {"impl": "mell"},
                   "face_tracker": {"impl": "mediapipe", "config": {"n_exp": 0, "smoothe": 1}},
                   "teeth_segmenter": {"impl": "bright", "runner": "cloud"}},
    }))
    with pytest.raises(ConfigError) as err:
        load(path, being_registry)
    installed = ", ".join(being_registry.names("audio_encoder"))
    runners = ", ".join(r.cls.name for r in being_registry.runners())
    assert str(err.value) == "\n".join([
        f"{path} has 6 problems:",
        "  - ingest.fps: Input should be greater than or equal to 1",
        "  - ingest.colour: unknown key",
        "  - stages.face_tracker.config.n_exp: Input should be greater than or equal to 1",
        "  - stages.face_tracker.config.smoothe: unknown key",
        f"  - stages.audio_encoder.impl: unknown audio_encoder implementation 'mell'; installed: {installed}. "
        f"Install the plugin that provides it (see `being plugins`).",
        f"  - stages.teeth_segmenter.runner: unknown runner implementation 'cloud'; installed: {runners}. "
        f"Install the plugin that provides it (see `being plugins`).",
    ])


def test_unknown_stage_kind(being_registry):
    with pytest.raises(ConfigError) as err:
        resolve({"stages": {"lip_syncer": {"impl": "x"}}}, being_registry, "c.yaml")
    assert str(err.value).startswith("c.yaml has 1 problem:\n  - stages.lip_syncer.[key]: Input should be ")


def test_overrides_swap_the_audio_encoder_in_one_line(being_registry):
    data = apply_overrides({"stages": {"audio_encoder": {"impl": "mel"}}},
                           ["stages.audio_encoder.config.n_mels=40", "ingest.size=null", "stages.refiner=null"])
    assert data == {"stages": {"audio_encoder": {"impl": "mel", "config": {"n_mels": 40}}, "refiner": None},
                    "ingest": {"size": None}}
    resolved = resolve(data, being_registry)
    assert resolved.stages["audio_encoder"].config.n_mels == 40
    assert resolved.to_dict()["stages"]["audio_encoder"]["config"]["n_mels"] == 40


def test_bad_override_and_missing_file(being_registry, tmp_path):
    with pytest.raises(UsageError) as err:
        apply_overrides({}, ["stages.audio_encoder.impl"])
    assert str(err.value) == "--set expects KEY=VALUE, got 'stages.audio_encoder.impl'"
    with pytest.raises(UsageError) as err:
        load(tmp_path / "nope.yaml", being_registry)
    assert str(err.value).startswith(f"config file {tmp_path / 'nope.yaml'} does not exist; shipped configs: ")


def test_yaml_syntax_error_names_the_file(being_registry, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stages: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load(path, being_registry)
    assert str(err.value).startswith(f"{path} has 1 problem:\n  - not valid YAML: ")
