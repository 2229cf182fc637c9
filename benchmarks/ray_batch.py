"""`being batch` on Ray across the GPUs of one machine, against the same subjects one after another on one GPU.

Here (prepared subjects, e.g. ``being batch clips/*.mp4 -o subjects --prepare-only --set ingest.size=256``):

    python -m benchmarks.ray_batch carry SUBJECT_RUN... [--dest .gpu]

There (a GPU box without network: Python 3.12 and a CUDA torch, nothing else of ours), with the command
``carry`` prints:

    PYTHONPATH=$PWD python3 -P -m benchmarks.ray_batch run .gpu $OUT --modes sequential:8,ray:8:4 [--kill]

``run`` trains copies of the carried subjects with the real CLI: ``sequential:N`` is ``being batch`` of the
first N subjects without Ray (in-process, one GPU; ``sequential:A-B`` the subjects A to B-1, to split a long
baseline over calls; ``sequential:N:T`` with ``OMP_NUM_THREADS=T``, the threads Ray gives a trainer task);
``ray:N:G`` the same N with ``--ray local`` on G GPUs (``CUDA_VISIBLE_DEVICES``), and
``ray:N:G:F`` with F GPUs per trainer (0.5: ``--trainers-per-gpu 2``). Every mode
trains fresh copies with the same seeds; ``nvidia-smi`` samples every card's utilisation once a second. ``--kill``
then trains on Ray again and SIGKILLs the Ray worker process of one trainer once it has written a checkpoint: the
batch must still finish, that trainer resuming. Results go to ``OUT/ray_batch.json``: wall time and throughput
per mode, per-subject held-out metrics (identical across modes is the claim), utilisation per card over time.

On a machine without a GPU, the whole job (prepare and train) of a few clips on a two-node Ray cluster of this
machine (one CPU per node), against the same batch without Ray:

    python -m benchmarks.ray_batch local CLIP... --out OUT [-c cpu-small]

``carry`` writes DEST (ignored by git): wheels of being-core and the plugins (being-ray included) for CPython
3.12, gsplat and the pure-Python needs, imageio-ffmpeg with its binary xz-compressed, Ray's wheel repacked as
``ray.tar.xz`` without what a batch never imports (Java jars, RLlib, Data, Serve, Tune, Train; 25 MB instead of
79), and ``subjects/``: each run folder packed by ``tools/gpu/pack.py`` (frames as H.264), rebuilt there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

TRAIN = {"device": "cuda", "tensorboard": False}  # the trainer's default schedule unless --schedule
RAY_DROP = ("ray/jars", "ray/rllib", "ray/data", "ray/serve", "ray/tune", "ray/train", "ray/llm")
RAY_DEPS = ("click", "filelock", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs",
            "protobuf==4.25.9", "msgpack", "packaging", "requests", "urllib3", "idna", "charset-normalizer",
            "certifi")


# --- here ---------------------------------------------------------------------------------------------------


def carry(runs: list[Path], dest: Path) -> None:
    from tools.gpu import carry as base

    wheels = dest / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    base.download(["gsplat==1.5.3", *[f"{n}=={__import__('importlib.metadata').metadata.version(n)}"
                                      for n in base.PACKAGES], *RAY_DEPS], wheels)
    base.being_wheels(wheels)
    base.carry_ffmpeg(dest)
    if not (dest / "ray.tar.xz").is_file():
        _repack_ray(dest)
    from tools.gpu import pack as packing

    for run in runs:
        if not (dest / "subjects" / run.name / "being.json").is_file():
            packing.pack(run, dest / "subjects" / run.name)
    base.check_fits(dest)
    print(f'carry: ["{dest}"]; command:\nPYTHONPATH=$PWD python3 -P -m benchmarks.ray_batch run {dest} $OUT '
          f'--modes sequential:{len(runs)},ray:{len(runs)}:4 --kill')


def _repack_ray(dest: Path) -> None:
    import tempfile
    import zipfile

    from tools.gpu import carry as base

    with tempfile.TemporaryDirectory() as scratch:
        base.download(["ray==2.60.0"], Path(scratch))
        tree = Path(scratch) / "tree"
        with zipfile.ZipFile(next(Path(scratch).glob("ray-*.whl"))) as whl:
            for info in whl.infolist():
                if not info.filename.startswith(RAY_DROP):
                    path = whl.extract(info, tree)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(path, mode)
        with tarfile.open(dest / "ray.tar.xz", "w:xz", preset=9) as tar:
            for child in sorted(tree.iterdir()):
                tar.add(child, arcname=child.name)


# --- there --------------------------------------------------------------------------------------------------


def setup(carried: Path) -> dict[str, str]:
    """Install what was carried into /tmp/site (once per machine); the environment to run being with."""
    site = Path("/tmp/site")
    if not (site / "ray").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, sorted((carried / "whl").glob("*.whl")))], check=True)
        shutil.copytree(carried / "py" / "imageio_ffmpeg", site / "imageio_ffmpeg", dirs_exist_ok=True)
        import lzma

        with lzma.open(carried / "ffmpeg.xz") as src, open("/tmp/ffmpeg", "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod("/tmp/ffmpeg", 0o755)
        with tarfile.open(carried / "ray.tar.xz") as tar:
            tar.extractall(site, filter="fully_trusted")  # our own repack of the Ray wheel: keep its modes
    env = {**os.environ, "PYTHONPATH": f"{site}:{Path.cwd()}", "IMAGEIO_FFMPEG_EXE": "/tmp/ffmpeg",
           "TORCH_CUDA_ARCH_LIST": "9.0", "PYTHONUNBUFFERED": "1", "PATH": f"{site}/bin:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    return env


class GpuSampler:
    """``nvidia-smi`` utilisation of every card, once a second, while a mode runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            out = _smi("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")
            self.samples.append((round(time.monotonic() - self._started, 1),
                                 [int(v) for v in out.split() if v.strip().isdigit()]))

    def summary(self) -> dict:
        cards = max((len(s) for _, s in self.samples), default=0)
        per_card = [[s[c] for _, s in self.samples if len(s) > c] for c in range(cards)]
        return {"mean_percent": [round(sum(v) / len(v), 1) if v else None for v in per_card],
                "series": [[t, *s] for t, s in self.samples]}


def _smi(*query: str) -> str:
    """nvidia-smi's answer ('' where there is none: --smoke on a CPU machine)."""
    try:
        return subprocess.run(["nvidia-smi", *query, *(["--format=csv,noheader"] if len(query) == 1 else [])],
                              capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return ""


def being(env: dict[str, str], *args: str, log: Path) -> tuple[int, float]:
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-P", "-m", "being_core", *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    return code, round(time.monotonic() - started, 1)


def fresh(base: Path, names: list[str], dest: Path) -> list[Path]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    return [Path(shutil.copytree(base / n, dest / n)) for n in names]


def run(carried: Path, out: Path, modes: list[str], kill: bool, extra: list[Path], smoke: bool = False,
        schedule: tuple[int, int] | None = None, stop_after: float | None = None) -> None:
    """``smoke``: the same steps on this machine's CPU with a tiny schedule and nothing installed, to check the
    script before spending GPU time."""
    env = setup(carried) if not smoke else {**os.environ, "PYTHONPATH": str(Path.cwd()), "RAY_USAGE_STATS_ENABLED": "0",
                                            "RAY_AUTH_MODE": "disabled"}
    train = TRAIN if not smoke else {**TRAIN, "device": "cpu", "coarse_iterations": 30, "fine_iterations": 10,
                                     "resolution": 64, "batch_size": 2}
    if schedule:
        train = {**train, "coarse_iterations": schedule[0], "fine_iterations": schedule[1]}
    work = Path("/tmp/bench-smoke" if smoke else "/tmp/bench")
    base = work / "subjects"
    for packed in sorted(p for folder in (carried, *extra) if (folder / "subjects").is_dir()
                         for p in (folder / "subjects").iterdir()):
        if not (base / packed.name / "being.json").is_file():
            subprocess.run([sys.executable, "-P", "-m", "tools.gpu.pack", "unpack", str(packed),
                            str(base / packed.name)], env=env, check=True)
    names = sorted(p.name for p in base.iterdir() if (p / "being.json").is_file())
    config = work / "train.yaml"
    config.write_text(json.dumps({"stages": {"face_tracker": {"impl": "mediapipe"}, "audio_encoder": {"impl": "mel"},
                                             "au_extractor": {"impl": "landmarks"},
                                             "teeth_segmenter": {"impl": "landmarks"},
                                             "trainer": {"impl": "gaussian-avatar", "config": train}}}))
    report_path = out / "ray_batch.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"train": train, "modes": {}}
    gpus = _smi("--query-gpu=name").splitlines()
    report["machine"] = f"{len(gpus)} x {gpus[0] if gpus else '?'}, {os.cpu_count()} CPU cores"
    # gsplat compiles its CUDA code on first use: do that once per machine, untimed, on a copy of a subject
    if not (work / "warm.done").is_file():
        warm = fresh(base, names[:1], work / "warm")
        print("warm-up (gsplat JIT):", being(env, "train", str(warm[0]), "-c", str(config), "-q",
                                             "--set", "stages.trainer.config.coarse_iterations=20",
                                             "--set", "stages.trainer.config.fine_iterations=5",
                                             log=out / "warm.log"), flush=True)
        (work / "warm.done").write_text("")
    began = time.monotonic()
    for mode in modes:
        if stop_after is not None and time.monotonic() - began > stop_after:
            print(f"{mode}: not started ({stop_after:g} s had passed)", flush=True)
            continue
        kind, n, *g = mode.split(":")
        first, last = (int(v) for v in n.split("-")) if "-" in n else (0, int(n))
        subjects = fresh(base, names[first:last], work / mode.replace(":", "-"))
        args = ["batch", *map(str, subjects), "-o", str(work / f"{mode.replace(':', '-')}-out"), "-c", str(config)]
        menv = dict(env)
        if kind == "ray":
            args += ["--ray", "local"]
            menv["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(int(g[0])))
            if len(g) > 1:  # F GPUs per trainer: 1/F trainers share a card
                args += ["--trainers-per-gpu", str(round(1 / float(g[1])))]
        else:
            menv["CUDA_VISIBLE_DEVICES"] = "0"
            if g:  # sequential:N:T: torch's CPU threads, as Ray gives a trainer task (OMP_NUM_THREADS = its CPUs)
                menv["OMP_NUM_THREADS"] = g[0]
        with GpuSampler() as sampler:
            code, seconds = being(menv, *args, log=out / f"{mode.replace(':', '-')}.log")
        summary = json.loads((work / f"{mode.replace(':', '-')}-out" / "batch.json").read_text())
        report["modes"][mode] = {
            "exit": code, "seconds": seconds, "subjects_per_hour": round((last - first) / seconds * 3600, 1),
            "task_timing": {s.name: _task_timing(s) for s in subjects},
            "gpu_utilisation": sampler.summary(),
            "subjects": {s["name"]: {"status": s["status"], "seconds": s["seconds"],
                                     **{k: s["metrics"].get(k) for k in ("psnr", "ssim", "lmd", "steps",
                                                                         "train_seconds", "setup_seconds", "eval_seconds",
                                                                         "resumed_from_step")}}
                         for s in summary["subjects"]}}
        print(mode, code, seconds, flush=True)
        report_path.write_text(json.dumps(report, indent=1))
    if kill:
        report["kill"] = kill_one_trainer(env, base, names, work, config, out)
        report_path.write_text(json.dumps(report, indent=1))


def _task_timing(root: Path) -> list[float] | None:
    """[seconds from submission to the task's start, from there to the stage's start, the stage's run] of the
    subject's trainer task, from its run log (None without Ray)."""
    log = root / ".being" / "log.txt"
    found = re.findall(r"trainer 'gaussian-avatar': ran as a Ray task on node \S+, run folder \S+ \(the task began "
                       r"(\S+) s after it was submitted, the stage (\S+) s later, and ran (\S+) s\)",
                       log.read_text() if log.is_file() else "")
    return [float(v) for v in found[-1]] if found else None


def kill_one_trainer(env: dict[str, str], base: Path, names: list[str], work: Path, config: Path,
                     out: Path) -> dict:
    """Train two subjects on Ray; once both trainers have written a checkpoint, SIGKILL the Ray worker process of
    one of them (its title is the task's name). The batch must finish, that trainer resuming from its checkpoint."""
    subjects = fresh(base, names[:2], work / "kill")
    args = [sys.executable, "-P", "-m", "being_core", "batch", *map(str, subjects), "-o", str(work / "kill-out"),
            "-c", str(config), "--ray", "local", "--set", "stages.trainer.config.checkpoint_every=100"]
    with open(out / "kill.log", "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        checkpoints = [s / ".being" / "stages" / "trainer" / "work" / "state" / "checkpoint.pt" for s in subjects]
        while not all(c.exists() for c in checkpoints) and proc.poll() is None:
            time.sleep(0.2)
        workers = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and _title(int(p)).startswith(
            b"ray::being trainer"))
        if workers:
            os.kill(workers[0], signal.SIGKILL)
        code = proc.wait()
    steps = {s.name: json.loads((s / "being.json").read_text())["stages"]["trainer"]["metrics"].get(
        "resumed_from_step") for s in subjects}
    return {"killed_pid": workers[:1], "exit": code, "resumed_from_step": steps,
            "status": [s["status"] for s in json.loads((work / "kill-out" / "batch.json").read_text())["subjects"]]}


def _title(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def local(clips: list[Path], out: Path, config: str) -> None:
    """Two ``ray start`` nodes of one CPU each on this machine; ``being batch`` with and without ``--ray``."""
    import socket

    ray = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "config": config, "clips": [c.name for c in clips]}
    runs = out / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    code, seconds = being(env, "batch", *map(str, clips), "-o", str(runs / "sequential"), "-c", config,
                          log=out / "sequential.log")
    report["sequential"] = {"exit": code, "seconds": seconds,
                            "subjects": json.loads((runs / "sequential" / "batch.json").read_text())["subjects"]}
    try:
        subprocess.run([str(ray), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                       env=env, check=True, capture_output=True)
        subprocess.run([str(ray), "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"], env=env, check=True,
                       capture_output=True)
        code, seconds = being(env, "batch", *map(str, clips), "-o", str(runs / "ray"), "-c", config, "--ray",
                              f"127.0.0.1:{port}", log=out / "ray.log")
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True)
    report["ray_two_nodes"] = {"exit": code, "seconds": seconds,
                               "subjects": json.loads((runs / "ray" / "batch.json").read_text())["subjects"]}
    (out / "ray_batch_local.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v["seconds"] for k, v in report.items() if isinstance(v, dict)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("carry")
    c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--dest", type=Path, default=Path(".gpu"))
    r = sub.add_parser("run")
    r.add_argument("carried", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--modes", default="sequential:8,ray:8:4")
    r.add_argument("--kill", action="store_true")
    r.add_argument("--extra", type=Path, action="append", default=[], help="more carried subjects/ folders")
    r.add_argument("--smoke", action="store_true", help="a tiny CPU run here, to check the script")
    r.add_argument("--stop-after", type=float, help="start no further mode after this many seconds")
    r.add_argument("--schedule", help="COARSE,FINE trainer steps (default: the trainer's own)")
    lo = sub.add_parser("local")
    lo.add_argument("clips", nargs="+", type=Path)
    lo.add_argument("--out", type=Path, required=True)
    lo.add_argument("-c", "--config", default="cpu-small")
    args = ap.parse_args()
    if args.command == "local":
        local(args.clips, args.out, args.config)
    elif args.command == "carry":
        carry(args.runs, args.dest)
    else:
        schedule = tuple(int(v) for v in args.schedule.split(",")) if args.schedule else None
        run(args.carried, args.out, [m for m in args.modes.split(",") if m], args.kill, args.extra, args.smoke,
            schedule, args.stop_after)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
