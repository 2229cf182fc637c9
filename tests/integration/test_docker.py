"""The docker runner and `being images`, against a real Docker daemon.

CI (`.ci/run`) starts a daemon and builds every preprocessing image before the tests; without a daemon
these tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker.errors
import numpy as np
import pytest
from conftest import FAST_FACE, REPO

from being_core.config import load, resolve
from being_core.errors import StageFailed, UsageError
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry
from being_core.progress import Reporter
from being_core.registry import Registry
from being_core.stage import PREPARE_STAGES, StageKind
from being_core.testing import missing
from being_docker import images
from being_docker.runner import DockerOptions, DockerRunner, container_env, image_for, limits

PROBE_IMAGE = "being-test/probe:0.1.0"
PREPARE_SLUGS = ["face-mediapipe", "audio-mel", "au-landmarks", "teeth-landmarks"]


def _daemon():
    try:
        return images.client()
    except UsageError as exc:
        missing(str(exc), f"CI needs a Docker daemon: {exc}")


@pytest.fixture(scope="session")
def docker_client():
    return _daemon()


@pytest.fixture(scope="session")
def built(docker_client):
    """The images of the default preprocessing stages (a no-op when .ci/run built them already)."""
    proc = subprocess.run([sys.executable, "-m", "being_core", "images", "build", "-q", *PREPARE_SLUGS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return PREPARE_SLUGS


@pytest.fixture(scope="session")
def probe_image(docker_client, built, tmp_path_factory):
    """The au-landmarks image plus the test-only 'probe' plugin (tests/probe-plugin)."""
    ctx = tmp_path_factory.mktemp("probe-image")
    images.build_local_wheel(REPO / "tests" / "probe-plugin", ctx)
    base = load_registry().get(StageKind.AU_EXTRACTOR, "landmarks").image()
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\nUSER root\nCOPY *.whl /tmp/\n"
        "RUN /opt/being/bin/pip install --no-index --no-deps --no-cache-dir /tmp/*.whl && rm /tmp/*.whl\n"
        "USER being\n")
    docker_client.images.build(path=str(ctx), tag=PROBE_IMAGE, network_mode="none", rm=True)
    yield PROBE_IMAGE
    docker_client.images.remove(PROBE_IMAGE, force=True)  # a test image: half a gigabyte per CI run otherwise


class Events(Reporter):
    def __init__(self):
        super().__init__()
        self.started, self.advanced = [], 0

    def on_start(self, task_id, description, total, unit):
        self.started.append(description)

    def on_advance(self, task_id, n):
        self.advanced += n


class ProbeRun:
    """A two-frame run folder whose teeth_segmenter is the probe, on the docker runner."""

    def __init__(self, tmp_path: Path, mode: str, timeout: float | None = None, progress: Reporter | None = None,
                 **options):
        sys.path.insert(0, str(REPO / "tests" / "probe-plugin"))
        try:
            from being_test_probe import Probe
        finally:
            sys.path.pop(0)
        self.root = tmp_path / "run"
        (self.root / "ori_imgs").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (self.root / "ori_imgs" / f"{i}.jpg").write_bytes(b"\xff\xd8 not decoded by the probe")
        manifest = Manifest.load(self.root)
        manifest.data["dataset"] = {"n_frames": 2, "fps": 25.0, "width": 4, "height": 4, "has_audio": False,
                                    "val_start": 1}
        manifest.save()
        registry = Registry()
        registry.add_runner(DockerRunner, "being-docker")
        registry.add(Probe, "being-test-probe")
        options = {"image": PROBE_IMAGE, **({"timeout_s": timeout} if timeout else {}), **options}
        resolved = resolve({"stages": {"teeth_segmenter": {"impl": "probe", "config": {"mode": mode},
                                                           "runner": "docker", "runner_options": options}}},
                           registry, "test")
        self.pipeline = Pipeline(self.root, resolved, registry, progress or Reporter())

    def run_stage(self, kind):
        return self.pipeline.run_one(kind)


def probe_run(tmp_path: Path, mode: str, timeout: float | None = None, progress: Reporter | None = None,
              **options) -> ProbeRun:
    return ProbeRun(tmp_path, mode, timeout, progress, **options)


def test_stage_runs_as_the_caller_without_network_and_streams_progress(probe_image, tmp_path, caplog):
    events = Events()
    pipeline = probe_run(tmp_path, "ok", progress=events, memory="256m")
    with caplog.at_level("INFO", logger="being.container"):
        entry = pipeline.run_stage(StageKind.TEETH_SEGMENTER)
    assert entry["runner"] == "docker"
    assert entry["info"]["uid"] == os.getuid() and entry["info"]["gid"] == os.getgid()
    assert entry["info"]["network"].startswith("unreachable")
    assert entry["info"]["memory_limit"] == 256 * 2 ** 20
    # hardened: no capabilities, no privilege gain, nothing executed from /tmp, a process limit
    assert entry["info"]["cap_eff"] == "0000000000000000" and entry["info"]["no_new_privs"] == "1"
    assert entry["info"]["tmp_exec"] == "refused: Permission denied"
    assert entry["info"]["pids_max"] == "4096"
    assert "teeth_segmenter: probe: done" in caplog.messages  # the run log gets the container's log lines
    stage_log = pipeline.root / ".being" / "stages" / "teeth_segmenter" / "work" / "stage.log"
    assert "probe: done" in stage_log.read_text()
    assert sorted(entry["outputs"]) == ["teeth_mask/0.npy", "teeth_mask/1.npy"]
    assert np.load(pipeline.root / "teeth_mask" / "1.npy").shape == (4, 4)
    assert events.started == ["probe masks"] and events.advanced == 2
    assert not [c for c in images.client().containers.list(all=True) if c.labels.get("being.run") == str(pipeline.root)]


def test_nonzero_exit_names_stage_image_code_and_log(probe_image, tmp_path):
    pipeline = probe_run(tmp_path, "crash")
    with pytest.raises(StageFailed) as err:
        pipeline.run_stage(StageKind.TEETH_SEGMENTER)
    assert str(err.value).startswith(f"teeth_segmenter 'probe' in image {PROBE_IMAGE} exited with code 3; "
                                     "last log lines:\n")
    assert "probe: crashing on purpose" in str(err.value)
    assert not (pipeline.root / "teeth_mask").exists()


def test_timeout_stops_and_removes_the_container(probe_image, tmp_path):
    pipeline = probe_run(tmp_path, "sleep", timeout=3)
    with pytest.raises(StageFailed) as err:
        pipeline.run_stage(StageKind.TEETH_SEGMENTER)
    assert str(err.value).startswith(f"teeth_segmenter 'probe' in image {PROBE_IMAGE} exceeded its timeout of 3 s; "
                                     "the container was removed")
    assert not [c for c in images.client().containers.list(all=True) if c.labels.get("being.run") == str(pipeline.root)]


def test_writing_outside_the_output_folder_fails_and_leaves_nothing(probe_image, tmp_path):
    pipeline = probe_run(tmp_path, "escape")
    with pytest.raises(StageFailed) as err:
        pipeline.run_stage(StageKind.TEETH_SEGMENTER)
    assert str(err.value) == ("teeth_segmenter 'probe' failed: OSError: [Errno 30] Read-only file system: "
                              "'/being/run/escaped.txt'")
    assert not (pipeline.root / "escaped.txt").exists()


def test_missing_image_is_reported_before_anything_runs(docker_client, being_testdata, tmp_path):
    from being_core.cli import main

    run = tmp_path / "r"
    code = main(["prepare", str(being_testdata / "videos" / "videoretalking_face5.mp4"), "-o", str(run), "-q",
                 "--set", "stages.audio_encoder.runner=docker",
                 "--set", "stages.audio_encoder.runner_options.image=being/audio-mel:0.0.0-missing"])
    assert code == 2
    assert not run.exists()
    registry = load_registry()
    resolved = load(None, registry, [
        "stages.audio_encoder.runner=docker", "stages.audio_encoder.runner_options.image=being/audio-mel:0.0.0-missing"])
    with pytest.raises(UsageError) as err:
        Pipeline(tmp_path / "r2", resolved, registry).preflight(PREPARE_STAGES)
    assert str(err.value) == ("audio_encoder 'mel' runs in Docker, but the image being/audio-mel:0.0.0-missing is "
                              "not built; run `being images build audio-mel`")


def test_missing_daemon_is_an_actionable_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(UsageError) as err:
        images.client()
    assert str(err.value).startswith("cannot reach the Docker daemon (")
    assert str(err.value).endswith("start it (e.g. `dockerd &` as root, or `systemctl start docker`) and check "
                                   "DOCKER_HOST, or choose runner: inprocess")


def test_images_list_shows_built_images_as_current(built, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "being_core", "images", "list", "--json"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    rows = {r["tag"]: r for r in json.loads(proc.stdout)}
    for slug in built:
        impl = next(i for i in load_registry().all() if i.cls.slug() == slug)
        row = rows[impl.cls.image()]
        assert row["status"] == "current" and row["size_mb"] > 0


def test_a_third_party_plugin_gets_its_image_and_runs_in_it(docker_client, built, prepared_copy):
    """The example plugin (examples/teeth-bright) is built from its own package's lock and the shared template,
    with nothing of it in Being's code, then runs its stage in that image with the same result as in-process."""
    proc = subprocess.run([sys.executable, "-m", "being_core", "images", "build", "-q", "teeth-bright"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    impl = load_registry().implementation(StageKind.TEETH_SEGMENTER, "bright")
    image = docker_client.images.get(impl.cls.image())
    assert image.labels["being.distribution"] == "being-teeth-bright"
    assert images.stale_reason(image.labels, images.ImageSpec(impl)) is None
    in_process = Manifest.load(prepared_copy).stages["teeth_segmenter"]["outputs"]
    registry = load_registry()
    resolved = resolve({"stages": {"teeth_segmenter": {"impl": "bright", "runner": "docker"}}}, registry, "test")
    entry = Pipeline(prepared_copy, resolved, registry, force={"teeth_segmenter"}).run_one(StageKind.TEETH_SEGMENTER)
    assert entry["runner"] == "docker" and entry["outputs"] == in_process


def test_a_changed_plugin_makes_its_image_stale(built):
    impl = next(i for i in load_registry().all() if i.cls.slug() == "au-landmarks")
    image = images.client().images.get(impl.cls.image())
    spec = images.ImageSpec(impl)
    assert images.stale_reason(image.labels, spec) is None
    edited = {**image.labels, "being.plugin-digest": "0" * 16}
    assert images.stale_reason(edited, spec) == (f"plugin code differs (image {'0' * 16}, installed "
                                                 f"{spec.labels()['being.plugin-digest']})")
    # the shared template is not the plugin's code, and an image built from another one is stale too
    assert spec.dockerfile == images.package_files("being_docker") / "Dockerfile"
    older = {**image.labels, "being.recipe-digest": "1" * 16}
    assert images.stale_reason(older, spec) == (f"Dockerfile differs (image {'1' * 16}, installed "
                                                f"{spec.labels()['being.recipe-digest']})")


def test_prepare_in_docker_equals_in_process(built, face5, tmp_path):
    """Every preprocessing stage in its own container gives the same dataset as the in-process runner."""
    face = [f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()]
    registry = load_registry()
    runs = {}
    for runner in ("docker", "inprocess"):
        overrides = face + [f"stages.{k}.runner={runner}" for k in PREPARE_STAGES]
        if runner == "inprocess":  # the docker config's limits are options of the docker runner only
            overrides += [f"stages.{k}.runner_options={{}}" for k in PREPARE_STAGES]
        resolved = load("docker", registry, overrides)
        runs[runner] = Pipeline(tmp_path / runner, resolved, registry).prepare(face5)
    docker, inproc = runs["docker"], runs["inprocess"]
    differ = []
    for kind in PREPARE_STAGES:
        assert docker.stages[str(kind)]["runner"] == "docker"
        a, b = docker.stages[str(kind)]["outputs"], inproc.stages[str(kind)]["outputs"]
        assert sorted(a) == sorted(b), kind
        differ += [rel for rel in a if a[rel] != b[rel]]
    # Every file is bit-identical except .npz archives, whose zip entries carry the time they were written:
    # their arrays must be bit-identical.
    assert [rel for rel in differ if not rel.endswith(".npz")] == []
    for rel in differ:
        with np.load(tmp_path / "docker" / rel) as x, np.load(tmp_path / "inprocess" / rel) as y:
            assert sorted(x.files) == sorted(y.files), rel
            for key in x.files:
                assert np.array_equal(x[key], y[key]), (rel, key)


def test_the_container_gets_the_hosts_blas_settings_and_nothing_else():
    env = container_env({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "OMP_NUM_THREADS": "2",
                         "PATH": "/host/bin", "HOME": "/root", "HF_TOKEN": "secret"})
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_L2_SIZE"] == "512" and env["OMP_NUM_THREADS"] == "2"
    assert "PATH" not in env and "HF_TOKEN" not in env and env["HOME"] == "/tmp" and env["HF_HUB_OFFLINE"] == "1"


def test_gpu_only_for_stages_that_need_it():
    registry = load_registry()
    trainer = registry.get(StageKind.TRAINER, "gaussian-avatar")
    mel = registry.get(StageKind.AUDIO_ENCODER, "mel")
    assert trainer.needs_gpu and not mel.needs_gpu
    [request] = limits(trainer, DockerOptions())["device_requests"]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == -1
    assert limits(mel, DockerOptions(cpus=1.5, memory="2g")) == {"nano_cpus": 1_500_000_000, "mem_limit": "2g"}
    assert "device_requests" not in limits(trainer, DockerOptions(gpu=False))
    assert "device_requests" not in limits(trainer, DockerOptions(), trainer.Config(device="cpu")), "told: the CPU"
    assert "device_requests" in limits(trainer, DockerOptions(), trainer.Config())
    assert "device_requests" in limits(mel, DockerOptions(gpu=True))


def test_gpu_request_without_a_gpu_runtime_is_one_clear_error(probe_image, tmp_path, docker_client):
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this daemon has the NVIDIA runtime")
    pipeline = probe_run(tmp_path, "ok", gpu=True)
    with pytest.raises(StageFailed) as err:
        pipeline.run_stage(StageKind.TEETH_SEGMENTER)
    assert str(err.value).startswith(f"teeth_segmenter 'probe': Docker could not start {PROBE_IMAGE}: ")
    assert str(err.value).endswith("; a GPU stage needs the NVIDIA container toolkit on the host, or "
                                   "runner_options.gpu: false")
    assert not [c for c in docker_client.containers.list(all=True) if c.labels.get("being.run") == str(pipeline.root)]


def test_ctrl_c_removes_the_container(probe_image, tmp_path, docker_client):
    import signal
    import time

    script = (f"import sys; sys.path.insert(0, {str(REPO / 'tests' / 'integration')!r})\n"
              "from pathlib import Path\nfrom test_docker import probe_run\nfrom being_core.stage import StageKind\n"
              f"probe_run(Path({str(tmp_path)!r}), 'sleep').run_stage(StageKind.TEETH_SEGMENTER)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = str(tmp_path / "run")
    deadline = time.monotonic() + 60
    while not [c for c in docker_client.containers.list() if c.labels.get("being.run") == root]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr
    assert not [c for c in docker_client.containers.list(all=True) if c.labels.get("being.run") == root]


def test_render_checks_its_images_before_anything_runs(docker_client, tmp_path, being_testdata):
    registry = load_registry()
    resolved = load(None, registry, [
        "stages.trainer.runner=docker", "stages.trainer.runner_options.image=being/trainer-gaussian-avatar:0.0.0-missing"])
    with pytest.raises(UsageError) as err:
        Pipeline(tmp_path / "r", resolved, registry).render(being_testdata / "audio" / "geneface_zozo.wav",
                                                            tmp_path / "out.mp4")
    assert str(err.value) == ("trainer 'gaussian-avatar' runs in Docker, but the image "
                              "being/trainer-gaussian-avatar:0.0.0-missing is not built; "
                              "run `being images build trainer-gaussian-avatar`")
    assert not (tmp_path / "r").exists() and not (tmp_path / "out.mp4").exists()


def test_a_killed_runs_container_is_removed_by_the_next_attempt(probe_image, tmp_path, docker_client):
    """kill -9 of being leaves its container running (nothing can stop it then); the next attempt, which holds
    the run folder's lock, removes it before it starts its own."""
    import signal
    import time

    script = (f"import sys; sys.path.insert(0, {str(REPO / 'tests' / 'integration')!r})\n"
              "from pathlib import Path\nfrom test_docker import probe_run\nfrom being_core.stage import StageKind\n"
              f"probe_run(Path({str(tmp_path)!r}), 'sleep').run_stage(StageKind.TEETH_SEGMENTER)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = str(tmp_path / "run")

    def mine():
        return [c for c in docker_client.containers.list(all=True) if c.labels.get("being.run") == root]

    deadline = time.monotonic() + 60
    while not mine():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [left] = mine()
    entry = probe_run(tmp_path, "ok").run_stage(StageKind.TEETH_SEGMENTER)
    assert entry["status"] == "done" and mine() == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(left.id)


REFINER_SLUGS = ["refiner-unet", "refiner-sd-turbo"]


@pytest.fixture(scope="session")
def refiner_images(docker_client):
    proc = subprocess.run([sys.executable, "-m", "being_core", "images", "build", "-q", *REFINER_SLUGS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return REFINER_SLUGS


@pytest.mark.parametrize("slug", REFINER_SLUGS)
def test_a_refiner_in_its_container_equals_in_process(slug, refiner_images, prepared_copy, tmp_path, being_testdata):
    """The trainer in-process, then the refiner's fit and a refined render in its own image: the same frames as
    in-process (frames cross the boundary as files, whatever the runner)."""
    import shutil

    from being_trainer_gaussian_avatar import GaussianAvatar

    from being_core.frames import read_video
    from being_core.stage import REFINED_VAL

    registry = load_registry()
    cls = registry.get(StageKind.REFINER, slug.removeprefix("refiner-"))
    config = cls.contract_config(tmp_path / "assets")
    stages = {"audio_encoder": {"impl": "mel"}, "trainer": {"impl": "gaussian-avatar",
                                                            "config": GaussianAvatar.test_config}}
    Pipeline(prepared_copy, resolve({"stages": stages}, registry, "t"), registry).train()
    frames = {}
    for runner in ("docker", "inprocess"):
        root = tmp_path / runner
        shutil.copytree(prepared_copy, root)
        stages["refiner"] = {"impl": cls.name, "config": config, "runner": runner}
        if runner == "docker":  # no NVIDIA toolkit here: the CPU image on the CPU
            stages["refiner"]["runner_options"] = {"gpu": False}
        pipeline = Pipeline(root, resolve({"stages": stages}, registry, "t"), registry)
        pipeline.train()
        pipeline.render(being_testdata / "audio" / "videoretalking_audio1.wav", tmp_path / f"{runner}.mp4")
        manifest = Manifest.load(root)
        assert manifest.stages["refiner"]["runner"] == runner == manifest.stages["refiner:refine"]["runner"]
        sub = next(p for p in (root / "renders").iterdir() if p.is_dir())
        frames[runner] = [np.concatenate(list(read_video(path))) for path in (root / REFINED_VAL, sub / "refined.mp4")]
        assert manifest.stages["refiner:refine"]["metrics"]["frames"] == len(frames[runner][1])
    for a, b in zip(frames["docker"], frames["inprocess"]):
        assert np.array_equal(a, b)


@pytest.fixture(scope="session")
def trainer_cpu_image(docker_client):
    proc = subprocess.run([sys.executable, "-m", "being_core", "images", "build", "-q", "trainer-gaussian-avatar"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return "trainer-gaussian-avatar"


@pytest.mark.parametrize("variant", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda_image)])
def test_the_trainer_trains_and_renders_on_the_cpu_in_its_image(variant, request, docker_client, prepared_copy,
                                                                 tmp_path, being_testdata):
    """The trainer's image (the shared template) trains and renders on the CPU as in-process. The CPU image gives
    the same bits. The CUDA image (gsplat compiled in, 5 GB: `being images build trainer-gaussian-avatar --variant
    cuda`, which scripts/test.sh runs beside the other tests) computes with another build of torch, so its avatar
    is close, not equal."""
    import shutil

    import torch
    from being_trainer_gaussian_avatar import GaussianAvatar

    from being_core.frames import read_video

    registry = load_registry()
    if variant == "cpu":
        request.getfixturevalue("trainer_cpu_image")
    else:
        spec = images.ImageSpec(registry.implementation(StageKind.TRAINER, "gaussian-avatar"), "cuda")
        if not images.current(docker_client, spec):
            missing(f"{spec.tag} is not built here, or not for this code (being images build "
                    "trainer-gaussian-avatar --variant cuda)",
                    f"CI builds {spec.tag} before this test (scripts/test.sh); it is missing or stale")
    results = {}
    for runner in ("docker", "inprocess"):
        root = tmp_path / runner
        shutil.copytree(prepared_copy, root)
        trainer = {"impl": "gaussian-avatar", "config": {**GaussianAvatar.test_config, "device": "cpu"},
                   "runner": runner}
        if runner == "docker":
            trainer["runner_options"] = {"variant": variant}
        pipeline = Pipeline(root, resolve({"stages": {"audio_encoder": {"impl": "mel"}, "trainer": trainer}},
                                          registry, "t"), registry)
        pipeline.train()
        out = pipeline.render(being_testdata / "audio" / "videoretalking_audio1.wav", tmp_path / f"{runner}.mp4")
        manifest = Manifest.load(root)
        assert manifest.stages["trainer"]["runner"] == manifest.stages["trainer:render"]["runner"] == runner
        results[runner] = (torch.load(root / "avatar" / "model.pt", weights_only=True)["model"],
                           manifest.stages["trainer"]["metrics"], np.concatenate(list(read_video(out))))
    (model, metrics, frames), (ref_model, ref_metrics, ref_frames) = results["docker"], results["inprocess"]
    assert metrics["device"] == "cpu" and frames.shape == ref_frames.shape
    if variant == "cpu":
        for part in ("gaussians", "deformer"):
            for name, value in ref_model[part].items():
                assert torch.equal(model[part][name], value), f"{part}.{name}"
        assert np.array_equal(frames, ref_frames)
        assert metrics["psnr"] == ref_metrics["psnr"]
    else:
        assert abs(metrics["psnr"] - ref_metrics["psnr"]) < 0.5, (metrics["psnr"], ref_metrics["psnr"])
        assert np.abs(frames.astype(int) - ref_frames.astype(int)).mean() < 4.0


def test_runner_options_variant_picks_the_cuda_image_and_says_how_to_build_it(docker_client):
    registry = load_registry()
    impl = registry.implementation(StageKind.FACE_TRACKER, "mediapipe")
    tag = f"{impl.cls.image()}-cuda"
    assert image_for(impl.cls, DockerOptions(variant="cuda")) == tag
    assert image_for(impl.cls, DockerOptions()) == impl.cls.image()
    with pytest.raises(UsageError) as err:
        DockerRunner().check(impl, DockerOptions(variant="cuda"))
    assert str(err.value) == (f"face_tracker 'mediapipe' runs in Docker, but the image {tag} is not built; "
                              "run `being images build face-mediapipe --variant cuda`")


def test_a_rebuild_removes_the_image_it_replaced_unless_it_is_still_tagged(built, docker_client, tmp_path):
    """Rebuilding an image (new code, new lock) must not leave the old gigabytes behind untagged; an old image
    that still carries another tag is somebody's and stays."""
    base = load_registry().get(StageKind.AU_EXTRACTOR, "landmarks").image()
    tag, keep = "being-test/rebuilt:0.1.0", "being-test/kept:0.1.0"

    def image(n: int) -> str:
        (tmp_path / "Dockerfile").write_text(f"FROM {base}\nLABEL being.test.build={n}\n")
        return docker_client.images.build(path=str(tmp_path), tag=tag, network_mode="none", rm=True)[0].id

    try:
        first = image(1)
        second = image(2)
        images._remove_untagged(docker_client, {first[7:19]})
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(first)
        docker_client.images.get(second).tag(keep)
        image(3)
        images._remove_untagged(docker_client, {second[7:19]})
        assert docker_client.images.get(second).tags == [keep]
    finally:
        for name in (tag, keep):
            try:
                docker_client.images.remove(name, force=True)
            except docker.errors.ImageNotFound:
                pass


def test_a_multi_stage_build_leaves_no_untagged_stage_behind(built, docker_client, tmp_path):
    """A CUDA image compiles in a first stage (8 GB) and copies the result into the last: the first stage's image,
    untagged once the build is done, goes with it; the image built stays."""
    base = load_registry().get(StageKind.AU_EXTRACTOR, "landmarks").image()
    tag = "being-test/stages:0.1.0"
    (tmp_path / "Dockerfile").write_text(f"FROM {base} AS compile\nUSER root\nRUN echo {tmp_path.name} > /made\n"
                                         f"FROM {base}\nCOPY --from=compile /made /made\n")
    steps = set()
    try:
        for chunk in docker_client.api.build(path=str(tmp_path), tag=tag, network_mode="none", rm=True, decode=True):
            made = images._step_image((chunk.get("stream") or "").rstrip())
            if made:
                steps.add(made)
        left = [i.id for i in docker_client.images.list(filters={"dangling": True}) if i.id[7:19] in steps]
        assert left, "the compile stage's image is left untagged"
        images._remove_untagged(docker_client, steps)
        for image_id in left:
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get(image_id)
        assert docker_client.images.get(tag).tags == [tag]
    finally:
        docker_client.images.remove(tag, force=True)
