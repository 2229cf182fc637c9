"""The pipeline with the real plugins on a real clip (the core's behaviour is tested in tests/core)."""

import json

import numpy as np
import pytest
from conftest import FAST_FACE, prepare

from being_core.config import load
from being_core.errors import StageFailed
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry

FACE = [f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()]


def test_manifest_records_every_stage(prepared_face5):
    data = json.loads((prepared_face5 / "being.json").read_text())
    assert data["kind"] == "being.manifest" and data["schema_version"] == 1
    assert data["dataset"]["n_frames"] == 122 and data["dataset"]["val_start"] == 110
    audio = data["stages"]["audio_encoder"]
    assert audio["impl"] == "mel" and audio["version"] == "1.1.0" and audio["distribution"] == "being-audio-mel"
    assert audio["info"]["dim"] == 80 and audio["info"]["window"] == 16 and audio["info"]["file"] == "aud_mel.npy"
    assert list(audio["inputs"]) == ["aud.wav"] and list(audio["outputs"]) == ["aud_mel.npy"]
    assert len(data["stages"]["teeth_segmenter"]["outputs"]) == 122
    assert (prepared_face5 / "config.yaml").exists()


def test_the_face_trackers_split_is_the_dataset_facts_split(prepared_face5):
    val = json.loads((prepared_face5 / "transforms_val.json").read_text())["frames"]
    train = json.loads((prepared_face5 / "transforms_train.json").read_text())["frames"]
    assert [f["img_id"] for f in train] == list(range(110)) and [f["img_id"] for f in val] == list(range(110, 122))


def test_example_plugin_selected_by_config(prepared_face5):
    entry = Manifest.load(prepared_face5).stages["teeth_segmenter"]
    assert (entry["impl"], entry["distribution"]) == ("bright", "being-teeth-bright")
    masks = [np.load(prepared_face5 / "teeth_mask" / f"{i}.npy") for i in range(122)]
    assert all(m.dtype == bool and m.shape == (512, 512) for m in masks)
    assert sum(m.any() for m in masks) > 10  # the speaker shows teeth in many frames


def test_subprocess_runner_gives_the_same_features(face5, prepared_copy):
    reference = np.load(prepared_copy / "aud_mel.npy")
    registry = load_registry()
    resolved = load(None, registry, [*FACE, "stages.audio_encoder.runner=subprocess",
                                     "stages.teeth_segmenter.impl=bright"])
    Pipeline(prepared_copy, resolved, registry, force={"audio_encoder"}).prepare(face5)
    entry = Manifest.load(prepared_copy).stages["audio_encoder"]
    assert entry["runner"] == "subprocess"
    np.testing.assert_array_equal(np.load(prepared_copy / "aud_mel.npy"), reference)


def test_subprocess_timeout_stops_a_real_stage(face5, tmp_path):
    with pytest.raises(StageFailed) as err:
        prepare(face5, tmp_path / "run", [*FACE, "stages.face_tracker.runner=subprocess",
                                          "stages.face_tracker.runner_options.timeout_s=0.5"])
    assert str(err.value).startswith("face_tracker 'mediapipe' exceeded its timeout of 0.5 s and was stopped")


def test_prepare_without_audio_skips_the_encoder(being_testdata, tmp_path):
    manifest = prepare(being_testdata / "videos" / "liveportrait_d0_noaudio.mp4", tmp_path / "run",
                       [*FACE, "ingest.audio=optional"])
    assert "audio_encoder" not in manifest.stages and manifest.stages["face_tracker"]["status"] == "done"
