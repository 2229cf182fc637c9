"""GPU benchmark of trainer 'gaussian-avatar' (run by hand on a CUDA machine; results in docs/benchmarks.md).

    python benchmarks/gpu_trainer.py PACK OUT [--fine N]

1. gsplat against the PyTorch reference rasteriser: images and gradients on random Gaussians.
2. The real training (the stage's own train()) on a packed run (benchmarks/gpu_pack.py): time, held-out
   PSNR/SSIM, peak GPU memory.
3. Fine-stage iterations/s at batch 32 and rendering frames/s (deformer + gsplat) with the trained model.
Writes OUT/gpu_results.json after every step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "plugins" / "trainer-gaussian-avatar"), str(HERE / "plugins" / "face-mediapipe"),
                str(HERE / "benchmarks")]

import torch  # noqa: E402

RESULTS: dict = {}


def dump(out: Path) -> None:
    (out / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1))


def timed(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def compare_rasterisers() -> dict:
    from being_trainer_gaussian_avatar.raster import rasterize_gsplat, rasterize_reference

    torch.manual_seed(0)
    dev, n, size = torch.device("cuda"), 3000, 128
    means = torch.randn(1, n, 3, device=dev) * torch.tensor([0.5, 0.5, 0.3], device=dev) + torch.tensor([0, 0, 3.0], device=dev)
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
    rel = {k: float((gr - gg).norm() / gr.norm().clamp(min=1e-12))
           for k, gr, gg in zip(("means", "quats", "scales", "opacities", "colors"), grads["reference"], grads["gsplat"])}
    return {"gaussians": n, "size": size, "rgb_max_abs": float(rgb_diff.max()), "rgb_mean_abs": float(rgb_diff.mean()),
            "alpha_max_abs": float(alpha_diff.max()), "grad_relative_error": rel}


class PrintReporter:
    """Progress as a few printed lines (the GPU box has no terminal)."""

    def __init__(self):
        from being_core.progress import Reporter

        class R(Reporter):
            def on_note(self, task_id, text):
                print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

        self.r = R()


def fine_step_speed(run: Path, cfg, model: Path | None) -> dict:
    """One fine step (deformer + gsplat + losses + Adam) at batch 32 with the frames already on the GPU."""
    import numpy as np
    from being_trainer_gaussian_avatar.data import RunData
    from being_trainer_gaussian_avatar.train import Avatar, losses

    data = RunData(run, json.loads((run / "being.json").read_text()), cfg.resolution)
    av = Avatar(data, cfg, torch.device("cuda"))
    if model is not None:
        av.load(torch.load(model, weights_only=False)["model"])
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


def main() -> None:
    pack, out = Path(sys.argv[1]), Path(sys.argv[2])
    fine = int(sys.argv[sys.argv.index("--fine") + 1]) if "--fine" in sys.argv else 3000
    out.mkdir(parents=True, exist_ok=True)
    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    t = time.perf_counter()
    RESULTS["raster_check"] = compare_rasterisers()
    RESULTS["raster_check"]["seconds_incl_gsplat_jit"] = round(time.perf_counter() - t, 1)
    dump(out)
    print(json.dumps(RESULTS), flush=True)

    import gpu_pack

    run = Path("/tmp/being-run")
    t = time.perf_counter()
    gpu_pack.unpack(pack, run)
    RESULTS["unpack_seconds"] = round(time.perf_counter() - t, 1)
    dump(out)

    import being_trainer_gaussian_avatar.video as video
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar import train as train_module

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:  # the GPU box has no ffmpeg wheel; write the side-by-side video with OpenCV instead
        def write_video(path, frames, fps=25.0, audio=None):
            import cv2

            frames = list(frames)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
            for f in frames:
                writer.write(f[..., ::-1])
            writer.release()

        video.write_video = write_video
    from being_core.stage import StageContext

    cfg = AvatarConfig(fine_iterations=fine, num_workers=12, tensorboard=False, log_every=250)
    RESULTS["fine_step_initial_model"] = fine_step_speed(run, cfg, None)
    dump(out)
    stage_out = out / "stage"
    stage_out.mkdir(exist_ok=True)
    state = Path("/tmp/being-state")
    state.mkdir(exist_ok=True)
    ctx = StageContext(root=run, out=stage_out, config=cfg, manifest=json.loads((run / "being.json").read_text()),
                       progress=PrintReporter().r, state=state)
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    metrics = train_module.train(ctx, cfg)
    RESULTS["train"] = {k: v for k, v in metrics.items() if k != "history"}
    RESULTS["train"]["wall_seconds"] = round(time.perf_counter() - t, 1)
    RESULTS["train"]["schedule"] = {"coarse": cfg.coarse_iterations, "fine": cfg.fine_iterations, "batch": cfg.batch_size}
    RESULTS["history"] = metrics["history"]
    dump(out)

    RESULTS["fine_step_trained_model"] = fine_step_speed(run, cfg, stage_out / "avatar" / "model.pt")
    dump(out)
    from being_trainer_gaussian_avatar.data import RunData
    from being_trainer_gaussian_avatar.train import Avatar

    data = RunData(run, ctx.manifest, None)
    av = Avatar(data, cfg, torch.device("cuda"))
    av.load(torch.load(stage_out / "avatar" / "model.pt", weights_only=False)["model"])
    with torch.no_grad():
        for batch in (1, 32):
            b_ids = torch.arange(batch)
            sec = timed(lambda: av.render(b_ids, None, deform=True), 20)
            RESULTS[f"render_batch{batch}_fps"] = round(batch / sec, 1)
    RESULTS["peak_gpu_memory_gb_total"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    dump(out)
    import shutil

    for name in ("val.mp4", "metrics.json"):
        shutil.copy(stage_out / "avatar" / name, out / name)
    print(json.dumps(RESULTS, indent=1), flush=True)


if __name__ == "__main__":
    main()
