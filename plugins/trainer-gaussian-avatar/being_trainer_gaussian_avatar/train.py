"""Training (coarse: static Gaussians with densify/prune; fine: deformation over batches of frames),
checkpoints that resume, evaluation on the held-out frames."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .data import FrameCache, Frames, RunData, load_tensors, smooth_audio
from .model import Deformer, Gaussians, deformed
from .perceptual import load_lpips
from .raster import pick_backend


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of ``[B, H, W, 3]`` images in [0, 1] (11x11 Gaussian window, sigma 1.5, applied separably)."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    g = torch.exp(-((torch.arange(11, device=a.device, dtype=a.dtype) - 5.0) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    row, col = g.view(1, 1, 1, 11).expand(3, 1, 1, 11), g.view(1, 1, 11, 1).expand(3, 1, 11, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, row, padding=(0, 5), groups=3), col, padding=(5, 0), groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()


def db(mse: float) -> float:
    """PSNR in dB of a mean squared error of values in [0, 1] (100 dB at most)."""
    return -10 * math.log10(max(mse, 1e-10))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return db(float(((a - b) ** 2).mean()))


class Avatar:
    """Gaussians + deformer + rasteriser for one run, on one device."""

    def __init__(self, data: RunData, cfg, device: torch.device):
        self.data, self.cfg, self.device = data, cfg, device
        self.gauss = Gaussians(data.points, extra=cfg.init_extra, seed=cfg.seed).to(device)
        pts = self.gauss.means.detach().cpu()
        pad = (pts.max(0).values - pts.min(0).values) * 0.15
        self.deformer = Deformer(pts.min(0).values - pad, pts.max(0).values + pad, data.features.dim,
                                 data.features.window, cfg.width, cfg.heads, cfg.plane_resolution,
                                 cfg.plane_channels).to(device)
        self.raster = pick_backend(cfg.backend, device)
        self.extent = float((pts.max(0).values - pts.min(0).values).norm())

    def render(self, ids: torch.Tensor, backgrounds: torch.Tensor | None, deform: bool, audio=None, eye=None,
               camera=None):
        """Render frames ``ids`` (cameras of those training frames) over per-pixel ``backgrounds [B, H, W, 3]``;
        ``audio``/``eye``/``camera`` (the deformer's pose input) override the frames' own. Returns ``(rgb, alpha,
        means2d)``."""
        d = self.data
        ids_cpu = ids.cpu()
        offsets = None
        if deform:
            audio = (d.audio[ids_cpu] if audio is None else audio).to(self.device)
            eye = (d.eye[ids_cpu] if eye is None else eye).to(self.device)
            camera = (d.camera[ids_cpu] if camera is None else camera).to(self.device)
            if not self.cfg.camera_token:
                camera = torch.zeros_like(camera)
            offsets = self.deformer(self.gauss.means, audio, eye, camera)
        means, quats, scales, opac, colours = deformed(self.gauss, offsets, len(ids_cpu))
        rgb, alpha, means2d = self.raster(means, quats, scales, opac, colours, d.viewmats[ids_cpu].to(self.device),
                                          d.Ks[ids_cpu].to(self.device), d.width, d.height)
        if backgrounds is not None:
            rgb = rgb + (1 - alpha) * backgrounds
        return rgb, alpha, means2d

    def optimizer(self, fine: bool) -> torch.optim.Optimizer:
        c, g = self.cfg, self.gauss
        scale = 0.1 if fine else 1.0  # the fine stage mostly trains the deformer
        groups = [{"params": [g.means], "lr": c.lr_means * self.extent * scale},
                  {"params": [g.log_scales], "lr": 5e-3 * scale}, {"params": [g.quats], "lr": 1e-3 * scale},
                  {"params": [g.opacity_logits], "lr": 5e-2 * scale}, {"params": [g.colour_logits], "lr": 1e-2 * scale}]
        if fine:
            groups += [{"params": self.deformer.triplane.parameters(), "lr": c.lr_deformer * 10},
                       {"params": [p for n, p in self.deformer.named_parameters() if not n.startswith("triplane")],
                        "lr": c.lr_deformer}]
        return torch.optim.Adam(groups, eps=1e-15)

    def state(self) -> dict:
        return {"gaussians": {k: v.detach().cpu() for k, v in self.gauss.state_dict().items()},
                "deformer": {k: v.detach().cpu() for k, v in self.deformer.state_dict().items()}}

    def load(self, state: dict) -> None:
        self.gauss.replace(**{k: v.to(self.device) for k, v in state["gaussians"].items()})
        self.deformer.load_state_dict(state["deformer"])


def densify_and_prune(av: Avatar, grad_accum: torch.Tensor, counts: torch.Tensor, cfg) -> dict:
    """3DGS-style: clone small / split large Gaussians with a high view-space gradient, prune transparent ones."""
    g = av.gauss
    with torch.no_grad():
        avg = grad_accum / counts.clamp(min=1)
        max_scale = g.log_scales.exp().max(1).values
        grow = avg > cfg.densify_grad
        room = max(0, cfg.max_gaussians - len(g))
        if grow.sum() > room:
            grow &= avg >= avg[grow].topk(room).values.min() if room else torch.zeros_like(grow)
        small = grow & (max_scale <= 0.01 * av.extent)
        large = grow & ~small
        params = {k: getattr(g, k).detach() for k in ("means", "log_scales", "quats", "opacity_logits", "colour_logits")}
        new = {k: [v, v[small]] for k, v in params.items()}
        if large.any():
            from .raster import quat_to_rotmat

            std = params["log_scales"][large].exp()
            for _ in range(2):
                offset = (quat_to_rotmat(params["quats"][large]) @ (torch.randn_like(std) * std)[..., None])[..., 0]
                new["means"].append(params["means"][large] + offset)
                new["log_scales"].append(params["log_scales"][large] - math.log(1.6))
                for k in ("quats", "opacity_logits", "colour_logits"):
                    new[k].append(params[k][large])
            keep = torch.cat([~large, torch.ones(int(small.sum()) + 2 * int(large.sum()), dtype=torch.bool,
                                                 device=large.device)])
        else:
            keep = torch.ones(len(g) + int(small.sum()), dtype=torch.bool, device=grow.device)
        merged = {k: torch.cat(v)[keep] for k, v in new.items()}
        alive = (torch.sigmoid(merged["opacity_logits"][:, 0]) > cfg.prune_opacity) & (
            merged["log_scales"].exp().max(1).values < 0.2 * av.extent)
        g.replace(**{k: v[alive] for k, v in merged.items()})
    return {"cloned": int(small.sum()), "split": int(large.sum()), "count": len(g)}


def loop(loader):
    while True:
        yield from loader


def train(ctx, cfg) -> dict:
    """Train on ``ctx.root``; writes avatar/model.pt, avatar/metrics.json, avatar/val.mp4 into ctx.out."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = RunData.from_context(ctx, cfg.resolution)
    data.audio = smooth_audio(data.audio, cfg.audio_smooth)
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
                rgb, alpha, means2d = av.render(ids, bg, deform=fine)
                loss, parts = losses(rgb, alpha, image, mask, data.lips[ids].to(device, non_blocking=True), cfg, fine,
                                     perceptual)
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
                        info = densify_and_prune(av, grad_accum, counts, cfg)
                        ctx.log.info("step %d: densify %s", step, info)
                        opt = av.optimizer(fine)
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
    metrics = evaluate(ctx, av, data, cache, perceptual)
    metrics.update({"train_seconds": round(seconds, 1), "steps": step, "resumed_from_step": resumed,
                    "gaussians": len(av.gauss), "device": str(device), "backend": av.raster.__name__,
                    "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                    if device.type == "cuda" else None, "history": history[-20:]})
    ctx.output("avatar/metrics.json").write_text(json.dumps(metrics, indent=2))
    if writer:
        writer.close()
    return metrics


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


def losses(rgb, alpha, image, mask, lips, cfg, fine: bool, perceptual=None):
    """L1 + D-SSIM + head-mask alpha BCE (+ lip-box L1, and LPIPS when ``perceptual`` is given, in the fine
    stage). ``lips [B, 4]`` are (x0, y0, x1, y1) boxes on the same device. The alpha loss leaves out a band of
    ``cfg.alpha_band`` pixels outside the mask. Returns the loss and its parts as tensors (no host sync)."""
    l1 = (rgb - image).abs().mean()
    d_ssim = 1 - ssim(rgb, image)
    weight = None
    if cfg.alpha_band > 0:
        k = max(1, round(cfg.alpha_band * mask.shape[-1] / 512))
        grown = F.max_pool2d(mask[:, None], 2 * k + 1, stride=1, padding=k)[:, 0]
        weight = 1 - (grown - mask)  # 0 in the band, 1 inside the mask and beyond the band
    l_alpha = F.binary_cross_entropy(alpha[..., 0].clamp(1e-5, 1 - 1e-5), mask, weight=weight)
    loss = l1 + cfg.lambda_dssim * d_ssim + cfg.lambda_alpha * l_alpha
    parts = {"l1": l1.detach(), "dssim": d_ssim.detach(), "alpha": l_alpha.detach()}
    if fine and cfg.lambda_lip > 0:
        h, w = rgb.shape[1:3]
        ys = torch.arange(h, device=rgb.device)[None, :, None]
        xs = torch.arange(w, device=rgb.device)[None, None, :]
        x0, y0, x1, y1 = (lips[:, k, None, None] for k in range(4))
        box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).float()
        per_frame = ((rgb - image).abs().mean(-1) * box).sum((1, 2)) / box.sum((1, 2)).clamp(min=1)
        lip = per_frame.mean()
        loss = loss + cfg.lambda_lip * lip
        parts["lip_l1"] = lip.detach()
    if fine and perceptual is not None and cfg.lambda_lpips > 0:
        lp = perceptual(rgb, image).mean()
        loss = loss + cfg.lambda_lpips * lp
        parts["lpips"] = lp.detach()
    return loss, parts


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


def composite(image: torch.Tensor, head: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """GaussianTalker's ground truth: the real frame's head pixels (``head [B, H, W]``, 0/1) over the per-frame
    ``background [B, H, W, 3]`` (torso over bc.jpg), which replaces the real ``image`` everywhere else."""
    return torch.where(head[..., None] > 0, image, background)


@torch.no_grad()
def evaluate(ctx, av: Avatar, data: RunData, cache: FrameCache | None = None, perceptual=None) -> dict:
    """Metrics on the held-out frames (the val split), a side-by-side video, and LMD where mediapipe is
    installed (mouth landmarks of rendered vs real frames, in pixels at the training size).

    Each render is compared with three ground truths, one per protocol in use:

    * ``psnr``/``ssim``: the real head over the frame's background (torso over bc.jpg), which is the ground
      truth GaussianTalker trains and evaluates with (its ``render_from_batch`` builds ``gt_image * head_mask
      + bg_w_torso * ~head_mask``), so these are the numbers to compare with its published ones;
    * ``psnr_gt_imgs``: the frame with the pixels the parsing calls background replaced by bc.jpg
      (``gt_imgs``, as ER-NeRF and TalkingGaussian do);
    * ``psnr_full_frame``/``ssim_full_frame``: the real frame (``ori_imgs``) as it is. No render can match a
      background that changes during the clip (an animated studio wall) or hair the parsing calls
      background; ``psnr_full_frame_ceiling`` is what a perfect head scores here, i.e. how much of that
      error the background alone accounts for;
    * ``lpips`` (with ``lpips_weights``; otherwise null): LPIPS (AlexNet) against the ground truth of ``psnr``;
    * the mouth (:func:`lip_sync`, where mediapipe is installed): opening correlation and bias, mouth LMD,
      audio-video offset, closed in silence, correlation with the speech envelope."""
    from .video import write_video

    sums = dict.fromkeys(("psnr", "psnr_gt_imgs", "psnr_full_frame", "psnr_full_frame_ceiling"), 0.0)  # squared errors
    ssims = dict.fromkeys(("ssim", "ssim_full_frame"), 0.0)  # SSIM x frames
    lpips_sum = 0.0
    preds, gts, values = [], [], 0
    for chunk in np.array_split(np.array(data.val_ids), max(1, len(data.val_ids) // 8)):
        ids = torch.as_tensor(chunk)
        if cache:
            image, head, bg = (t.float() for t in cache.batch(ids))
            image, bg = image / 255, bg / 255
        else:
            frames = [data.pixels(i) for i in chunk]
            image, head, bg = (torch.from_numpy(np.stack([f[k] for f in frames])).to(av.device) for k in range(3))
        rgb = av.render(ids, bg, deform=True)[0].clamp(0, 1)
        label = torch.from_numpy(np.stack([data.background_label(i) for i in chunk]))[..., None].to(av.device)
        target = composite(image, head, bg)
        sums["psnr"] += float(((rgb - target) ** 2).sum())
        sums["psnr_gt_imgs"] += float(((rgb - torch.where(label, bg, image)) ** 2).sum())
        sums["psnr_full_frame"] += float(((rgb - image) ** 2).sum())
        sums["psnr_full_frame_ceiling"] += float(((target - image) ** 2).sum())
        ssims["ssim"] += float(ssim(rgb, target)) * len(chunk)
        ssims["ssim_full_frame"] += float(ssim(rgb, image)) * len(chunk)
        if perceptual is not None:
            lpips_sum += float(perceptual(rgb, target).sum())
        values += image.numel()
        preds.append((rgb * 255).round().byte().cpu())
        gts.append((image * 255).round().byte().cpu())
    pred, gt = torch.cat(preds).numpy(), torch.cat(gts).numpy()
    out: dict[str, float | int | None] = {"val_frames": len(data.val_ids)}
    out.update({k: round(db(se / values), 3) for k, se in sums.items()})
    out.update({k: round(v / len(data.val_ids), 4) for k, v in ssims.items()})
    out["lpips"] = round(lpips_sum / len(data.val_ids), 4) if perceptual is not None else None
    out.update(lip_sync(data.root, data.val_ids, data.fps, pred, gt))
    write_video(ctx.output("avatar/val.mp4"), np.concatenate([pred, gt], 2))
    return out


def lip_sync(root: Path, ids: list[int], fps: float, pred: np.ndarray, gt: np.ndarray) -> dict:
    """The mouth of the held-out renders against the real frames and against the speech under them
    (:mod:`.lipsync`; ``*_real`` is the real frames' own score, for reference). All None when mediapipe is
    not installed here."""
    from being_core.audio import SAMPLE_RATE, read_wav

    from . import lipsync

    keys = ("mouth_corr", "mouth_bias_pct", "lmd", "av_offset", "silent_frames", "silent_closed",
            "silent_closed_real", "envelope_corr", "envelope_corr_real")
    try:
        rendered, real = lipsync.mouth_points(pred), lipsync.mouth_points(gt)
    except ImportError:
        return dict.fromkeys(keys)
    out = lipsync.against_real(rendered, real)
    wav = root / "aud.wav"
    if wav.is_file():
        lo = round(ids[0] / fps * SAMPLE_RATE)
        samples = read_wav(wav)[lo:lo + round(len(ids) / fps * SAMPLE_RATE)]
        out.update(lipsync.against_speech(rendered, samples, SAMPLE_RATE, fps))
        own = lipsync.against_speech(real, samples, SAMPLE_RATE, fps)
        out.update(silent_closed_real=own["silent_closed"], envelope_corr_real=own["envelope_corr"])
    return {k: out.get(k) for k in keys}
