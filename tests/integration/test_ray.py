"""runner: ray and being batch on a real Ray cluster of this machine: a head node (no CPUs, so no task runs on
it), a worker node with a fake GPU, and, for shipped storage, a worker node that cannot see the run folders
(a private mount namespace hides them; CI runs as root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from being_refiner_unet import UNetRefiner
from being_trainer_gaussian_avatar import GaussianAvatar
from conftest import EXAMPLE_CONFIG, FAST_FACE

from being_core.config import apply_overrides, resolve
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry
from being_core.stage import StageKind

RAY = Path(sys.executable).parent / "ray"
TINY = GaussianAvatar.test_config
SYSTEM = json.dumps({"health_check_period_ms": 500, "health_check_failure_threshold": 4})

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the shipped-storage node needs a mount namespace (root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, prefix: tuple[str, ...] = ()) -> None:
    proc = subprocess.run([*prefix, str(RAY), *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"ray {args[0]} failed:\n{proc.stderr[-3000:]}"


class Cluster:
    def __init__(self, hidden: Path):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.hidden = hidden
        ray_cli("start", "--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
                "--object-store-memory=200000000", f"--system-config={SYSTEM}")

    def add_worker(self, gpus: int = 1, resources: dict | None = None, hide: bool = False) -> int:
        """Start a worker node (2 CPUs); returns its node-manager port, which identifies its processes."""
        port = _free_port()
        args = ["start", f"--address={self.address}", "--num-cpus=2", f"--num-gpus={gpus}",
                f"--node-manager-port={port}", "--object-store-memory=200000000"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        prefix: tuple[str, ...] = ()
        if hide:  # the node's processes see an empty folder where the run folders are
            prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                      f'mount -t tmpfs none "{self.hidden}" && exec "$0" "$@"')
        ray_cli(*args, prefix=prefix)
        return port

    def kill_worker(self, node_manager_port: int) -> None:
        """SIGKILL a worker node's raylet and every process below it, as a lost machine would go."""
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        raylet = next(p for p in pids if f"--node_manager_port={node_manager_port}".encode() in _cmdline(p))
        family = {raylet}
        for _ in range(4):
            family |= {p for p in pids if _ppid(p) in family}
        for pid in family:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster, its nodes and the drivers (this process, `being batch`) agree: no usage reports, no auth token
    (a local cluster; Ray would otherwise keep one in ~/.ray)."""
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    mp.setenv("RAY_AUTH_MODE", "disabled")

    hidden = tmp_path_factory.getbasetemp()
    c = Cluster(hidden)
    try:
        c.gpu_port = c.add_worker(gpus=1, resources={"near": 100})
        c.add_worker(gpus=0, resources={"far": 1}, hide=True)
        ray.init(address=c.address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        mp.undo()


def _config_data() -> dict:
    """What prepared_face5 was made with (the example config, the fast face fit), plus the tiny trainer and the
    tiny learned refiner (every one of the six stages)."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["stages"]["face_tracker"]["config"] = dict(FAST_FACE)
    data["stages"]["trainer"] = {"impl": "gaussian-avatar", "config": dict(TINY)}
    data["stages"]["refiner"] = {"impl": "unet", "config": dict(UNetRefiner.test_config)}
    return data


#: The threads an in-process run uses here (BLAS and torch take every core): Ray would give a task as many as its CPUs.
THREADS = {"OMP_NUM_THREADS": str(os.cpu_count())}


def _config(*extra: str, runner: dict | None = None):
    data = apply_overrides(_config_data(), list(extra))
    for selection in data["stages"].values():
        if selection and runner is not None:
            selection["runner"], selection["runner_options"] = "ray", {"env": THREADS, **runner}
    return resolve(data, load_registry(), "ray test config")


class _Close:
    """Weights that compare equal when every tensor is equal to within float noise."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Close) and self.tensors.keys() == other.tensors.keys() and all(
            np.allclose(v, other.tensors[k], rtol=1e-4, atol=1e-6) for k, v in self.tensors.items())


def _published(root: Path) -> dict[str, object]:
    """Every file the stages published, as what must be equal: the metrics without the timings, videos as their
    frames (a Matroska file has a random segment id), a refiner's weights as values equal to 1e-6 (the fit's float
    sums differ in the last bits from one process to another); the rest byte for byte."""
    from being_core.frames import read_video

    manifest = Manifest.load(root)
    rels = [rel for entry in manifest.stages.values() for rel in entry.get("outputs", {})]
    files = {}
    for rel in sorted(rels):
        if rel.endswith(".npz"):
            continue
        if rel.endswith((".mkv", ".mp4")):
            files[rel] = np.concatenate(list(read_video(root / rel))).tobytes()
        elif rel.endswith(".safetensors"):
            from safetensors.numpy import load_file

            files[rel] = _Close(load_file(root / rel))
        else:
            files[rel] = (root / rel).read_bytes()
    if "avatar/metrics.json" in files:
        metrics = json.loads(files["avatar/metrics.json"])
        for timing in ("train_seconds", "setup_seconds", "eval_seconds"):
            metrics.pop(timing)
        files["avatar/metrics.json"] = json.dumps(metrics, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def trained_here(prepared_face5, tmp_path_factory):
    """The prepared clip trained with the tiny schedule in this process (the reference)."""
    root = tmp_path_factory.mktemp("here") / "run"
    shutil.copytree(prepared_face5, root)
    Pipeline(root, _config(), load_registry()).train()
    return root


def test_every_stage_on_ray_writes_the_same_files(cluster, face5, trained_here, tmp_path, caplog):
    root = tmp_path / "run"
    with caplog.at_level("INFO", logger="being"):
        near = _config(runner={"storage": "shared", "resources": {"near": 1}})  # the node with the GPU
        manifest = Pipeline(root, near, load_registry()).prepare(face5, train=True)
    assert {e.get("runner") for k, e in manifest.stages.items() if k != "ingest"} == {"ray"}
    assert "trainer 'gaussian-avatar': ran as a Ray task on node" in caplog.text
    assert "run folder shared" in caplog.text
    assert re.search(r"trainer 'gaussian-avatar': ran as a Ray task on node \S+, run folder shared \(the task began "
                     r"\d+\.\d s after it was submitted, the stage \d+\.\d s later, and ran \d+\.\d s\)", caplog.text)
    here, there = _published(trained_here), _published(root)
    assert sorted(there) == sorted(here)
    different = [rel for rel in here if here[rel] != there[rel]]
    assert different == [], "bit-identical outputs"
    assert manifest.stages["trainer"]["metrics"]["psnr"] == Manifest.load(trained_here).stages["trainer"]["metrics"]["psnr"]
    # the stage's own log lines come back into the run log
    assert "trainer" in (root / ".being" / "log.txt").read_text()


def test_a_node_that_cannot_see_the_run_folder_gets_it_shipped(cluster, prepared_face5, trained_here, tmp_path,
                                                               being_testdata, caplog):
    root = tmp_path / "run"
    shutil.copytree(prepared_face5, root)
    far = _config(runner={"resources": {"far": 1}})  # only the hidden node offers 'far'
    with caplog.at_level("INFO", logger="being"):
        pipeline = Pipeline(root, far, load_registry())
        pipeline.train()
        out = pipeline.render(being_testdata / "audio" / "videoretalking_audio1.wav", tmp_path / "says.mp4")
    assert "does not see" in caplog.text and "shipping the inputs with the task" in caplog.text
    assert "trainer 'gaussian-avatar': ran as a Ray task on node" in caplog.text and "run folder shipped (" in caplog.text
    assert "trainer:render 'gaussian-avatar': ran as a Ray task" in caplog.text
    assert "refiner 'unet': ran as a Ray task on node" in caplog.text
    assert "refiner:refine 'unet': ran as a Ray task on node" in caplog.text
    here, there = _published(trained_here), _published(root)
    assert {rel: there[rel] == here[rel] for rel in here if rel.startswith("avatar/")} == \
        {rel: True for rel in here if rel.startswith("avatar/")}
    ref = tmp_path / "ref.mp4"
    Pipeline(trained_here, _config(), load_registry()).render(being_testdata / "audio" / "videoretalking_audio1.wav", ref)
    assert out.read_bytes() == ref.read_bytes()
    assert not (root / ".being" / "stages" / "trainer" / "work" / "out").exists()


def test_a_stage_that_needs_a_gpu_the_cluster_lacks_is_a_clear_error(cluster, prepared_copy):
    from being_core.errors import StageFailed

    gpu = _config("stages.trainer.config.device=cuda", runner={"resources": {"far": 1}})
    with pytest.raises(StageFailed) as err:
        Pipeline(prepared_copy, gpu, load_registry()).run_one(StageKind.TRAINER)
    assert str(err.value) == ("trainer 'gaussian-avatar' needs 1 GPU(s), Ray resource 'far' x 1 on one node, and no "
                              "live node of the Ray cluster has that; add such a node, or set runner_options.gpus: 0 "
                              "where the stage can run on the CPU")
    assert Manifest.load(prepared_copy).stages["trainer"]["status"] != "done"
    assert not (prepared_copy / "avatar").exists()


def test_a_task_given_a_gpu_gets_a_worker_process_of_its_own(cluster):
    """Ray reuses idle workers and sets CUDA_VISIBLE_DEVICES anew for each task, but a process that has initialised
    CUDA keeps the cards it saw first: a stage given a GPU in a reused worker would use another task's card."""
    import ray
    from being_ray.runner import task_function

    def pid() -> int:
        return os.getpid()

    gpu = {"num_cpus": 1, "num_gpus": 1, "resources": {"near": 1}}
    pids = [ray.get(task_function(pid, gpu).options(**gpu).remote(), timeout=120) for _ in range(3)]
    assert len(set(pids)) == 3, pids


def _batch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "being"), "batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_local_starts_a_ray_instance_of_its_own_beside_a_running_cluster(cluster):
    """`ray start` left a cluster running on this machine (the fixture's): 'local' must not join it."""
    probe = ("import json, ray; from being_ray.runner import connect; connect('local'); "
             "print(json.dumps([len([n for n in ray.nodes() if n['Alive']]), ray.cluster_resources().get('near', 0)]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, 0]


def test_trainers_per_gpu_gives_the_trainer_its_share_of_a_card():
    from being_ray.batch import on_ray

    config = on_ray(_config(), load_registry(), "local", trainers_per_gpu=3)
    trainer = config.stages[StageKind.TRAINER]
    assert (trainer.runner.cls.name, trainer.runner_options.gpus, trainer.runner_options.inner) == ("ray", 0.3333,
                                                                                                  "inprocess")
    assert all(config.stages[k].runner_options.gpus is None for k in config.stages if k != StageKind.TRAINER)
    assert config.source == "ray test config (every stage on Ray, 3 trainers per GPU)"
    # a trainer the config already puts on Ray keeps its other options
    mine = on_ray(_config(runner={"address": "head:6379", "cpus": 4}), load_registry(), "local", 2)
    options = mine.stages[StageKind.TRAINER].runner_options
    assert (options.address, options.cpus, options.gpus) == ("head:6379", 4, 0.5)


def test_trainers_per_gpu_without_ray_is_a_usage_error(face5, tmp_path):
    proc = _batch(str(face5), "-o", str(tmp_path / "out"), "--trainers-per-gpu", "2")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    assert ("--trainers-per-gpu shares the GPUs of a Ray cluster; give --ray too (without it the batch trains one "
            "subject at a time)") in " ".join(output.split())
    assert not (tmp_path / "out").exists()


def test_a_batch_survives_a_lost_node_and_a_bad_clip(cluster, face5, tmp_path):
    config = tmp_path / "batch.yaml"
    data = _config_data()
    data["stages"]["trainer"]["config"].update(coarse_iterations=300, fine_iterations=40, checkpoint_every=10)
    config.write_text(yaml.safe_dump(data))
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    out = tmp_path / "batch"
    proc = _batch(str(face5), str(bad), "-o", str(out), "-c", str(config), "--ray", cluster.address)
    checkpoint = out / face5.stem / ".being" / "stages" / "trainer" / "work" / "state" / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the trainer never wrote a checkpoint"
        time.sleep(0.2)
    time.sleep(1.0)
    cluster.kill_worker(cluster.gpu_port)  # the only node with a GPU, in the middle of training
    cluster.gpu_port = cluster.add_worker(gpus=1, resources={"near": 100})
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 3, output
    summary = json.loads((out / "batch.json").read_text())
    status = {s["name"]: (s["status"], s["error"]) for s in summary["subjects"]}
    assert status[face5.stem] == ("done", None)
    assert status["notes"][0] == "failed" and status["notes"][1].startswith(f"{bad} is not a video ffmpeg can read")
    assert "notes" in output and "1 of 2 subjects done, 1 failed" in output
    metrics = Manifest.load(out / face5.stem).stages["trainer"]["metrics"]
    assert metrics["resumed_from_step"] and metrics["resumed_from_step"] > 0, metrics

    again = _batch(str(face5), "-o", str(out), "-c", str(config), "--ray", cluster.address)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    subject = json.loads((out / "batch.json").read_text())["subjects"][0]
    assert (subject["status"], subject["ran"]) == ("up to date", [])
    # a prepared (here: trained) run folder given as such is its own subject, trained where it is, without Ray
    trained = _batch(f"{out / face5.stem}/", "-o", str(tmp_path / "again"), "-c", str(config))
    output, _ = trained.communicate(timeout=600)
    assert trained.returncode == 0, output
    subject = json.loads((tmp_path / "again" / "batch.json").read_text())["subjects"][0]
    assert (subject["name"], subject["root"], subject["status"]) == (face5.stem, str(out / face5.stem), "up to date")


def test_a_stage_in_its_image_inside_a_ray_task(cluster, prepared_face5, tmp_path, caplog):
    """runner_options.inner: docker, on the node that cannot see the run folder: the container runs on the
    shipped copy, and the result is the in-process one."""
    from being_docker import images

    if not any(images.client().images.list(name="being/teeth-landmarks")):
        pytest.fail("the teeth-landmarks image is not built; run `being images build --preprocess` (scripts/test.sh does)")
    here, there = tmp_path / "here", tmp_path / "there"
    for root in (here, there):
        shutil.copytree(prepared_face5, root)
    teeth = ["stages.teeth_segmenter.impl=landmarks", "stages.teeth_segmenter.config={}"]
    Pipeline(here, _config(*teeth), load_registry()).run_one(StageKind.TEETH_SEGMENTER)
    boxed = _config(*teeth, runner={"resources": {"far": 1}, "inner": "docker", "inner_options": {"cpus": 1}})
    with caplog.at_level("INFO", logger="being"):
        entry = Pipeline(there, boxed, load_registry()).run_one(StageKind.TEETH_SEGMENTER)
    assert "teeth_segmenter 'landmarks': ran as a Ray task on node" in caplog.text and "shipped (" in caplog.text
    ours, theirs = Manifest.load(here).stages["teeth_segmenter"], entry
    assert theirs["outputs"] == ours["outputs"] and len(ours["outputs"]) > 100
    # the container's log came back with the shipped work folder; in-process there is none
    log = ".being/stages/teeth_segmenter/work/stage.log"
    assert (there / log).is_file() and not (here / log).exists()
