"""Promises between stages, checked for the whole chain before anything runs."""

from __future__ import annotations

import pytest
from conftest import config, prepare

from being_core.contracts import check_chain, covers
from being_core.errors import ConfigError
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline


def test_covers_matches_patterns_and_files_at_the_same_depth():
    assert covers("aud_mel.npy", "aud_*.npy") and covers("parsing/*.png", "parsing/*.png")
    assert not covers("face/aud_x.npy", "aud_*.npy") and not covers("bc.png", "bc.jpg")


def test_a_tracker_that_writes_only_landmarks_is_rejected_before_anything_runs(toy_video, tmp_path, registry):
    resolved = config(registry, face_tracker={"impl": "toy"})
    chain = [rs.impl.cls for rs in resolved.stages.values()]
    assert check_chain(chain, registry) == [
        "stages.trainer: trainer 'toy' needs track_params.json, capability dataset:split, which no stage before "
        "trainer provides; face_tracker 'toy-full' would"]
    with pytest.raises(ConfigError) as err:
        Pipeline(tmp_path / "run", resolved, registry).prepare(toy_video, train=True)
    assert str(err.value).startswith("toy config has 1 problem:\n  - stages.trainer: trainer 'toy' needs ")
    assert not (tmp_path / "run").exists()


def test_every_unmet_promise_is_reported_at_once(registry):
    resolved = config(registry, face_tracker=None, audio_encoder=None)
    chain = [rs.impl.cls for rs in resolved.stages.values()]
    assert check_chain(chain, registry) == [
        "stages.trainer: trainer 'toy' needs face/landmarks.npy, track_params.json, aud_*.npy, capability "
        "dataset:split, which no stage before trainer provides; no installed implementation of an earlier "
        "stage does"]


def test_train_checks_what_the_run_folder_holds(toy_video, tmp_path, registry):
    root = tmp_path / "run"
    prepare(toy_video, root, registry, face_tracker={"impl": "toy"}, trainer=None)
    with pytest.raises(ConfigError) as err:
        Pipeline(root, config(registry), registry).train()
    assert "stages.trainer: trainer 'toy' needs track_params.json, capability dataset:split" in str(err.value)
    assert "trainer" not in Manifest.load(root).stages


def test_a_kind_promise_cannot_be_dropped():
    from being_core import FaceTracker

    class Partial(FaceTracker):
        name = "partial"
        version = "1.0.0"
        outputs = ("face/landmarks.npy",)

    assert Partial.check_definition() == [
        "drops outputs its kind promises: face/confidence.npy, ori_imgs/*.lms"]


def test_reads_info_must_name_an_earlier_kind():
    from being_core import StageKind, TeethSegmenter

    class Peeking(TeethSegmenter):
        name = "peeking"
        version = "1.0.0"
        reads_info = (StageKind.TRAINER,)

    assert Peeking.check_definition() == [
        "reads_info names <StageKind.TRAINER: 'trainer'>, which is not an earlier stage kind"]


def test_a_refiner_needs_a_trainer_that_hands_over_its_frames(toy_video, tmp_path, registry):
    """The toy trainer renders no frames for a refiner: a selected refiner is refused before anything runs."""
    resolved = config(registry, refiner={"impl": "unet"})
    chain = [rs.impl.cls for rs in resolved.stages.values()]
    assert check_chain(chain, registry) == [
        "stages.refiner: refiner 'unet' needs refiner/replay/*.mkv, capability trainer:frames, which no stage "
        "before refiner provides; trainer 'gaussian-avatar' would"]
    with pytest.raises(ConfigError):
        Pipeline(tmp_path / "run", resolved, registry).prepare(toy_video, train=True)
    assert not (tmp_path / "run").exists()


def test_handing_frames_over_takes_the_replay_and_score_actions():
    from being_core import Trainer

    class Half(Trainer):
        name = "half"
        version = "1.0.0"
        outputs = ("avatar/model.bin",)
        provides = ("trainer:frames",)

    assert Half.check_definition() == ["provides trainer:frames but has no replay, score action"]
