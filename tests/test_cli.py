"""The exact text and exit codes users see."""

import os
import subprocess
import sys

import pytest

from being_core.errors import EXIT_INPUT, EXIT_OK, EXIT_USAGE


def being(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "being_core", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_plugins_lists_implementations():
    proc = being("plugins")
    assert proc.returncode == EXIT_OK
    assert "mediapipe" in proc.stdout and "mel" in proc.stdout and "being-teeth-bright" in proc.stdout


def test_config_validate_reports_problems(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  audio_encoder: {impl: mel, config: {n_mel: 3}}\n")
    proc = being("config", "validate", "-c", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr == f"ERROR: {path} has 1 problem:\n  - stages.audio_encoder.config.n_mel: unknown key\n"


def test_config_show_applies_overrides():
    proc = being("config", "show", "--set", "stages.audio_encoder.config.n_mels=64")
    assert proc.returncode == EXIT_OK
    assert "n_mels: 64" in proc.stdout and "impl: mediapipe" in proc.stdout


def test_prepare_a_file_that_is_not_a_video(being_testdata, tmp_path):
    path = being_testdata / "MANIFEST.md"
    proc = being("prepare", str(path), "-o", str(tmp_path / "run"), "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == f"ERROR: {path} is not a video ffmpeg can read (ffmpeg: invalid data)\n"
    assert not (tmp_path / "run").exists()


def test_train_an_unprepared_folder(tmp_path):
    proc = being("train", str(tmp_path), "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == (f"ERROR: {tmp_path} is not a prepared run folder (no being.json); "
                           f"run `being prepare` first\n")


def test_unknown_force_stage(being_testdata, tmp_path):
    proc = being("prepare", str(being_testdata / "videos" / "videoretalking_face5.mp4"), "-o", str(tmp_path / "r"),
                 "--force", "teeth", "-q")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("ERROR: --force got unknown stage(s): teeth; use ingest, face_tracker, ")


@pytest.mark.parametrize("args", [["stage", "/nonexistent/request.json"]])
def test_stage_request_missing(args):
    proc = being(*args, "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == "ERROR: stage request /nonexistent/request.json does not exist\n"


def test_prepare_end_to_end_with_the_cli(being_testdata, tmp_path):
    run = tmp_path / "run"
    video = being_testdata / "videos" / "liveportrait_d0_noaudio.mp4"
    proc = being("prepare", str(video), "-o", str(run), "-q", "--set", "stages.face_tracker=null")
    assert proc.returncode == EXIT_INPUT and "has no audio stream" in proc.stderr
    proc = being("prepare", str(video), "-o", str(run), "-q", "--no-audio",
                 "--set", "stages.face_tracker.config.iterations=40", "--set", "stages.face_tracker.config.focal_factors=[2.0]")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert len(list(run.glob("ori_imgs/*.lms"))) == 78
    assert (run / ".being" / "log.txt").read_text().count("face_tracker 'mediapipe': running") == 1


def test_docker_runner_without_a_daemon_fails_before_anything_runs(being_testdata, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    proc = being("prepare", str(being_testdata / "videos" / "videoretalking_face5.mp4"), "-o", str(tmp_path / "r"),
                 "-q", "--set", "stages.audio_encoder.runner=docker")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("ERROR: cannot reach the Docker daemon (")
    assert proc.stderr.endswith("or choose runner: inprocess\n")
    assert not (tmp_path / "r").exists()
