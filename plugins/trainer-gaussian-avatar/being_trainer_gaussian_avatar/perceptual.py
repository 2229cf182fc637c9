"""LPIPS (AlexNet, v0.1) from a local weights file, never downloaded.

The network is defined here with the module names of the ``lpips`` package, so a file saved from it loads
as is: on any machine that has the weights, ``torch.save(lpips.LPIPS(net="alex").state_dict(), "lpips.pth")``.
The package itself is not used at run time: it builds AlexNet through torchvision, whose PyPI wheels need a
matching CUDA torch (the CPU torch used here cannot import them) and which would fetch the backbone's
weights from the internet on first use.
"""

from __future__ import annotations

import functools
import operator
from pathlib import Path

import torch
from torch import nn

CHANNELS = (64, 192, 384, 256, 256)
KEY = "stages.trainer.config.lpips_weights"


class _Lin(nn.Module):
    """One layer's learned channel weights (``lpips.NetLinLayer``: dropout, then a bias-free 1x1 conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])


class _AlexFeatures(nn.Module):
    """torchvision's AlexNet ``features`` up to the fifth ReLU, cut into five slices as ``lpips`` does (the
    module indices inside each slice are the ones in ``features``, so parameter names match)."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
                  nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
        for k, (lo, hi) in enumerate(((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), 1):
            setattr(self, f"slice{k}", nn.Sequential())
            for i in range(lo, hi):
                getattr(self, f"slice{k}").add_module(str(i), layers[i])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            out.append(x)
        return out


class LPIPS(nn.Module):
    """``LPIPS(a, b)`` for ``[B, H, W, 3]`` images in [0, 1]: ``[B]`` distances (0 for equal images). Frozen:
    gradients flow to the images only."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _AlexFeatures()
        for k, c in enumerate(CHANNELS):
            setattr(self, f"lin{k}", _Lin(c))
        self.lins = nn.ModuleList(getattr(self, f"lin{k}") for k in range(len(CHANNELS)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s = self.scaling_layer
        fa, fb = (self.net(((x.permute(0, 3, 1, 2) * 2 - 1) - s.shift) / s.scale) for x in (a, b))
        parts = []
        for lin, xa, xb in zip(self.lins, fa, fb):
            xa = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            xb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            parts.append(lin.model((xa - xb) ** 2).mean((2, 3)))
        return functools.reduce(operator.add, parts)[:, 0]  # summed in layer order, as the lpips package does


def load_lpips(path: str | Path, device: torch.device, key: str = KEY) -> LPIPS:
    """The frozen LPIPS network with the weights of the local file ``path`` (the config ``key`` that names it);
    a ValueError that names the key and the file when it is missing or holds something else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{key}: {path} does not exist; LPIPS weights are never downloaded. Save them "
                         f"where they are available: torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips.pth')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not a state dict, a truncated file, ...
        raise ValueError(f"{key}: {path} is not a saved state dict: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{key}: {path} holds a {type(state).__name__}, not a state dict")
    net = LPIPS()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ValueError(f"{key}: {path} is not an LPIPS AlexNet state dict: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"{key}: {path} is not an LPIPS AlexNet state dict (missing: "
                         f"{', '.join(missing[:4]) or 'none'}; unexpected: {', '.join(unexpected[:4]) or 'none'})")
    net.eval().requires_grad_(False)
    return net.to(device)
