"""Held-out quality of trainer settings, several trainings side by side on one GPU (run by hand; results
in docs/benchmarks.md).

    python benchmarks/gpu_quality.py PACK OUT NAME:key=value,key=value [NAME:...]

Unpacks the packed run (benchmarks/gpu_pack.py) once, builds gsplat once, then trains every variant in
its own process at the same time (the GPU has room for several 4 GB trainings) and writes
OUT/<NAME>.json with the stage's metrics (held-out PSNR/SSIM) and the wall time.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "plugins" / "trainer-gaussian-avatar"), str(HERE / "plugins" / "face-mediapipe"),
                str(HERE / "benchmarks")]

RUN = Path("/tmp/being-run")


def parse(spec: str) -> tuple[str, dict]:
    import yaml

    name, _, body = spec.partition(":")
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def train_variant(name: str, overrides: dict, out: Path, workers: int) -> None:
    import torch

    import being_trainer_gaussian_avatar.video as video
    from being_core.stage import StageContext
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar import train as train_module
    from gpu_trainer import PrintReporter

    def write_video(path, frames, fps=25.0, audio=None):  # no ffmpeg wheel on the GPU box
        for _ in frames:
            pass
        Path(path).write_bytes(b"")

    video.write_video = write_video
    cfg = AvatarConfig(**{"num_workers": workers, "tensorboard": False, "log_every": 500, **overrides})
    stage_out, state = out / f"{name}-stage", Path(f"/tmp/being-state-{name}")
    stage_out.mkdir(parents=True, exist_ok=True)
    state.mkdir(exist_ok=True)
    ctx = StageContext(root=RUN, out=stage_out, config=cfg, manifest=json.loads((RUN / "being.json").read_text()),
                       progress=PrintReporter().r, state=state)
    t = time.perf_counter()
    metrics = train_module.train(ctx, cfg)
    metrics.pop("history", None)
    result = {"variant": name, "overrides": overrides, "wall_seconds": round(time.perf_counter() - t, 1),
              "device": torch.cuda.get_device_name(0), **metrics}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def main() -> None:
    import gpu_pack
    from gpu_trainer import compare_rasterisers

    pack, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    variants = [parse(s) for s in sys.argv[3:]]
    if not (RUN / "being.json").is_file():  # a warm machine keeps the unpacked run
        gpu_pack.unpack(pack, RUN)
    compare_rasterisers()  # builds gsplat's extension once, before the trainings start
    if len(variants) == 1:
        train_variant(*variants[0], out, 12)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=train_variant, args=(name, ov, out, max(2, 14 // len(variants))))
             for name, ov in variants]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
