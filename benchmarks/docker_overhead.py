"""What running stages in containers costs (run by hand; results in docs/benchmarks.md).

    python -m benchmarks.docker_overhead VIDEO [--repeat N]

1. Per image: its size, and the start-to-exit time of the container for an empty request (``being-stage``
   on a request file with no content: the interpreter starts, the plugins load, the request is refused),
   next to the same command in a local subprocess.
2. ``being prepare`` of VIDEO (the shared 5 s clip was used) with every preprocessing stage on the docker
   runner, twice (the first with the images' /cache folders emptied, the second with them as the first
   left them), then in-process: total wall time and each stage's seconds.

Needs a running daemon and the images (`being images build --preprocess`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from being_core.config import load
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry
from being_core.stage import PREPARE_STAGES
from being_docker import images


def empty_request_seconds(c, tag: str, folder: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        container = c.containers.create(tag, ["/req/request.json", "--root", "/req", "--progress", "none"],
                                        network_disabled=True, read_only=True, tmpfs={"/tmp": ""},
                                        volumes={str(folder): {"bind": "/req", "mode": "ro"}})
        container.start()
        code = container.wait()["StatusCode"]
        container.remove(force=True)
        times.append(time.perf_counter() - t)
        assert code != 0  # the empty request is refused, after the plugins loaded
    return statistics.median(times)


def local_seconds(folder: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "being_core", "stage", str(folder / "request.json"), "--root",
                        str(folder), "--progress", "none"], capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def prepare_seconds(video: Path, runner: str, folder: Path) -> dict:
    registry = load_registry()
    overrides = [f"stages.{k}.runner={runner}" for k in PREPARE_STAGES]
    if runner != "docker":  # the docker config's limits are options of the docker runner only
        overrides += [f"stages.{k}.runner_options={{}}" for k in PREPARE_STAGES]
    resolved = load("docker", registry, overrides)
    t = time.perf_counter()
    manifest = Pipeline(folder, resolved, registry).prepare(video)
    total = time.perf_counter() - t
    return {"total_s": round(total, 1),
            "stages_s": {k: manifest.stages[str(k)]["seconds"] for k in PREPARE_STAGES},
            "outputs": {k: manifest.stages[str(k)]["outputs"] for k in map(str, PREPARE_STAGES)}}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path, help="e.g. ../shared/testdata/videos/videoretalking_face5.mp4")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    repeat, video = args.repeat, args.video
    c = images.client()
    results: dict = {"images": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "empty"
        folder.mkdir()
        (folder / "request.json").write_text("{}")
        folder.chmod(0o755)
        results["local_subprocess_empty_request_s"] = round(local_seconds(folder, repeat), 2)
        for row in images.listing(c, load_registry()):
            if row["status"] != "current":
                continue
            results["images"][row["tag"]] = {"size_mb": row["size_mb"],
                                             "empty_request_s": round(empty_request_seconds(c, row["tag"], folder,
                                                                                            repeat), 2)}
            print(row["tag"], results["images"][row["tag"]], flush=True)
        shutil.rmtree(images.cache_dir() / "containers", ignore_errors=True)  # start with cold /cache folders
        runs = {r: prepare_seconds(video, r.split("-")[0], Path(tmp) / r)
                for r in ("docker-cold-cache", "docker-warm-cache", "inprocess")}
        runs["docker"] = runs["docker-warm-cache"]
    results["prepare"] = {"video": video.name, **{r: {k: v for k, v in d.items() if k != "outputs"}
                                                  for r, d in runs.items() if r != "docker"}}
    results["prepare"]["identical_outputs"] = {k: runs["docker"]["outputs"][k] == runs["inprocess"]["outputs"][k]
                                               for k in runs["docker"]["outputs"]}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
