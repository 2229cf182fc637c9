"""Training (coarse: static Gaussians with densify/prune; fine: deformation over batches of frames),
checkpoints that resume, then the held-out evaluation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .avatar import Avatar
from .data import FrameCache, Frames, RunData, load_tensors, pick_device, smooth_audio
from .densify import densify_and_prune
from .evaluate import clip_sync, evaluate
from .losses import composite, losses, psnr
from .perceptual import load_lpips


def loop(loader):
    while True:
        yield from loader


#: torch's CPU threads while the trainer feeds a GPU. Its loop does little on the CPU, and a Ray task (given
#: OMP_NUM_THREADS = its 2 CPUs) trained the same subjects 1.4x faster than in-process runs with all 64 threads of
#: the machine (docs/benchmarks.md, "being batch on Ray"); in-process now does as the Ray task did.
GPU_CPU_THREADS = 2


def train(ctx, cfg) -> dict:
    """Train on ``ctx.root``; writes avatar/model.pt, avatar/metrics.json, avatar/val.mp4 into ctx.out. On a GPU
    with at most :data:`GPU_CPU_THREADS` CPU threads for torch, as many as before once it returns."""
    entered = time.monotonic()
    device = pick_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type != "cuda" or threads <= GPU_CPU_THREADS:  # the CPU path: every thread, nothing changed
        return _train(ctx, cfg, device, entered)
    torch.set_num_threads(GPU_CPU_THREADS)
    try:
        return _train(ctx, cfg, device, entered)
    finally:
        torch.set_num_threads(threads)


def _train(ctx, cfg, device: torch.device, entered: float) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = RunData.from_context(ctx, cfg.resolution)
    data.audio = smooth_audio(data.audio, cfg.audio_smooth)
    clip_lag, out_of_sync = clip_sync(data.root, data.fps)
    if out_of_sync:
        ctx.log.warning("%s", out_of_sync)
    perceptual = load_lpips(cfg.lpips_weights, device) if cfg.lpips_weights else None
    av = Avatar(data, cfg, device)
    ckpt_path = ctx.state / "checkpoint.pt"
    step, started = 0, time.monotonic()
    writer = _tensorboard(ctx.output("avatar/tb/.keep").parent) if cfg.tensorboard else None
    resumed = resumed_ema = None
    if ckpt_path.is_file():
        ckpt = load_tensors(ckpt_path, "the training checkpoint (.being/stages/trainer/work/state/checkpoint.pt)")
        av.load(ckpt["model"])
        step, resumed = ckpt["step"], ckpt["step"]
        resumed_ema = ckpt.get("ema")
        torch.set_rng_state(ckpt["rng"])
        ctx.log.info("resuming training at step %d from %s", step, ckpt_path)
    total = cfg.coarse_iterations + cfg.fine_iterations
    workers = cfg.num_workers if cfg.num_workers >= 0 else min(8, max(0, (os.cpu_count() or 2) // 2))
    gen = torch.Generator().manual_seed(cfg.seed + step)
    expr_gen = torch.Generator().manual_seed(cfg.seed + step + 7919)  # its own: the frame order stays the same
    pose_gen = torch.Generator().manual_seed(cfg.seed + step + 104729)  # likewise

    cache = frame_cache(data, cfg, device, workers, ctx)

    def loader(batch):
        if cache:  # ids only; pixels come from the cache (same order as streaming with num_workers 0)
            return torch.utils.data.DataLoader(data.train_ids, batch_size=batch, shuffle=True, generator=gen)
        return torch.utils.data.DataLoader(Frames(data, data.train_ids), batch_size=batch, shuffle=True,
                                           generator=gen, num_workers=workers, drop_last=False,
                                           persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def next_batch(batches):
        if cache:
            ids = next(batches)
            return (ids, *cache.batch(ids))
        return next(batches)

    history = []
    with ctx.progress.task("trainer: gaussian avatar", total=total, unit="it") as task:
        task.advance(step)
        for phase, first, last, batch in (("coarse", 0, cfg.coarse_iterations, 1),
                                          ("fine", cfg.coarse_iterations, total, cfg.batch_size)):
            if step >= last:
                continue
            fine = phase == "fine"
            opt = av.optimizer(fine)
            base_lrs = [group["lr"] for group in opt.param_groups]
            ema = EMA(av, cfg.ema_decay) if fine and cfg.ema_decay > 0 else None
            if ema and resumed_ema is not None:
                ema.load(resumed_ema)
            grad_accum = torch.zeros(len(av.gauss), device=device)
            counts = torch.zeros(len(av.gauss), device=device)
            batches = loop(loader(batch))
            while step < last:
                ids, image, mask, bg = next_batch(batches)
                image, bg = (t.to(device, non_blocking=True).float().div_(255) for t in (image, bg))
                mask = mask.to(device, non_blocking=True).float()
                if cfg.target == "composite":
                    image = composite(image, mask, bg)
                camera = noisy_pose(data, ids, cfg.pose_noise, pose_gen) if fine and cfg.pose_noise > 0 else None
                rgb, alpha, means2d = av.render(ids, bg, deform=fine, camera=camera)
                loss, parts = losses(rgb, alpha, image, mask, data.lips[ids].to(device, non_blocking=True), cfg, fine,
                                     perceptual)
                if fine and cfg.lambda_expr > 0:
                    vertices = torch.randint(len(data.points), (cfg.expr_points,), generator=expr_gen)
                    target = data.expression[ids.cpu()][:, vertices].to(device, non_blocking=True).float()
                    l_expr = (av.motion(ids, vertices, camera) - target).abs().mean()
                    loss = loss + cfg.lambda_expr * l_expr
                    parts["expr"] = l_expr.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if fine:  # exponential decay to lr_final of the starting rates over the fine stage
                    frac = cfg.lr_final ** ((step - first) / max(1, last - first))
                    for group, lr in zip(opt.param_groups, base_lrs):
                        group["lr"] = lr * frac
                    if ema:
                        ema.update()
                task.advance()
                if not fine and step < cfg.densify_until and means2d.grad is not None:
                    g2 = means2d.grad.detach().reshape(-1, len(av.gauss), 2)
                    g2 = g2 * torch.tensor([data.width / 2, data.height / 2], device=device)
                    norm = g2.norm(dim=-1).sum(0)
                    grad_accum += norm
                    counts += (norm > 0).float()
                    if step >= cfg.densify_from and step % cfg.densify_interval == 0:
                        info = densify_and_prune(av, grad_accum, counts, cfg, opt)  # Adam's moments carried
                        ctx.log.info("step %d: densify %s", step, info)
                        grad_accum = torch.zeros(len(av.gauss), device=device)
                        counts = torch.zeros(len(av.gauss), device=device)
                if step % cfg.log_every == 0 or step == last:
                    p = psnr(rgb.detach(), image)
                    history.append({"step": step, "phase": phase, "loss": loss.item(), "psnr": p,
                                    "gaussians": len(av.gauss)})
                    task.note(f"{phase} loss {loss.item():.4f} PSNR {p:.2f} dB, {len(av.gauss)} Gaussians")
                    if writer:
                        writer.add_scalar(f"{phase}/loss", loss.item(), step)
                        for k, v in parts.items():
                            writer.add_scalar(f"{phase}/{k}", float(v), step)
                        writer.add_scalar(f"{phase}/psnr", p, step)
                if step % cfg.checkpoint_every == 0 or step == last:
                    save_checkpoint(ckpt_path, av, step, ema)
            if ema:
                ema.apply()  # the averaged weights are the model that is saved and evaluated
    seconds = time.monotonic() - started
    model_path = ctx.output("avatar/model.pt")
    torch.save({"model": av.state(), "config": cfg.model_dump(mode="json"), "width": data.width,
                "height": data.height, "audio": {"encoder": data.features.encoder, "dim": data.features.dim,
                                                 "window": data.features.window, "file": data.features.file},
                "eye_source": data.eye_source, "gaussians": len(av.gauss)}, model_path)
    evaluated = time.monotonic()
    metrics = evaluate(ctx, av, data, cache, perceptual, cfg.silence)
    metrics["clip_av_offset_frames"] = clip_lag
    metrics.update({"train_seconds": round(seconds, 1), "setup_seconds": round(started - entered, 1),
                    "eval_seconds": round(time.monotonic() - evaluated, 1), "steps": step, "resumed_from_step": resumed,
                    "gaussians": len(av.gauss), "device": str(device), "backend": av.raster.__name__,
                    "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                    if device.type == "cuda" else None, "history": history[-20:]})
    ctx.output("avatar/metrics.json").write_text(json.dumps(metrics, indent=2))
    if writer:
        writer.close()
    return metrics


def noisy_pose(data: RunData, ids: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """The deformer's pose inputs of frames ``ids`` with Gaussian noise of ``std`` added (the inputs are already in
    units of the clip's spread of each number): a short clip's frames each have a pose of their own, and a deformer
    given exact poses can learn every training frame's mouth from its pose instead of from its audio."""
    camera = data.camera[ids.cpu()]
    return camera + std * torch.randn(camera.shape, generator=gen)


def frame_cache(data: RunData, cfg, device: torch.device, workers: int, ctx) -> FrameCache | None:
    """The frames in memory on the training device when ``cfg.frame_cache`` asks for it (or, for 'auto', when a
    GPU has room for them in a quarter of its free memory); None streams them from disk."""
    ids = list(range(data.n))
    need = FrameCache.nbytes(data, len(ids))
    if cfg.frame_cache == "off" or (cfg.frame_cache == "auto" and (
            device.type != "cuda" or need > torch.cuda.mem_get_info(device)[0] // 4)):
        return None
    ctx.log.info("decoding %d frames into %s memory (%.2f GB)", len(ids), device.type, need / 1e9)
    return FrameCache(data, ids, device, workers, ctx.progress)


def save_checkpoint(path: Path, av: Avatar, step: int, ema: EMA | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": av.state(), "step": step, "rng": torch.get_rng_state(),
                "ema": ema.state() if ema else None}, tmp)
    os.replace(tmp, path)


class EMA:
    """An exponential moving average of every trained tensor (Gaussians and deformer) over the fine stage;
    the average generalises better to held-out audio than the last step's weights."""

    def __init__(self, av: Avatar, decay: float):
        self.decay = decay
        self.tensors = [*av.gauss.parameters(), *av.deformer.parameters()]
        self.shadow = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [t.detach() for t in self.tensors], 1 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        for t, s in zip(self.tensors, self.shadow):
            t.copy_(s)

    def state(self) -> list[torch.Tensor]:
        return [s.cpu() for s in self.shadow]

    def load(self, state: list[torch.Tensor]) -> None:
        self.shadow = [s.to(t.device) for s, t in zip(state, self.tensors)]


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))
