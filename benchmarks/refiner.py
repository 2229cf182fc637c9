"""What a refiner buys: the trainer's held-out metrics with and without it, on the same frames, and its cost
(run by hand; results in docs/benchmarks.md).

    python -m benchmarks.refiner RUN OUT [--refiner unet] [--set KEY=VALUE ...] [--throughput]

RUN is a prepared run folder (on a GPU box without mediapipe: unpacked by ``tools/gpu/pack.py``). With the run's
own config plus ``stages.refiner.impl`` and the ``--set`` overrides (the CLI's syntax), it runs what ``being
train`` runs: the trainer (cached when already trained the same way), its replay of the run's frames, the
refiner's fit and the trainer's score of the refined held-out frames. Writes OUT/refiner.json (every step's
metrics and seconds, and ``benchmarks.error_map``'s split of the held-out error with and without the refiner)
and OUT/val-refined.mp4 (render | refined | real, the held-out frames), and prints the side-by-side table:
every protocol's PSNR, SSIM, LPIPS when weights were given, the mouth, and flicker (the mean change between
consecutive frames: a refiner must not add any beyond the real frames').

``--throughput``: then the live render path's frames per second at batch 1 to 64 (``benchmarks.serve``'s timing:
deformation, rasterisation, the frames on the host), without the refiner and with it, on the same opened run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COMPARED = ("psnr", "ssim", "lpips", "psnr_gt_imgs", "psnr_full_frame", "ssim_full_frame", "lmd", "mouth_corr",
            "mouth_bias_pct", "flicker", "flicker_real")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--refiner", default="unet")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--throughput", action="store_true", help="also time the live render path with and without it")
    args = ap.parse_args()

    from being_core.config import load
    from being_core.manifest import Manifest
    from being_core.pipeline import Pipeline
    from being_core.plugins import load_registry
    from being_core.protocol import write_json_atomic

    registry = load_registry()
    config = load(args.run / "config.yaml", registry, [f"stages.refiner.impl={args.refiner}", *args.sets])
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    Pipeline(args.run, config, registry).train()
    wall = time.monotonic() - started
    stages = Manifest.load(args.run).stages
    steps = {name: {"seconds": stages[name].get("seconds"), "metrics": stages[name].get("metrics")}
             for name in ("trainer", "trainer:replay", "refiner", "trainer:score") if name in stages}
    import torch

    result = {"run": str(args.run), "refiner": args.refiner, "sets": args.sets, "wall_seconds": round(wall, 1),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "steps": steps}
    write_json_atomic(args.out / "refiner.json", result)  # kept should the timing fail
    if args.throughput:
        from being_core.live import open_run
        from benchmarks.serve import time_batches

        live = open_run(args.run, registry)
        result["throughput"] = {"renderer": time_batches(live, refine=False),
                                "renderer + refiner": time_batches(live, refine=True)}
        write_json_atomic(args.out / "refiner.json", result)
    side_by_side(args.run, args.out / "val-refined.mp4")
    result["error_map"] = where_the_error_is(args.out / "val-refined.mp4")
    write_json_atomic(args.out / "refiner.json", result)
    before, after = stages["trainer"]["metrics"], stages["trainer:score"]["metrics"]
    print(f"| metric | {stages['trainer']['impl']} | + refiner '{args.refiner}' |")
    print("|---|---|---|")
    for key in COMPARED:
        if before.get(key) is not None or after.get(key) is not None:
            print(f"| {key} | {before.get(key)} | {after.get(key)} |")
    for name, step in steps.items():
        print(f"{name}: {step['seconds']} s")
    for name, r in result["error_map"].items():
        print(f"{name} vs real frames: constant over the frames {r['constant_share']:.1%}"
              + (f", mouth region {r['mouth_share']:.1%}" if "mouth_share" in r else ""))
    for what, rows in result.get("throughput", {}).items():
        print(f"{what}: " + ", ".join(f"batch {r['batch']} {r['frames_per_s']} frames/s" for r in rows))


def where_the_error_is(video: Path) -> dict:
    """``benchmarks.error_map`` of the side-by-side video, without the mouth region where mediapipe is missing
    (a GPU box)."""
    import importlib.util

    from benchmarks.error_map import error_map

    result, _ = error_map(video, panels=3, mouth=importlib.util.find_spec("mediapipe") is not None)
    return result


def side_by_side(run: Path, path: Path) -> None:
    """The held-out frames as render | refined | real."""
    import numpy as np
    from PIL import Image

    from being_core.frames import VideoWriter, read_video
    from being_core.stage import REFINED_VAL, REPLAY_DIR

    facts = json.loads((run / "being.json").read_text())["dataset"]
    ids = iter(range(facts["val_start"], facts["n_frames"]))
    with VideoWriter(path, facts["fps"]) as video:
        for rendered, refined in zip(read_video(run / f"{REPLAY_DIR}/val.mkv"), read_video(run / REFINED_VAL)):
            h, w = rendered.shape[1:3]
            real = np.stack([np.asarray(Image.open(run / "ori_imgs" / f"{next(ids)}.jpg").convert("RGB")
                                        .resize((w, h), Image.BOX)) for _ in rendered])
            video.write(np.concatenate([rendered, refined, real], 2))


if __name__ == "__main__":
    main()
