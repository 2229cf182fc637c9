"""GPU benchmark of trainer 'gaussian-avatar' (run by hand on a CUDA machine; results in docs/benchmarks.md).

    python -m benchmarks.gpu_trainer RUN OUT [--fine N]

RUN is a prepared run folder (on a GPU box without mediapipe: unpacked by ``tools/gpu/pack.py``).
1. gsplat against the PyTorch reference rasteriser: images and gradients on random Gaussians.
2. The real training, as ``being train RUN`` runs it (the pipeline, the in-process runner): time, held-out
   PSNR/SSIM, peak GPU memory.
3. Fine-stage iterations/s at batch 32 and rendering frames/s (deformer + gsplat) with the trained model.
Writes OUT/gpu_results.json after every step, and copies the trained avatar's val.mp4 and metrics.json to OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import PrintReporter, run_data, timed

RESULTS: dict[str, Any] = {}


def dump(out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1))


def compare_rasterisers() -> dict:
    """gsplat against the reference rasteriser on 3,000 random Gaussians at 128² (builds gsplat's kernels)."""
    from being_trainer_gaussian_avatar.raster import rasterize_gsplat, rasterize_reference

    torch.manual_seed(0)
    dev, n, size = torch.device("cuda"), 3000, 128
    centre = torch.tensor([0, 0, 3.0], device=dev)
    means = torch.randn(1, n, 3, device=dev) * torch.tensor([0.5, 0.5, 0.3], device=dev) + centre
    quats = torch.randn(1, n, 4, device=dev)
    scales = torch.rand(1, n, 3, device=dev) * 0.04 + 0.005
    opac = torch.rand(1, n, device=dev) * 0.8 + 0.1
    cols = torch.rand(1, n, 3, device=dev)
    view = torch.eye(4, device=dev)[None]
    K = torch.tensor([[[150.0, 0, 64], [0, 150.0, 64], [0, 0, 1]]], device=dev)
    w = torch.rand(1, size, size, 3, device=dev)
    out = {}
    grads = {}
    for name, fn in (("reference", rasterize_reference), ("gsplat", rasterize_gsplat)):
        args = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, cols)]
        rgb, alpha, _ = fn(*args, view, K, size, size)
        ((rgb * w).sum() + alpha.sum()).backward()
        out[name] = (rgb.detach(), alpha.detach())
        grads[name] = [a.grad for a in args]
    rgb_diff = (out["reference"][0] - out["gsplat"][0]).abs()
    alpha_diff = (out["reference"][1] - out["gsplat"][1]).abs()
    names = ("means", "quats", "scales", "opacities", "colors")
    rel = {k: float((gr - gg).norm() / gr.norm().clamp(min=1e-12))
           for k, gr, gg in zip(names, grads["reference"], grads["gsplat"])}
    return {"gaussians": n, "size": size, "rgb_max_abs": float(rgb_diff.max()), "rgb_mean_abs": float(rgb_diff.mean()),
            "alpha_max_abs": float(alpha_diff.max()), "grad_relative_error": rel}


def fine_step_speed(run: Path, cfg, model: Path | None) -> dict:
    """One fine step (deformer + gsplat + losses + Adam) at batch 32 with the frames already on the GPU."""
    import numpy as np
    from being_trainer_gaussian_avatar.avatar import Avatar
    from being_trainer_gaussian_avatar.losses import losses

    data = run_data(run, cfg.resolution)
    av = Avatar(data, cfg, torch.device("cuda"))
    if model is not None:
        av.load(torch.load(model, weights_only=True)["model"])
    ids = torch.arange(32)
    frames = [data.pixels(i) for i in range(32)]
    image, mask, bg = (torch.from_numpy(np.stack([f[k] for f in frames])).cuda() for k in range(3))
    lips = data.lips[ids].cuda()
    opt = av.optimizer(fine=True)

    def step():
        rgb, alpha, _ = av.render(ids, bg, deform=True)
        loss, _ = losses(rgb, alpha, image, mask, lips, cfg, True)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def forward_only():
        with torch.no_grad():
            av.render(ids, bg, deform=True)

    return {"batch": 32, "size": data.width, "gaussians": len(av.gauss), "it_per_s": round(1 / timed(step, 20), 2),
            "render_only_batches_per_s": round(1 / timed(forward_only, 20), 2)}


def render_speed(run: Path, cfg, model: Path) -> dict:
    """Frames/s of the trained avatar's deformation + rasterisation, one frame and 32 frames at a time."""
    from being_trainer_gaussian_avatar.avatar import Avatar

    av = Avatar(run_data(run, None), cfg, torch.device("cuda"))
    av.load(torch.load(model, weights_only=True)["model"])
    speeds = {}
    with torch.no_grad():
        for batch in (1, 32):
            ids = torch.arange(batch)
            speeds[f"render_batch{batch}_fps"] = round(batch / timed(lambda ids=ids: av.render(ids, None, deform=True),
                                                                     20), 1)
    return speeds


def train(run: Path, fine: int) -> dict:
    """``being train RUN`` with the run's own config and a few overrides, through the real pipeline."""
    from being_core.config import load
    from being_core.pipeline import Pipeline
    from being_core.plugins import load_registry

    registry = load_registry()
    overrides = [f"stages.trainer.config.{k}={v}" for k, v in
                 {"fine_iterations": fine, "num_workers": 12, "tensorboard": False, "log_every": 250}.items()]
    resolved = load(run / "config.yaml", registry, overrides)
    manifest = Pipeline(run, resolved, registry, PrintReporter(), force={"trainer"}).train()
    return manifest.stages["trainer"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a prepared run folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--fine", type=int, default=3000, help="fine-stage iterations")
    args = ap.parse_args()
    run, out = args.run.resolve(), args.out
    out.mkdir(parents=True, exist_ok=True)
    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    t = time.perf_counter()
    RESULTS["raster_check"] = compare_rasterisers()
    RESULTS["raster_check"]["seconds_incl_gsplat_jit"] = round(time.perf_counter() - t, 1)
    dump(out)

    from being_trainer_gaussian_avatar import AvatarConfig

    cfg = AvatarConfig(fine_iterations=args.fine, num_workers=12, tensorboard=False, log_every=250)
    RESULTS["fine_step_initial_model"] = fine_step_speed(run, cfg, None)
    dump(out)
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    entry = train(run, args.fine)
    RESULTS["train"] = {**entry["metrics"], "wall_seconds": round(time.perf_counter() - t, 1),
                        "schedule": {"coarse": cfg.coarse_iterations, "fine": cfg.fine_iterations,
                                     "batch": cfg.batch_size}}
    dump(out)
    model = run / "avatar" / "model.pt"
    RESULTS["fine_step_trained_model"] = fine_step_speed(run, cfg, model)
    RESULTS.update(render_speed(run, cfg, model))
    RESULTS["peak_gpu_memory_gb_total"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    dump(out)
    for name in ("val.mp4", "metrics.json"):
        shutil.copy(run / "avatar" / name, out / name)
    print(json.dumps(RESULTS, indent=1), flush=True)


if __name__ == "__main__":
    main()
