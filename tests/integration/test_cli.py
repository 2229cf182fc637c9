"""The real command line on real clips with the real plugins."""

import os
import subprocess
import sys

from being_core.errors import EXIT_OK, EXIT_USAGE


def being(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "being_core", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_prepare_end_to_end_with_the_cli(being_testdata, tmp_path):
    run = tmp_path / "run"
    video = being_testdata / "videos" / "liveportrait_d0_noaudio.mp4"
    proc = being("prepare", str(video), "-o", str(run), "-q", "--set", "stages.face_tracker=null")
    assert proc.returncode == 3 and "has no audio stream" in proc.stderr
    proc = being("prepare", str(video), "-o", str(run), "--no-audio",
                 "--set", "stages.face_tracker.config.iterations=40", "--set", "stages.face_tracker.config.focal_factors=[2.0]")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert len(list(run.glob("ori_imgs/*.lms"))) == 78
    assert (run / ".being" / "log.txt").read_text().count("face_tracker 'mediapipe': running") == 1
    assert (run / ".being" / "log.txt").read_text().count("face_tracker:locate 'mediapipe': running") == 1
    # mediapipe's native log lines (TFLite, absl) stay off the console
    assert "XNNPACK" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert proc.stdout.splitlines() == [f"done: {run}", f"next: being train {run}"]


def test_a_tracker_that_writes_only_landmarks_fails_validation_naming_the_trainers_inputs(tmp_path):
    """A third-party face tracker that keeps only its kind's promises, with the real default trainer."""
    module = tmp_path / "being_lm_only.py"
    module.write_text(
        "from being_core import FaceTracker, hookimpl\n"
        "class LandmarksOnly(FaceTracker):\n"
        "    '''Landmarks, confidence and .lms, nothing else.'''\n"
        "    name = 'landmarks-only'\n    version = '1.0.0'\n"
        "@hookimpl\ndef being_register_stages(registry):\n    registry.add(LandmarksOnly)\n")
    info = tmp_path / "being_lm_only-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: being-lm-only\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[being]\nlm-only = being_lm_only\n")
    env_path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "being_core", "config", "validate", "-c", "default",
                           "--set", "stages.face_tracker.impl=landmarks-only"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": env_path})
    assert proc.returncode == EXIT_USAGE
    lines = proc.stderr.splitlines()
    assert lines[0].endswith("default.yaml has 3 problems:")
    assert lines[1] == ("  - stages.au_extractor: au_extractor 'landmarks' needs capability landmarks:facemesh-478, "
                        "which no stage before au_extractor provides; face_tracker 'mediapipe' would")
    assert lines[2] == ("  - stages.teeth_segmenter: teeth_segmenter 'landmarks' needs capability "
                        "landmarks:facemesh-478, which no stage before teeth_segmenter provides; face_tracker "
                        "'mediapipe' would")
    assert lines[3] == ("  - stages.trainer: trainer 'gaussian-avatar' needs parsing/*.png, torso_imgs/*.png, "
                        "bc.jpg, track_params.pt, capability landmarks:facemesh-478, capability "
                        "dataset:reference-layout, capability dataset:split, which no stage before trainer "
                        "provides; face_tracker 'mediapipe' would")
