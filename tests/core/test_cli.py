"""The exact text and exit codes users see, from the real ``being`` command, with the toy plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import INGEST, TOY_STAGES

from being_core.errors import EXIT_INPUT, EXIT_OK, EXIT_USAGE


def being(*args, cwd=None, columns="200"):
    env = {**os.environ, "COLUMNS": columns, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "being_core", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def toy_config(tmp_path, **stages):
    import yaml

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"ingest": INGEST, "stages": {**TOY_STAGES, **stages}}))
    return path


def test_plugins_piped_prints_whole_rows_that_grep_finds():
    proc = being("plugins", columns="40")
    assert proc.returncode == EXIT_OK
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["stage", "name", "version", "distribution", "gpu", "image", "what", "it", "does"]
    toy = next(r for r in rows if r.startswith("teeth_segmenter") and " toy " in r)
    assert toy.split()[:5] == ["teeth_segmenter", "toy", "1.0.0", "being-toy", "being/teeth-toy:1.0.0"]
    assert toy.endswith("Empty masks; can fail or write an undeclared file on request.")
    assert any(r.split()[:2] == ["toy-thread", "being-toy"] for r in rows)


def test_plugins_json_lists_stages_runners_and_capabilities():
    proc = being("plugins", "--json")
    data = json.loads(proc.stdout)
    full = next(i for i in data["implementations"] if i["kind"] == "face_tracker" and i["name"] == "toy-full")
    assert full["provides"] == ["dataset:split"] and full["distribution"] == "being-toy"
    assert {"inprocess", "subprocess", "toy-thread"} <= {r["name"] for r in data["runners"]}


def test_config_validate_rejects_a_tracker_that_writes_only_landmarks(tmp_path):
    path = toy_config(tmp_path, face_tracker={"impl": "toy"})
    proc = being("config", "validate", "-c", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr == (f"ERROR: {path} has 1 problem:\n  - stages.trainer: trainer 'toy' needs "
                           "track_params.json, capability dataset:split, which no stage before trainer provides; "
                           "face_tracker 'toy-full' would\n")


def test_config_validate_accepts_the_shipped_configs_by_name():
    for name, stages in (("default", 5), ("cpu-small", 4), ("docker", 5)):
        proc = being("config", "validate", "-c", name)
        assert proc.returncode == EXIT_OK, proc.stderr
        assert proc.stdout.endswith(f"{name}.yaml: valid ({stages} stages selected)\n")


def test_config_show_applies_overrides():
    proc = being("config", "show", "-c", "cpu-small", "--set", "stages.audio_encoder.config.n_mels=64")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "n_mels: 64" in proc.stdout and "size: 128" in proc.stdout and "val_split: 11" in proc.stdout


def test_quiet_before_or_after_the_command(toy_video, tmp_path):
    config = toy_config(tmp_path)
    for args in (["-q", "prepare"], ["prepare", "-q"]):
        run = tmp_path / "-".join(args)
        proc = being(*args, str(toy_video), "-o", str(run), "-c", str(config))
        assert proc.returncode == EXIT_OK, proc.stderr
        assert (proc.stdout, proc.stderr) == ("", "")
        assert "teeth_segmenter 'toy': running (inprocess runner)" in (run / ".being" / "log.txt").read_text()


def test_run_ends_with_the_metrics_the_video_and_the_next_command(toy_video, tmp_path):
    """The whole job through the real command, one stage on the toy plugin's third-party runner."""
    run = tmp_path / "run"
    config = toy_config(tmp_path, teeth_segmenter={"impl": "toy", "runner": "toy-thread",
                                                   "runner_options": {"thread_name": "cli-worker"}})
    proc = being("run", str(toy_video), "-o", str(run), "-c", str(config))
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.splitlines() == [
        f"done: {run}", "held-out metrics (toy): val_frames 10, score 1.5", f"video: {run / 'avatar/val.mp4'}",
        f"next: being render {run} --audio new.wav -o says.mp4"]
    manifest = json.loads((run / "being.json").read_text())
    assert manifest["stages"]["teeth_segmenter"]["runner"] == "toy-thread"
    runs = [json.loads(line) for line in (tmp_path / "toy-runs.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["thread"]) for r in runs] == [
        ("face_tracker", "MainThread"), ("audio_encoder", "MainThread"), ("teeth_segmenter", "cli-worker"),
        ("trainer", "MainThread")]


def test_prepare_a_file_that_is_not_a_video(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video")
    proc = being("prepare", str(path), "-o", str(tmp_path / "run"), "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == f"ERROR: {path} is not a video ffmpeg can read (ffmpeg: invalid data)\n"
    assert not (tmp_path / "run").exists()


def test_train_an_unprepared_folder(tmp_path):
    proc = being("train", str(tmp_path), "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == (f"ERROR: {tmp_path} is not a prepared run folder (no being.json); "
                           f"run `being prepare` first\n")


def test_unknown_force_stage(toy_video, tmp_path):
    proc = being("prepare", str(toy_video), "-o", str(tmp_path / "r"), "--force", "teeth", "-q")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("ERROR: --force got unknown stage(s): teeth; use ingest, face_tracker, ")
    assert not (tmp_path / "r").exists()


def test_stage_request_missing():
    proc = being("stage", "/nonexistent/request.json", "-q")
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == "ERROR: stage request /nonexistent/request.json does not exist\n"


def test_a_plugin_command_runs_with_the_common_options():
    proc = being("toy", "greet", "--to", "Being")
    assert (proc.returncode, proc.stdout, proc.stderr) == (EXIT_OK, "hello Being\n", "")
    proc = being("toy", "greet", "--to", "Being", "-q")
    assert (proc.returncode, proc.stdout) == (EXIT_OK, "")
    assert "toy" in being("--help").stdout


def test_listing_plugins_imports_no_model_stack():
    """Every installed plugin is registered, and not one imports its model stack to do so."""
    code = ("import sys, io, contextlib\nfrom being_core.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    code = main(['plugins', '--json'])\n"
            "print(sorted(m for m in ('torch', 'mediapipe', 'onnxruntime', 'transformers', 'librosa', 'cv2', 'docker')"
            " if m in sys.modules))\nprint(out.getvalue())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    heavy, listing = proc.stdout.split("\n", 1)
    assert heavy == "[]"
    data = json.loads(listing)
    assert {"mel", "toy"} <= {i["name"] for i in data["implementations"] if i["kind"] == "audio_encoder"}
    assert data["broken"] == []


def test_a_full_disk_is_one_error_line_and_leaves_no_partial_file(toy_video, tmp_path):
    """CI runs as root: a prepared run on a small tmpfs that is then filled up; `being train` must write its
    config.yaml first and cannot."""
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        run = disk / "run"
        config = toy_config(tmp_path)
        assert being("prepare", str(toy_video), "-o", str(run), "-c", str(config), "-q").returncode == EXIT_OK
        before = (run / "config.yaml").read_bytes()
        with open(disk / "filler", "wb") as filler:  # take every byte that is left
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        proc = being("train", str(run), "-c", str(config), "-q")
        assert proc.returncode == EXIT_INPUT
        assert proc.stderr == f"ERROR: {run / 'config.yaml'}: No space left on device\n"
        assert (run / "config.yaml").read_bytes() == before
        assert not [p.name for p in run.rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_rendering_from_a_read_only_run_folder_is_one_error_line(toy_video, tmp_path):
    run = tmp_path / "run"
    assert being("run", str(toy_video), "-o", str(run), "-c", str(toy_config(tmp_path)), "-q").returncode == EXIT_OK
    subprocess.run(["mount", "--bind", "-o", "ro", str(run), str(run)], check=True)  # read-only even for root
    try:
        proc = being("render", str(run), "--audio", str(toy_video), "-o", str(tmp_path / "says.mp4"), "-q")
        assert proc.returncode == EXIT_INPUT
        assert proc.stderr == f"ERROR: {run / '.being' / 'lock'}: Read-only file system\n"
        assert not (tmp_path / "says.mp4").exists()
    finally:
        subprocess.run(["umount", str(run)], check=True)


def test_an_interrupted_render_says_what_the_next_one_redoes(toy_video, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    config = toy_config(tmp_path)
    assert being("run", str(toy_video), "-o", str(run), "-c", str(config), "-q").returncode == EXIT_OK
    render = subprocess.Popen([sys.executable, "-m", "being_core", "render", str(run), "--audio", str(toy_video),
                               "-o", str(tmp_path / "says.mp4"), "-q", "--set", "stages.trainer.config.pause=30"],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(run.glob("renders/*/aud_toy.npy")):  # the features are written, the frames are next
        assert time.monotonic() < deadline and render.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    render.send_signal(signal.SIGINT)
    _, stderr = render.communicate(timeout=30)
    assert render.returncode == 130
    assert stderr == ("ERROR: interrupted; run the same command again: the new audio's features are kept, the frames "
                      "are rendered anew\n")
