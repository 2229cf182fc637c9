"""Caching, resuming, publishing and the request boundary, on a 60-frame synthetic clip with toy stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import config, prepare, runs

from being_core.errors import StageFailed
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.protocol import StageRequest


def finished(root):
    return {k: v.get("finished") for k, v in Manifest.load(root).stages.items()}


def test_prepare_records_facts_split_and_every_stage(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    manifest = prepare(toy_video, root, registry)
    facts = manifest.data["dataset"]
    assert facts == {"n_frames": 60, "fps": 25.0, "width": 32, "height": 32, "has_audio": True,
                     "audio_seconds": 2.4, "val_start": 50}
    assert json.loads((root / "transforms_val.json").read_text())["frames"] == list(range(50, 60))
    entry = manifest.stages["audio_encoder"]
    assert (entry["impl"], entry["version"], entry["distribution"]) == ("toy", "1.0.0", "being-toy")
    assert list(entry["outputs"]) == ["aud_toy.npy"] and list(entry["inputs"]) == ["aud.wav"]
    assert len(manifest.stages["teeth_segmenter"]["outputs"]) == 60
    assert runs(runs_log) == 3  # face, audio, teeth; the trainer only with train=True


def test_unchanged_stages_are_skipped_and_force_redoes_one(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    before = finished(root)
    prepare(toy_video, root, registry)
    assert finished(root) == before and runs(runs_log) == 3
    prepare(toy_video, root, registry, force=["audio_encoder"])
    after = finished(root)
    assert runs(runs_log, "audio_encoder") == 2 and runs(runs_log) == 4
    assert {k: v for k, v in after.items() if k != "audio_encoder"} == {
        k: v for k, v in before.items() if k != "audio_encoder"}


def test_a_config_change_reruns_only_that_stage(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    before = finished(root)
    prepare(toy_video, root, registry, audio_encoder={"impl": "toy", "config": {"value": 2.0}})
    after = finished(root)
    assert runs(runs_log, "audio_encoder") == 2 and runs(runs_log) == 4
    assert [after[k] == before[k] for k in ("ingest", "face_tracker", "teeth_segmenter")] == [True] * 3
    assert np.load(root / "aud_toy.npy").min() >= 2.0


def test_a_damaged_output_is_redone(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    (root / "aud_toy.npy").write_bytes(b"damaged")
    prepare(toy_video, root, registry)
    assert runs(runs_log, "audio_encoder") == 2 and runs(runs_log, "face_tracker") == 1
    assert np.load(root / "aud_toy.npy").shape == (60, 1, 1)


def test_a_failed_stage_keeps_nothing_and_the_run_resumes(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry, teeth_segmenter={"impl": "toy", "config": {"value": 1.0}})
    masks = {p.name: p.read_bytes() for p in (root / "teeth_mask").glob("*.npy")}
    with pytest.raises(StageFailed) as err:
        prepare(toy_video, root, registry, teeth_segmenter={"impl": "toy", "config": {"fail": True}})
    assert str(err.value) == "teeth_segmenter 'toy' failed: RuntimeError: out of teeth"
    assert {p.name: p.read_bytes() for p in (root / "teeth_mask").glob("*.npy")} == masks
    assert Manifest.load(root).stages["teeth_segmenter"]["status"] == "running"
    prepare(toy_video, root, registry)
    assert runs(runs_log, "face_tracker") == 1 and runs(runs_log, "teeth_segmenter") == 3
    assert not np.load(root / "teeth_mask" / "0.npy").any()


def test_an_undeclared_output_fails_the_stage(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    with pytest.raises(StageFailed) as err:
        prepare(toy_video, root, registry, teeth_segmenter={"impl": "toy", "config": {"undeclared": True}})
    assert str(err.value) == "teeth_segmenter 'toy' wrote files it does not declare: notes.txt; nothing was kept"
    assert not (root / "notes.txt").exists() and not (root / "teeth_mask").exists()


def test_a_runner_that_leaves_no_result_fails_the_stage(toy_video, tmp_path, registry, runs_log):
    from being_core import Runner

    class Silent(Runner):
        """Runs nothing."""

        name = "silent"

        def launch(self, impl, request, root, options, progress):
            pass

    registry.add_runner(Silent, "being-tests")
    with pytest.raises(StageFailed) as err:
        prepare(toy_video, tmp_path / "run", registry, teeth_segmenter={"impl": "toy", "runner": "silent"})
    result = tmp_path / "run" / ".being" / "stages" / "teeth_segmenter" / "work" / "result.json"
    assert str(err.value) == f"teeth_segmenter 'toy' left no result ({result}); nothing it wrote was kept"


def test_subprocess_runner_writes_the_same_bytes(toy_video, tmp_path, registry, runs_log):
    a = prepare(toy_video, tmp_path / "a", registry)
    b = prepare(toy_video, tmp_path / "b", registry, audio_encoder={"impl": "toy", "runner": "subprocess"},
                teeth_segmenter={"impl": "toy", "runner": "subprocess"})
    for kind in ("audio_encoder", "teeth_segmenter"):
        assert b.stages[kind]["runner"] == "subprocess"
        assert b.stages[kind]["outputs"] == a.stages[kind]["outputs"]
    pids = {json.loads(line)["pid"] for line in runs_log.read_text().splitlines()}
    assert len(pids) == 3  # this process, and one child per subprocess stage


def test_subprocess_timeout_stops_the_stage(toy_video, tmp_path, registry):
    with pytest.raises(StageFailed) as err:
        prepare(toy_video, tmp_path / "run", registry,
                audio_encoder={"impl": "toy", "runner": "subprocess", "runner_options": {"timeout_s": 0.05}})
    assert str(err.value).startswith("audio_encoder 'toy' exceeded its timeout of 0.05 s and was stopped (log: ")


def test_a_third_party_runner_runs_a_stage(toy_video, tmp_path, registry, runs_log):
    """The toy plugin's runner, found through its entry point, with its own typed options."""
    manifest = prepare(toy_video, tmp_path / "run", registry,
                       teeth_segmenter={"impl": "toy", "runner": "toy-thread",
                                        "runner_options": {"thread_name": "toy-7"}})
    assert registry.runner("toy-thread").distribution == "being-toy"
    assert manifest.stages["teeth_segmenter"]["runner"] == "toy-thread"
    threads = [json.loads(line)["thread"] for line in runs_log.read_text().splitlines()]
    assert threads == ["MainThread", "MainThread", "toy-7"]


def test_the_request_carries_facts_and_declared_info_only(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    manifest = prepare(toy_video, root, registry, train=True)
    request = StageRequest.model_validate_json((root / ".being/stages/trainer/request.json").read_text())
    assert request.schema_version == 2 and request.dataset.val_start == 50
    assert list(request.upstream) == ["audio_encoder"]
    assert request.upstream["audio_encoder"] == manifest.stages["audio_encoder"]["info"]
    teeth = StageRequest.model_validate_json((root / ".being/stages/teeth_segmenter/request.json").read_text())
    assert teeth.upstream == {}
    assert manifest.stages["trainer"]["info"] == {"train_frames": 50}
    assert manifest.stages["trainer"]["metrics"] == {"val_frames": 10, "score": 1.5}


def test_upstream_info_is_part_of_the_trainers_cache_key(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    prepare(toy_video, root, registry, train=True)
    assert runs(runs_log, "trainer") == 1
    manifest = Manifest.load(root)
    manifest.stages["audio_encoder"]["info"]["rate"] = 50.0  # a changed upstream fact, same files
    manifest.save()
    Pipeline(root, config(registry), registry).train()
    assert runs(runs_log, "trainer") == 2


def test_the_split_is_decided_once(toy_video, tmp_path, registry, runs_log):
    from being_core.config import resolve
    from being_core.errors import UsageError

    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    other = resolve({"ingest": {**config(registry).raw.ingest.model_dump(), "val_split": 11},
                     "stages": {"trainer": {"impl": "toy"}}}, registry, "other.yaml")
    with pytest.raises(UsageError) as err:
        Pipeline(root, other, registry).train()
    assert str(err.value) == (f"{root} was prepared with frames 50-59 held out, but other.yaml says "
                              "ingest.val_split: 11; the split is decided once, by `being prepare` (run it "
                              "again to change it)")


def test_render_runs_the_recorded_encoder_then_the_trainers_render_action(toy_video, tmp_path, registry,
                                                                         runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    out = Pipeline(root, config(registry), registry).render(toy_video, tmp_path / "says.mp4")
    features = np.load(next((root / "renders").glob("toy-*/aud_toy.npy")))
    assert out.read_bytes() == features.tobytes() and features.shape == (60, 1, 1)
    entry = Manifest.load(root).stages["trainer:render"]
    assert entry["metrics"] == {"frames": 60} and list(entry["inputs"]) == ["avatar/model.json"]


def test_a_pose_file_travels_into_the_renders_folder_and_a_bad_one_is_refused(toy_video, tmp_path, registry,
                                                                              runs_log):
    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    poses = tmp_path / "poses.npy"
    np.save(poses, np.zeros((10, 6), np.float32))
    Pipeline(root, config(registry), registry).render(toy_video, tmp_path / "a.mp4", pose=poses, blink="natural")
    assert next((root / "renders").glob("toy-*/poses.npy")).read_bytes() == poses.read_bytes()
    with pytest.raises(InputError) as err:
        Pipeline(root, config(registry), registry).render(toy_video, tmp_path / "b.mp4", pose=tmp_path / "p.json")
    assert str(err.value) == f"--pose {tmp_path / 'p.json'}: give 'train', 'still' or an existing .npy file of [T, 6] poses"
    assert not (tmp_path / "b.mp4").exists()


def test_a_render_setting_changes_the_render_and_never_redoes_the_training(toy_video, tmp_path, registry, runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    trained = Manifest.load(root).stages["trainer"]["key"]
    Pipeline(root, config(registry), registry).render(toy_video, tmp_path / "a.mp4")
    rendered = Manifest.load(root).stages["trainer:render"]["key"]
    paused = config(registry, trainer={"impl": "toy", "config": {"pause": 0.01}})
    Pipeline(root, paused, registry).train()
    assert Manifest.load(root).stages["trainer"]["key"] == trained and runs(runs_log, "trainer") == 1
    Pipeline(root, paused, registry).render(toy_video, tmp_path / "b.mp4")
    assert Manifest.load(root).stages["trainer:render"]["key"] != rendered, "the render's own key has the setting"


def test_a_run_prepared_before_the_split_was_recorded_gets_the_configs_split(toy_video, tmp_path, registry,
                                                                             runs_log):
    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    manifest = Manifest.load(root)
    del manifest.data["dataset"]["val_start"]
    manifest.save()
    Pipeline(root, config(registry), registry).train()
    assert Manifest.load(root).data["dataset"]["val_start"] == 50
    assert Manifest.load(root).stages["trainer"]["metrics"]["val_frames"] == 10


def test_render_without_a_selected_trainer_says_so(toy_video, tmp_path, registry, runs_log):
    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    with pytest.raises(InputError) as err:
        Pipeline(root, config(registry, trainer=None), registry).render(toy_video, tmp_path / "says.mp4")
    assert str(err.value) == "toy config selects no trainer (stages.trainer) to render with"
    assert not (tmp_path / "says.mp4").exists()


def test_a_crafted_manifest_cannot_make_being_touch_files_outside_the_run(toy_video, tmp_path, registry, runs_log):
    """Run folders travel: paths read from a received being.json are refused unless inside the run folder."""
    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    victims = [tmp_path / "victim.txt", tmp_path / "elsewhere" / "victim.txt"]
    for victim in victims:
        victim.parent.mkdir(exist_ok=True)
        victim.write_text("keep me")
    manifest = Manifest.load(root)
    outputs = manifest.stages["teeth_segmenter"]["outputs"]
    outputs["../victim.txt"] = "0" * 64
    outputs[str(victims[1])] = "0" * 64
    manifest.save()
    with pytest.raises(InputError) as err:
        prepare(toy_video, root, registry, teeth_segmenter={"impl": "toy", "config": {"value": 3.0}})
    assert str(err.value) == (f"{root / 'being.json'} names files outside its run folder ('../victim.txt', "
                              f"'{victims[1]}'); refusing to use it")
    assert [v.read_text() for v in victims] == ["keep me", "keep me"]
    assert runs(runs_log, "teeth_segmenter") == 1


def test_a_request_naming_paths_outside_the_run_is_refused(tmp_path):
    import subprocess
    import sys

    from being_core.errors import InputError
    from being_core.execute import read_request

    path = tmp_path / "run" / ".being" / "stages" / "teeth_segmenter" / "request.json"
    path.parent.mkdir(parents=True)
    request = {"stage": "teeth_segmenter", "impl": "toy", "version": "1.0.0", "work_dir": "../../outside",
               "dataset": {"n_frames": 2, "fps": 25, "width": 4, "height": 4, "has_audio": False, "val_start": 1}}
    path.write_text(json.dumps(request))
    with pytest.raises(InputError) as err:
        read_request(path)
    assert str(err.value) == (f"{path} is not a valid stage request: work_dir: Value error, '../../outside' is not "
                              "a path inside the run folder")
    proc = subprocess.run([sys.executable, "-m", "being_core", "stage", str(path)], capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stderr.startswith(f"ERROR: {path} is not a valid stage request: work_dir")
    assert not (tmp_path / "outside").exists()


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """A 6 s clip whose index is at the start (faststart) with the last 60 % of its bytes cut off."""
    import subprocess

    from being_core.ingest import ffmpeg_exe

    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=48x32:rate=25:duration=6", "-f", "lavfi", "-i", "sine=frequency=440:duration=6",
                    "-shortest", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(whole)], check=True)
    cut = folder / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    return cut


def test_a_cut_off_video_is_refused_unless_accepted(cut_video, tmp_path, registry, runs_log, caplog):
    from being_core.config import resolve
    from being_core.errors import InputError

    root = tmp_path / "run"
    with pytest.raises(InputError) as err:
        prepare(cut_video, root, registry)
    message = str(err.value)
    assert message.startswith(f"{cut_video} ends early: its container says 6.0")
    assert message.endswith("decode; the file is probably cut off. Fetch it again, or keep what decodes with "
                            "ingest.truncated: accept")
    assert not (root / "ori_imgs").exists() and runs(runs_log) == 0
    accepting = resolve({"ingest": {**config(registry).raw.ingest.model_dump(), "truncated": "accept",
                                    "crop": "center"},
                         "stages": {"teeth_segmenter": {"impl": "toy"}}}, registry, "toy config")
    with caplog.at_level("WARNING", logger="being.ingest"):
        manifest = Pipeline(root, accepting, registry).prepare(cut_video)
    n = manifest.data["dataset"]["n_frames"]
    assert 10 <= n < 150 - 25 and runs(runs_log, "teeth_segmenter") == 1
    assert f"keeping the {n} frames that decode (ingest.truncated: accept)" in caplog.text


def test_one_being_process_per_run_folder(toy_video, tmp_path, registry, runs_log):
    import subprocess
    import sys

    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(root / '.being' / 'lock')!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\nos.write(fd, str(os.getpid()).encode())\n"
        "print('locked', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(InputError) as err:
            Pipeline(root, config(registry), registry).train()
        assert str(err.value) == (f"{root} is in use by another being process (pid {holder.pid}); wait for it to "
                                  "finish, or use another run folder")
    finally:
        holder.kill()
        holder.wait()
    assert "trainer" not in Manifest.load(root).stages
    Pipeline(root, config(registry), registry).train()  # free again once the other process is gone
    assert runs(runs_log, "trainer") == 1


def test_render_to_a_folder_is_refused_before_anything_runs(toy_video, tmp_path, registry, runs_log):
    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(InputError) as err:
        Pipeline(root, config(registry), registry).render(toy_video, tmp_path / "out.mp4")
    assert str(err.value) == f"render output {tmp_path / 'out.mp4'} is a folder; name the .mp4 file to write"
    assert not (root / "renders").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_killing_being_during_ingest_leaves_no_writer_behind(toy_video, tmp_path):
    """kill -9 of `being prepare` takes its ffmpeg child with it; the next prepare of another video is clean."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from being_core.ingest import ffmpeg_exe

    long = tmp_path / "long.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25:duration=40", "-f", "lavfi", "-i", "sine=duration=40",
                    "-shortest", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(long)], check=True)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"ingest": {"size": 512, "min_frames": 10, "crop": "center"}, "stages": {}}))
    root = tmp_path / "run"
    being = subprocess.Popen([sys.executable, "-m", "being_core", "prepare", str(long), "-o", str(root), "-c",
                              str(config), "-q"])
    staging = str(root / ".being" / "ingest")
    deadline = time.monotonic() + 60
    while not _processes_mentioning(staging):
        assert time.monotonic() < deadline and being.poll() is None, "ffmpeg never started"
        time.sleep(0.05)
    being.send_signal(signal.SIGKILL)
    being.wait()
    deadline = time.monotonic() + 5
    while _processes_mentioning(staging) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(staging) == [], "ffmpeg outlived the killed being process"
    proc = subprocess.run([sys.executable, "-m", "being_core", "prepare", str(toy_video), "-o", str(root), "-c",
                           str(config), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(list((root / "ori_imgs").glob("*.jpg"))) == 60
    assert json.loads((root / "being.json").read_text())["dataset"]["n_frames"] == 60


def test_a_child_started_with_die_with_parent_dies_with_its_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    for tie, survives in ((True, False), (False, True)):
        middle = subprocess.Popen([sys.executable, "-c", (
            "import subprocess, sys\nfrom being_core.native import die_with_parent\n"
            f"child = subprocess.Popen(['sleep', '30'], preexec_fn=die_with_parent if {tie} else None)\n"
            "print(child.pid, flush=True)\nchild.wait()\n")], stdout=subprocess.PIPE, text=True)
        child = int(middle.stdout.readline())
        middle.send_signal(signal.SIGKILL)
        middle.wait()
        deadline = time.monotonic() + 3
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            try:  # reap it if it became ours; otherwise wait for it to vanish
                os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pass
            status = Path(f"/proc/{child}/stat")
            if status.exists() and status.read_text().split()[2] == "Z":
                break
            time.sleep(0.05)
        alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
        assert alive == survives, f"die_with_parent={tie}: child alive={alive}"
        if alive:
            os.kill(child, signal.SIGKILL)


def test_render_names_a_bad_audio_file_as_audio(toy_video, tmp_path, registry, runs_log):
    from being_core.errors import InputError

    root = tmp_path / "run"
    prepare(toy_video, root, registry, train=True)
    noise = tmp_path / "speech.wav"
    noise.write_text("not audio at all")
    with pytest.raises(InputError) as err:
        Pipeline(root, config(registry), registry).render(noise, tmp_path / "says.mp4")
    assert str(err.value) == f"{noise} is not audio ffmpeg can read (ffmpeg: invalid data)"


def test_a_pipeline_says_what_it_ran_and_runs_in_threads_keep_their_own_logs(toy_video, tmp_path, registry,
                                                                             caplog):
    """What `being batch` relies on: `ran` is empty when everything was cached, and two runs driven from two
    threads of one process each log only their own lines into their run log."""
    import threading

    caplog.set_level("INFO", logger="being")
    roots = [tmp_path / "a", tmp_path / "b"]
    pipelines = [Pipeline(root, config(registry), registry) for root in roots]
    threads = [threading.Thread(target=p.prepare, args=(toy_video,)) for p in pipelines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pipelines[0].ran == ["face_tracker:locate", "ingest", "face_tracker", "audio_encoder", "teeth_segmenter"]
    for root in roots:
        assert (root / ".being" / "log.txt").read_text().count("teeth_segmenter 'toy': running") == 1
    again = Pipeline(roots[0], config(registry), registry)
    again.prepare(toy_video)
    assert again.ran == []


def test_a_prefix_reporter_shows_tasks_under_a_name_and_drops_finished_ones():
    from being_core.progress import PrefixReporter, Reporter

    class Recorder(Reporter):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_start(self, task_id, description, total, unit):
            self.events.append(("start", task_id, description))

        def on_close(self, task_id):
            self.events.append(("close", task_id))

        def on_forget(self, task_id):
            self.events.append(("forget", task_id))

    target = Recorder()
    with PrefixReporter(target, "clip: ", transient=True).task("face: landmarks", 3) as task:
        task.advance()
    assert target.events == [("start", 1, "clip: face: landmarks"), ("close", 1), ("forget", 1)]
