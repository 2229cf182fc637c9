"""The network: a small U-Net on the rendered frame and its alpha, predicting a correction that is applied
only inside the head region (the render's alpha, dilated), so every pixel outside it stays exactly as rendered."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class UNet(nn.Module):
    """``levels`` resolutions (``width`` channels at the top, doubling per level), skip connections, and a last
    convolution that starts at zero: before any training the refiner returns its input unchanged."""

    def __init__(self, width: int = 32, levels: int = 3):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.levels = levels
        self.down = nn.ModuleList([_block(4, chans[0]), *(_block(chans[i - 1], chans[i]) for i in range(1, levels))])
        self.pool = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans[:-1]])
        self.up = nn.ModuleList([_block(chans[i] + chans[i - 1], chans[i - 1]) for i in range(levels - 1, 0, -1)])
        self.out = nn.Conv2d(chans[0], 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, 4, H, W]`` (RGB in [0, 1] and alpha) to a correction ``[B, 3, H, W]``."""
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            if i < self.levels - 1:
                skips.append(h)
                h = self.pool[i](h)
        for block in self.up:
            skip = skips.pop()
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.out(h)


#: alpha below this is not the head: a splat's faint tail covers much of the frame with alpha of a few 1/255
HEAD_ALPHA = 0.1


def region(alpha: torch.Tensor, dilate: int) -> torch.Tensor:
    """``[B, H, W]`` alpha to the blend weight ``[B, 1, H, W]``: the alpha where it reaches :data:`HEAD_ALPHA`,
    grown by ``dilate`` pixels (a max filter), so the correction reaches the head's edge and its fringe; exactly
    0 farther out."""
    a = torch.where(alpha >= HEAD_ALPHA, alpha, torch.zeros_like(alpha))[:, None]
    if dilate > 0:
        a = F.max_pool2d(a, 2 * dilate + 1, stride=1, padding=dilate)
    return a.clamp(0, 1)


def head_box(w: torch.Tensor, levels: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the part of the frame the network must see for the blend weight ``w``
    ``[B, 1, H, W]``: the box around every pixel where ``w > 0`` in the batch, grown by more than the network's
    reach (a U-Net of ``levels`` levels sees fewer than ``5 * 2 ** levels`` pixels to each side), its corner on the
    network's grid (a multiple of ``2 ** (levels - 1)``), so every corrected pixel comes out as computed on the
    whole frame. The whole frame when ``w`` is 0 everywhere."""
    h, width = w.shape[-2:]
    step = 2 ** (levels - 1)
    margin = 16 * step
    rows = torch.nonzero(w.amax(dim=(0, 1, 3)) > 0)
    if len(rows) == 0:
        return 0, h, 0, width
    cols = torch.nonzero(w.amax(dim=(0, 1, 2)) > 0)
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    return (max(0, top - margin) // step * step, min(h, bottom + margin),
            max(0, left - margin) // step * step, min(width, right + margin))


def refine(net: UNet, rgb: torch.Tensor, alpha: torch.Tensor, dilate: int, clamp: bool = True) -> torch.Tensor:
    """``rgb`` ``[B, H, W, 3]`` and ``alpha`` ``[B, H, W]`` in [0, 1] to refined ``[B, H, W, 3]``: ``rgb`` plus the
    network's correction weighted by :func:`region` (pixels where it is 0 come back bit for bit). The network runs
    on :func:`head_box` only (less work where the head is small in the frame). Training leaves the result
    unclamped (a clamped pixel would pass no gradient back)."""
    x = rgb.permute(0, 3, 1, 2)
    w = region(alpha, dilate)
    top, bottom, left, right = head_box(w, net.levels)
    xc, wc = x[:, :, top:bottom, left:right], w[:, :, top:bottom, left:right]
    step = 2 ** (net.levels - 1)
    pad_h, pad_w = (-xc.shape[2]) % step, (-xc.shape[3]) % step
    inp = F.pad(torch.cat([xc, alpha[:, None, top:bottom, left:right]], 1), (0, pad_w, 0, pad_h), mode="replicate")
    delta = net(inp)[:, :, :xc.shape[2], :xc.shape[3]]
    y = xc + wc * delta
    out = x.clone()
    out[:, :, top:bottom, left:right] = torch.where(wc > 0, y.clamp(0, 1) if clamp else y, xc)
    return out.permute(0, 2, 3, 1)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of ``[B, 3, H, W]`` images in [0, 1] (7x7 box windows; a training loss, not a reported metric)."""
    mu_a, mu_b = F.avg_pool2d(a, 7, 1, 3), F.avg_pool2d(b, 7, 1, 3)
    var_a = F.avg_pool2d(a * a, 7, 1, 3) - mu_a ** 2
    var_b = F.avg_pool2d(b * b, 7, 1, 3) - mu_b ** 2
    cov = F.avg_pool2d(a * b, 7, 1, 3) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))).mean()


def on_host(refine, rgb, alpha):
    """A frame filter's uint8 path: ``[B, H, W, 3]`` and ``[B, H, W]`` arrays through ``refine`` on its device."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(refine.device).float().div_(255)
    m = torch.from_numpy(np.ascontiguousarray(alpha)).to(refine.device).float().div_(255)
    return (refine(x, m).clamp(0, 1) * 255).round().byte().cpu().numpy()
