"""What training minimises and what evaluation reports: L1, D-SSIM, the head-mask alpha loss, the lip box,
LPIPS; PSNR; GaussianTalker's composite ground truth."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


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


def composite(image: torch.Tensor, head: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """GaussianTalker's ground truth: the real frame's head pixels (``head [B, H, W]``, 0/1) over the per-frame
    ``background [B, H, W, 3]`` (torso over bc.jpg), which replaces the real ``image`` everywhere else."""
    return torch.where(head[..., None] > 0, image, background)
