import json

import numpy as np
import pytest
from conftest import FAST_FACE, REPO, prepare

from being_core import StageReport, TeethSegmenter
from being_core.config import load
from being_core.errors import StageFailed
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.plugins import build_registry, get_plugin_manager

FACE = [f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()]


class Counting(TeethSegmenter):
    """Writes empty masks and counts its runs."""

    name = "counting"
    version = "1.0.0"
    runs = 0

    def run(self, ctx):
        type(self).runs += 1
        for i in range(ctx.dataset["n_frames"]):
            np.save(ctx.output(f"teeth_mask/{i}.npy"), np.zeros((4, 4), bool))
        return StageReport(metrics={"runs": type(self).runs})


class Undeclared(Counting):
    name = "undeclared"

    def run(self, ctx):
        super().run(ctx)
        ctx.output("notes.txt").write_text("not declared")
        return StageReport()


class Crashing(Counting):
    name = "crashing"

    def run(self, ctx):
        np.save(ctx.output("teeth_mask/0.npy"), np.ones((4, 4), bool))
        raise RuntimeError("out of teeth")


@pytest.fixture
def registry():
    registry = build_registry(get_plugin_manager())
    for cls in (Counting, Undeclared, Crashing):
        registry.add(cls, distribution="being-tests")
    Counting.runs = 0
    return registry


def run_prepare(video, root, registry, overrides=(), force=()):
    resolved = load(REPO / "configs" / "default.yaml", registry, [*FACE, *overrides])
    return Pipeline(root, resolved, registry, force=set(force)).prepare(video)


def finished(root):
    return {k: v.get("finished") for k, v in Manifest.load(root).stages.items()}


def test_manifest_records_every_stage(prepared_face5):
    data = json.loads((prepared_face5 / "being.json").read_text())
    assert data["kind"] == "being.manifest" and data["schema_version"] == 1
    assert data["dataset"]["n_frames"] == 122
    audio = data["stages"]["audio_encoder"]
    assert audio["impl"] == "mel" and audio["version"] == "1.0.0" and audio["distribution"] == "being-audio-mel"
    assert audio["info"]["dim"] == 80 and audio["info"]["window"] == 16 and audio["info"]["file"] == "aud_mel.npy"
    assert list(audio["inputs"]) == ["aud.wav"] and list(audio["outputs"]) == ["aud_mel.npy"]
    assert len(data["stages"]["teeth_segmenter"]["outputs"]) == 122
    assert (prepared_face5 / "config.yaml").exists()


def test_unchanged_stages_are_skipped_and_force_redoes_one(face5, prepared_copy, registry):
    overrides = ["stages.teeth_segmenter.impl=counting"]
    run_prepare(face5, prepared_copy, registry, overrides)
    assert Counting.runs == 1
    before = finished(prepared_copy)
    run_prepare(face5, prepared_copy, registry, overrides)
    assert finished(prepared_copy) == before and Counting.runs == 1
    run_prepare(face5, prepared_copy, registry, overrides, force=["audio_encoder"])
    after = finished(prepared_copy)
    assert after["audio_encoder"] != before["audio_encoder"]
    assert {k: v for k, v in after.items() if k != "audio_encoder"} == {
        k: v for k, v in before.items() if k != "audio_encoder"}


def test_config_change_reruns_only_that_stage(face5, prepared_copy, registry):
    before = finished(prepared_copy)
    run_prepare(face5, prepared_copy, registry, ["stages.audio_encoder.config.n_mels=40",
                                                 "stages.teeth_segmenter.impl=bright"])
    after = finished(prepared_copy)
    assert after["audio_encoder"] != before["audio_encoder"]
    assert after["face_tracker"] == before["face_tracker"] and after["teeth_segmenter"] == before["teeth_segmenter"]
    assert np.load(prepared_copy / "aud_mel.npy").shape == (122, 16, 40)


def test_a_damaged_output_is_redone(face5, prepared_copy, registry):
    (prepared_copy / "aud_mel.npy").write_bytes(b"damaged")
    before = finished(prepared_copy)
    run_prepare(face5, prepared_copy, registry, ["stages.teeth_segmenter.impl=bright"])
    assert finished(prepared_copy)["audio_encoder"] != before["audio_encoder"]
    assert np.load(prepared_copy / "aud_mel.npy").shape == (122, 16, 80)


def test_failed_stage_keeps_nothing_and_the_run_resumes(face5, prepared_copy, registry):
    masks_before = {p.name: p.read_bytes() for p in (prepared_copy / "teeth_mask").glob("*.npy")}
    with pytest.raises(StageFailed) as err:
        run_prepare(face5, prepared_copy, registry, ["stages.teeth_segmenter.impl=crashing"])
    assert str(err.value) == "teeth_segmenter 'crashing' failed: RuntimeError: out of teeth"
    assert {p.name: p.read_bytes() for p in (prepared_copy / "teeth_mask").glob("*.npy")} == masks_before
    assert Manifest.load(prepared_copy).stages["teeth_segmenter"]["status"] == "running"
    before = finished(prepared_copy)
    run_prepare(face5, prepared_copy, registry, ["stages.teeth_segmenter.impl=counting"])
    after = finished(prepared_copy)
    assert Counting.runs == 1
    assert {k: after[k] for k in ("ingest", "face_tracker", "audio_encoder")} == {
        k: before[k] for k in ("ingest", "face_tracker", "audio_encoder")}
    assert np.load(prepared_copy / "teeth_mask" / "0.npy").shape == (4, 4)


def test_undeclared_output_fails_the_stage(face5, prepared_copy, registry):
    with pytest.raises(StageFailed) as err:
        run_prepare(face5, prepared_copy, registry, ["stages.teeth_segmenter.impl=undeclared"])
    assert str(err.value) == ("teeth_segmenter 'undeclared' wrote files it does not declare: notes.txt; "
                              "nothing was kept")
    assert not (prepared_copy / "notes.txt").exists()


def test_missing_result_fails_the_stage(face5, prepared_copy, registry, monkeypatch):
    from being_core import pipeline, runners

    class Silent(runners.Runner):
        def launch(self, request, root, stage, options, progress, registry=None):
            (root / ".being" / "stages" / "teeth_segmenter" / "work" / "out").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(pipeline, "get_runner", lambda name: Silent())
    with pytest.raises(StageFailed) as err:
        run_prepare(face5, prepared_copy, registry, ["stages.teeth_segmenter.impl=counting",
                                                     "stages.au_extractor=null"], force=["teeth_segmenter"])
    result = prepared_copy / ".being" / "stages" / "teeth_segmenter" / "work" / "result.json"
    assert str(err.value) == f"teeth_segmenter 'counting' left no result ({result}); nothing it wrote was kept"


def test_subprocess_runner_gives_the_same_features(face5, prepared_copy, registry):
    reference = np.load(prepared_copy / "aud_mel.npy")
    run_prepare(face5, prepared_copy, registry, ["stages.audio_encoder.runner=subprocess",
                                                 "stages.teeth_segmenter.impl=bright"], force=["audio_encoder"])
    entry = Manifest.load(prepared_copy).stages["audio_encoder"]
    assert entry["runner"] == "subprocess"
    np.testing.assert_array_equal(np.load(prepared_copy / "aud_mel.npy"), reference)


def test_subprocess_timeout_stops_the_stage(face5, prepared_copy, registry):
    with pytest.raises(StageFailed) as err:
        run_prepare(face5, prepared_copy, registry, ["stages.face_tracker.runner=subprocess",
                                                     "stages.face_tracker.runner_options.timeout_s=0.5"],
                    force=["face_tracker"])
    assert str(err.value).startswith("face_tracker 'mediapipe' exceeded its timeout of 0.5 s and was stopped")


def test_example_plugin_selected_by_config(prepared_face5):
    entry = Manifest.load(prepared_face5).stages["teeth_segmenter"]
    assert (entry["impl"], entry["distribution"]) == ("bright", "being-teeth-bright")
    masks = [np.load(prepared_face5 / "teeth_mask" / f"{i}.npy") for i in range(122)]
    assert all(m.dtype == bool and m.shape == (512, 512) for m in masks)
    assert sum(m.any() for m in masks) > 10  # the speaker shows teeth in many frames


def test_train_needs_a_prepared_run(tmp_path, registry):
    from being_core.errors import InputError

    resolved = load(REPO / "configs" / "default.yaml", registry)
    with pytest.raises(InputError) as err:
        Pipeline(tmp_path, resolved, registry).train()
    assert str(err.value) == f"{tmp_path} is not a prepared run folder (no being.json); run `being prepare` first"


def test_prepare_without_audio_skips_the_encoder(being_testdata, tmp_path):
    manifest = prepare(being_testdata / "videos" / "liveportrait_d0_noaudio.mp4", tmp_path / "run",
                       [*FACE, "ingest.audio=optional"])
    assert "audio_encoder" not in manifest.stages and manifest.stages["face_tracker"]["status"] == "done"
