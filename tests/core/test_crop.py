"""What ingest keeps of each frame: the face-following square (decided by the face tracker's ``locate``
action), the centred square, and frames whose pixels are not square or that carry a rotation."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import INGEST, config, prepare

from being_core.config import resolve
from being_core.errors import ConfigError, InputError, StageFailed
from being_core.ingest import face_square, ffmpeg_exe, probe
from being_core.pipeline import Pipeline


def _frame(path):
    """An image as an array, decoded by ffmpeg (the core has no image library)."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "gray", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8)


def test_the_square_holds_the_face_over_the_whole_clip():
    # a 100 px face that travels 60 px to the right: 2.2 faces + the travel, centred on where it went
    crop = face_square([(400, 300, 500, 400), (460, 300, 560, 400)], 1920, 1080, 2.2)
    assert (crop.mode, crop.side, crop.x, crop.y) == ("face", 280, 340, 196)
    # as large as the frame allows, moved inside it rather than shrunk
    crop = face_square([(0, 0, 300, 300)], 640, 480, 2.2)
    assert (crop.side, crop.x, crop.y) == (480, 0, 0)
    crop = face_square([(600, 400, 640, 480)], 640, 480, 2.2)
    assert (crop.side, crop.x + crop.side, crop.y + crop.side) == (176, 640, 480)


def test_the_default_crop_follows_the_face(toy_video, tmp_path, registry, caplog):
    root = tmp_path / "run"
    left = {"impl": "toy-full", "config": {"face": [0.0, 0.25, 0.25, 0.75]}}  # a 12x16 face at the left edge
    with caplog.at_level("INFO", logger="being.pipeline"):
        manifest = prepare(toy_video, root, registry, face_tracker=left)
    assert manifest.stages["ingest"]["crop"] == {"mode": "face", "x": 0, "y": 0, "side": 32, "frame_width": 48,
                                                 "frame_height": 32}
    assert ("ingest: the face-following crop keeps the 32x32 square at (0, 0) of the 48x32 frame "
            "(a face in 9 of 9 sampled frames)") in caplog.text
    assert manifest.stages["face_tracker:locate"]["metrics"] == {"frames": 9}
    assert len(json.loads((root / "crop" / "faces.json").read_text())["boxes"]) == 9
    # the kept square is the left one, not the centre
    left_crop = tmp_path / "left.jpg"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(toy_video), "-frames:v", "1", "-vf",
                    "crop=32:32:0:0", "-q:v", "2", str(left_crop)], check=True)
    ours, want = _frame(root / "ori_imgs" / "0.jpg").astype(int), _frame(left_crop).astype(int)
    assert np.abs(ours - want).mean() < 3
    # the same clip and tracker again: locate and ingest are cached
    with caplog.at_level("INFO", logger="being.pipeline"):
        caplog.clear()
        prepare(toy_video, root, registry, face_tracker=left)
    assert "face_tracker:locate 'toy-full': unchanged, skipped" in caplog.text


def test_no_face_in_the_sampled_frames_is_a_clear_error(toy_video, tmp_path, registry):
    root = tmp_path / "run"
    with pytest.raises(InputError) as err:
        prepare(toy_video, root, registry, face_tracker={"impl": "toy-full", "config": {"face": None}})
    assert str(err.value) == (f"no face found in any of the 9 frames sampled over {toy_video} (ingest.crop: face, "
                              f"which looks for the subject to crop around); check that the video shows a face, or "
                              f"keep the centre with ingest.crop: center")
    assert not (root / "ori_imgs").exists()


def test_the_face_crop_needs_a_tracker_that_locates(toy_video, tmp_path, registry):
    with pytest.raises(ConfigError) as err:
        prepare(toy_video, tmp_path / "run", registry, face_tracker={"impl": "toy-blind"})
    assert str(err.value) == ("toy config has 1 problem:\n  - ingest.crop: 'face' needs a face tracker that locates "
                              "faces, and face_tracker 'toy-blind' has no 'locate' action; set ingest.crop: center")
    with pytest.raises(ConfigError) as err:
        prepare(toy_video, tmp_path / "run", registry, face_tracker=None)
    assert "no stages.face_tracker is selected; select one, or set ingest.crop: center" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_failing_tracker_names_the_centre_crop(toy_video, tmp_path, registry):
    centre = resolve({"ingest": {**INGEST, "crop": "center"},
                      "stages": {"face_tracker": {"impl": "toy", "config": {"fail": True}}}}, registry, "toy config")
    with pytest.raises(StageFailed) as err:
        Pipeline(tmp_path / "run", centre, registry).prepare(toy_video)
    assert str(err.value) == (f"face_tracker 'toy' failed: ValueError: no face found in any of the 60 frames of "
                              f"ori_imgs/ (ingest kept the 32x32 square at (8, 0) of the 48x32 frame of {toy_video}; "
                              f"ingest.crop: face follows the subject instead)")


@pytest.mark.parametrize("kind", ["sar", "rotation"])
def test_non_square_pixels_and_rotation_are_applied_and_logged(kind, tmp_path, registry, caplog):
    video = tmp_path / f"{kind}.mp4"
    if kind == "sar":  # 24x32 stored, shown 48x32
        args = ["-f", "lavfi", "-i", "testsrc=size=24x32:rate=25:duration=2.4", "-vf", "setsar=2"]
    else:  # 32x48 stored, shown turned by 90 degrees: 48x32
        args = ["-f", "lavfi", "-i", "testsrc=size=32x48:rate=25:duration=2.4"]
    stored = tmp_path / "stored.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args, "-pix_fmt", "yuv420p", str(stored)], check=True)
    rotation = ["-display_rotation", "90"] if kind == "rotation" else []
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *rotation, "-i", str(stored), "-c", "copy", str(video)],
                   check=True)
    info = probe(video)
    assert info.display_size == (48, 32)
    plain = resolve({"ingest": {**INGEST, "size": None, "audio": "optional"},
                     "stages": {"face_tracker": {"impl": "toy"}}}, registry, "toy config")
    with caplog.at_level("INFO", logger="being.ingest"):
        manifest = Pipeline(tmp_path / "run", plain, registry).prepare(video)
    assert (manifest.data["dataset"]["width"], manifest.data["dataset"]["height"]) == (32, 32)
    expected = ("its pixels are not square (sample aspect ratio 2:1); frames are resampled to square pixels, "
                "24x32 becomes 48x32") if kind == "sar" else \
        "it carries a rotation of 90 degrees; frames are turned upright (48x32)"
    assert f"ingest: {kind}.mp4: {expected}" in caplog.text
    assert config(registry)  # the toy config still resolves
