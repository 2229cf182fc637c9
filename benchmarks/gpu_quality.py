"""Held-out quality of trainer settings, several trainings side by side on one or more GPUs (run by hand;
results in docs/benchmarks.md).

    python benchmarks/gpu_quality.py PACK OUT NAME:key=value,key=value [NAME:...]

Unpacks the packed run (benchmarks/gpu_pack.py) once, builds gsplat once, then trains every variant in
its own process at the same time, spread round-robin over the visible GPUs (one GPU has room for several
4 GB trainings, but they share its compute), and writes OUT/<NAME>.json with the stage's metrics (held-out
PSNR/SSIM under each protocol) and the wall time. Name repeats of one setting with different seeds
``<setting>-s<seed>`` (e.g. ``base-s0:seed=0 base-s1:seed=1``): the summary printed at the end gives each
setting's mean and spread, since one run cannot tell a 0.5 dB gain from run-to-run noise.
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


def train_variant(name: str, overrides: dict, out: Path, workers: int, gpu: int | None = None) -> None:
    import os

    if gpu is not None:  # before torch initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import being_trainer_gaussian_avatar.video as video
    import torch
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar import train as train_module
    from gpu_trainer import PrintReporter

    from being_core.stage import StageContext

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
    else:
        import torch

        gpus = max(1, torch.cuda.device_count())
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=train_variant, args=(name, ov, out, max(2, 14 * gpus // len(variants)), k % gpus))
                 for k, (name, ov) in enumerate(variants)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    summarise(out, [name for name, _ in variants])


def summarise(out: Path, names: list[str]) -> None:
    """Mean and spread of each setting over its seeds (variants named ``<setting>-s<seed>``)."""
    import re
    import statistics

    groups: dict[str, list[dict]] = {}
    for name in names:
        path = out / f"{name}.json"
        if path.is_file():
            groups.setdefault(re.sub(r"-s\d+$", "", name), []).append(json.loads(path.read_text()))
    keys = ("psnr", "psnr_full_frame", "psnr_gt_imgs", "ssim", "lpips", "lmd")
    print("setting | runs | " + " | ".join(keys))
    for setting, runs in groups.items():
        cells = []
        for key in keys:
            vals = [r[key] for r in runs if r.get(key) is not None]
            cells.append("-" if not vals else f"{statistics.mean(vals):.3f}" +
                         (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""))
        print(f"{setting} | {len(runs)} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
