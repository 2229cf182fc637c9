"""The fit: the avatar's renders of the training frames (the trainer's replay) against the real frames,
learned on random crops around the head with L1 + D-SSIM (+ LPIPS) inside the head region."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from being_core.frames import frame_pairs
from being_core.stage import REPLAY_DIR

from .net import UNet, refine, region, ssim

#: the weights file, in the run folder (safetensors: tensors and a few settings, nothing executable)
WEIGHTS = "refiner/unet.safetensors"
FORMAT = "being-refiner-unet/1"


def load_pairs(ctx, device: torch.device):
    """``(render [N, H, W, 3], alpha [N, H, W], real [N, H, W, 3])`` uint8 on ``device``: the training split's
    renders from the replay and the real frames at the render's size."""
    from PIL import Image

    frames, alpha = f"{REPLAY_DIR}/train.mkv", f"{REPLAY_DIR}/train_alpha.mkv"
    rgb_parts, alpha_parts = [], []
    for rgb, a in frame_pairs(ctx.input(frames), ctx.input(alpha)):
        rgb_parts.append(torch.from_numpy(rgb).to(device))
        alpha_parts.append(torch.from_numpy(a).to(device))
    rgb, a = torch.cat(rgb_parts), torch.cat(alpha_parts)
    ids = ctx.dataset.train_ids
    if len(rgb) != len(ids):
        raise ValueError(f"{frames} holds {len(rgb)} frames, but the run has {len(ids)} training frames")
    h, w = rgb.shape[1:3]
    real = torch.empty_like(rgb)
    for k, i in enumerate(ids):
        path = ctx.input(f"ori_imgs/{i}.jpg")
        try:
            image = Image.open(path).convert("RGB")
        except OSError as exc:
            raise ValueError(f"{path} cannot be read: {exc}") from None
        if image.size != (w, h):
            image = image.resize((w, h), Image.BOX)
        real[k] = torch.from_numpy(np.array(image)).to(device)
    return rgb, a, real


def head_centres(alpha: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` (row, column) centre of each frame's head (alpha above one half); the frame's centre without one."""
    n, h, w = alpha.shape
    mask = (alpha > 127).float()
    count = mask.sum((1, 2)).clamp(min=1)
    rows = (mask.sum(2) * torch.arange(h, device=alpha.device)).sum(1) / count
    cols = (mask.sum(1) * torch.arange(w, device=alpha.device)).sum(1) / count
    empty = mask.sum((1, 2)) == 0
    rows[empty], cols[empty] = h / 2, w / 2
    return torch.stack([rows, cols], 1)


def crops(rgb, alpha, real, centres, idx, size: int, gen: torch.Generator):
    """Float crops ``size`` x ``size`` around the heads of frames ``idx``, jittered by up to a quarter of it."""
    h, w = rgb.shape[1:3]
    jitter = (torch.rand((len(idx), 2), generator=gen) - 0.5) * (size / 2)
    top = (centres[idx].cpu() - size / 2 + jitter).round().long()
    top[:, 0].clamp_(0, h - size)
    top[:, 1].clamp_(0, w - size)
    out = []
    for i, (y, x) in zip(idx.tolist(), top.tolist()):
        out.append((rgb[i, y:y + size, x:x + size], alpha[i, y:y + size, x:x + size], real[i, y:y + size, x:x + size]))
    x, a, y = (torch.stack(parts).float() / 255 for parts in zip(*out))
    return x, a, y


def fit(ctx, cfg, device: torch.device) -> dict:
    """Train the U-Net; writes :data:`WEIGHTS` into the stage's output. Returns the fit's metrics."""
    from safetensors.torch import save_file

    torch.manual_seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.monotonic()
    rgb, alpha, real = load_pairs(ctx, device)
    loaded = time.monotonic() - started
    centres = head_centres(alpha)
    size = min(cfg.crop, *rgb.shape[1:3])
    net = UNet(cfg.width, cfg.levels).to(device)
    perceptual = None
    if cfg.lpips_weights:
        try:
            from being_trainer_gaussian_avatar.perceptual import load_lpips
        except ImportError:
            raise ValueError("lpips_weights needs the LPIPS network of being-trainer-gaussian-avatar: "
                             "pip install 'being-refiner-unet[lpips]'") from None
        perceptual = load_lpips(cfg.lpips_weights, device, "stages.refiner.config.lpips_weights")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    first = last = None
    with ctx.progress.task("refiner: unet fit", total=cfg.steps, unit="it") as task:
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(len(rgb), (cfg.batch_size,), generator=gen)
            x, a, y = crops(rgb, alpha, real, centres, idx, size, gen)
            out = refine(net, x, a, cfg.dilate, clamp=False)
            w = region(a, cfg.dilate).permute(0, 2, 3, 1)
            l1 = (w * (out - y).abs()).sum() / (3 * w.sum()).clamp(min=1)
            loss = l1 + cfg.lambda_ssim * (1 - ssim(out.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)))
            if perceptual is not None:
                loss = loss + cfg.lambda_lpips * perceptual(out, y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            for group in opt.param_groups:  # cosine decay to zero
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            value = float(loss.detach())
            first = value if first is None else first
            last = value
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append({"step": step, "loss": round(value, 5), "l1": round(float(l1.detach()), 5)})
                task.note(f"loss {value:.4f}")
            task.advance()
    path = Path(ctx.output(WEIGHTS))
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "width": str(cfg.width), "levels": str(cfg.levels),
                        "dilate": str(cfg.dilate)})
    return {"train_frames": len(rgb), "steps": cfg.steps, "lpips_in_loss": perceptual is not None,
            "loss_first": round(first or 0.0, 5),
            "loss_last": round(last or 0.0, 5), "load_seconds": round(loaded, 1),
            "fit_seconds": round(time.monotonic() - started, 1), "device": str(device), "history": history[-10:]}


def load(folder: Path, device: torch.device) -> tuple[UNet, int]:
    """``(net, dilate)`` from :data:`WEIGHTS` under ``folder``; a ValueError names the file when it is missing
    or not this refiner's weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{path} does not exist: fit the refiner first (being train)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not weights of refiner 'unet' (format {meta.get('format')!r}, want {FORMAT!r})")
    try:
        net = UNet(int(meta["width"]), int(meta["levels"]))
        net.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} does not match the refiner's network: {str(exc).splitlines()[0]}") from None
    return net.to(device).eval(), int(meta.get("dilate", "0"))
