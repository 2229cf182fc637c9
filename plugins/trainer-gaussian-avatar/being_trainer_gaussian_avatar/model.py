"""The avatar: canonical 3D Gaussians, a tri-plane feature field, and a small transformer that lets every
Gaussian attend over audio, eye, camera and a learned null token to predict its per-frame offsets.

Shapes: ``N`` Gaussians, ``B`` frames, audio windows ``[B, W, D]`` with ``D`` read from the run manifest.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from torch.nn import functional as F

OFFSET_SCALE = 0.1  # the deformer's position offsets are in tenths of a head unit: its outputs stay O(1)


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


class Gaussians(nn.Module):
    """Canonical Gaussians in the head frame (decimetres): means, log-scales, quaternions (wxyz), opacity
    logits and RGB colour logits."""

    def __init__(self, points: torch.Tensor, colour: float = 0.5, extra: float = 0.5, seed: int = 0):
        super().__init__()
        points = with_hair_volume(points, extra, seed)
        n = len(points)
        spacing = torch.cdist(points[: min(n, 2048)], points).topk(4, largest=False).values[:, 1:].mean()
        self.means = nn.Parameter(points.clone().float())
        self.log_scales = nn.Parameter(torch.full((n, 3), math.log(float(spacing) * 0.7)))
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(inverse_sigmoid(torch.full((n, 1), 0.1)))
        self.colour_logits = nn.Parameter(inverse_sigmoid(torch.full((n, 3), colour)))

    def __len__(self) -> int:
        return self.means.shape[0]

    def replace(self, **tensors: torch.Tensor) -> None:
        """Swap every parameter for a new set (after densifying or pruning)."""
        for name, value in tensors.items():
            setattr(self, name, nn.Parameter(value.detach().contiguous()))


def with_hair_volume(points: torch.Tensor, extra: float, seed: int) -> torch.Tensor:
    """The tracked face vertices plus ``extra * len(points)`` random points in an ellipsoid around and behind
    them: the face mesh covers no hair, ears or back of the head, and densification grows faster from a
    rough start there (pruning removes what the images do not support)."""
    if extra <= 0:
        return points
    gen = torch.Generator().manual_seed(seed)
    lo, hi = points.min(0).values, points.max(0).values
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    centre = centre + torch.tensor([0.0, 0.25, -0.6]) * half  # up and back: hair and skull
    radii = half * torch.tensor([1.35, 1.45, 1.4])
    k = int(extra * len(points))
    d = torch.randn(k, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True) * torch.rand(k, 1, generator=gen) ** (1 / 3)
    return torch.cat([points, centre + d * radii])


class TriPlane(nn.Module):
    """Three axis-aligned feature planes (xy, xz, yz) sampled bilinearly and concatenated."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, resolution: int = 64, channels: int = 32):
        super().__init__()
        self.register_buffer("lo", lo.float())
        self.register_buffer("hi", hi.float())
        self.planes = nn.Parameter(torch.randn(3, channels, resolution, resolution) * 0.1)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """``[N, 3] -> [N, 3C]``."""
        u = ((xyz - self.lo) / (self.hi - self.lo) * 2 - 1).clamp(-1, 1)
        coords = torch.stack([u[:, [0, 1]], u[:, [0, 2]], u[:, [1, 2]]])[:, None]  # [3, 1, N, 2]
        feats = F.grid_sample(self.planes, coords, align_corners=True)  # [3, C, 1, N]
        return feats[:, :, 0].permute(2, 0, 1).reshape(xyz.shape[0], -1)


class Deformer(nn.Module):
    """Per-Gaussian offsets of position, scale, rotation, opacity and colour from audio, eye and camera."""

    OUT = 3 + 3 + 4 + 1 + 3

    def __init__(self, lo, hi, audio_dim: int, audio_window: int, width: int = 64, heads: int = 4,
                 plane_resolution: int = 64, plane_channels: int = 32):
        super().__init__()
        self.triplane = TriPlane(lo, hi, plane_resolution, plane_channels)
        self.query = nn.Sequential(nn.Linear(3 * plane_channels, width), nn.ReLU(), nn.Linear(width, width))
        self.audio = nn.Sequential(nn.Linear(audio_dim, width), nn.ReLU(), nn.Linear(width, width))
        self.audio_pos = nn.Parameter(torch.zeros(audio_window, width))
        self.eye = nn.Linear(1, width)
        self.camera = nn.Linear(6, width)
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, self.OUT))
        nn.init.zeros_(self.head[-1].weight)  # the fine stage starts exactly at the coarse result
        nn.init.zeros_(self.head[-1].bias)
        self.audio_dim, self.audio_window = audio_dim, audio_window

    def tokens(self, audio: torch.Tensor, eye: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """``[B, W + 3, width]``: audio window, eye, camera and null tokens."""
        a = self.audio(audio) + self.audio_pos
        return torch.cat([a, self.eye(eye[:, None, None]), self.camera(camera[:, None]),
                          self.null.expand(len(audio), 1, -1)], 1)

    def forward(self, means: torch.Tensor, audio, eye, camera) -> torch.Tensor:
        """``[B, N, 14]`` offsets for the canonical ``means [N, 3]``."""
        if not torch.is_grad_enabled():
            return self._infer(means, audio, eye, camera)
        q = self.query(self.triplane(means))  # [N, width]
        tok = self.tokens(audio, eye, camera)
        batch = tok.shape[0]
        out, _ = self.attn(q[None].expand(batch, -1, -1), tok, tok, need_weights=False)
        return self.head(self.norm(out + q[None]))

    def _queries(self, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-Gaussian query ``[N, width]`` and its attention projection ``[heads, N, width / heads]``: they
        depend on the canonical means and the weights only, so rendering computes them once, not every frame
        (kept while neither changes: the same ``means`` tensor, and no version counter moved, as every in-place
        update moves it; a new tensor at the old one's address is not taken for it)."""
        versions = (means._version, *(p._version for p in (*self.triplane.parameters(), *self.query.parameters(),
                                                           self.attn.in_proj_weight, self.attn.in_proj_bias)))
        cached = getattr(self, "_cached_queries", None)
        if cached is None or cached[0]() is not means or cached[1] != versions:
            q = self.query(self.triplane(means))
            width, heads = q.shape[1], self.attn.num_heads
            wq, bq = self.attn.in_proj_weight[:width], self.attn.in_proj_bias[:width]
            projected = F.linear(q, wq, bq).reshape(-1, heads, width // heads).transpose(0, 1).contiguous()
            self._cached_queries = cached = (weakref.ref(means), versions, q, projected)
        return cached[2], cached[3]

    def _infer(self, means: torch.Tensor, audio, eye, camera) -> torch.Tensor:
        """:meth:`forward` without gradients: the same attention, written out so that the queries are reused."""
        q, qh = self._queries(means)
        tok = self.tokens(audio, eye, camera)  # [B, T, width]
        batch, width, heads = tok.shape[0], q.shape[1], self.attn.num_heads
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        k = F.linear(tok, w[width:2 * width], b[width:2 * width]).reshape(batch, -1, heads, width // heads)
        v = F.linear(tok, w[2 * width:], b[2 * width:]).reshape(batch, -1, heads, width // heads)
        out = F.scaled_dot_product_attention(qh[None].expand(batch, -1, -1, -1), k.transpose(1, 2), v.transpose(1, 2))
        out = self.attn.out_proj(out.transpose(1, 2).reshape(batch, -1, width))
        return self.head(self.norm(out + q[None]))


def deformed(gauss: Gaussians, offsets: torch.Tensor | None, batch: int):
    """Per-frame Gaussian parameters ``[B, N, ...]``: canonical plus offsets (None: static)."""
    means = gauss.means[None].expand(batch, -1, -1)
    log_scales = gauss.log_scales[None].expand(batch, -1, -1)
    quats = gauss.quats[None].expand(batch, -1, -1)
    opacity = gauss.opacity_logits[None].expand(batch, -1, -1)
    colour = gauss.colour_logits[None].expand(batch, -1, -1)
    if offsets is not None:
        d_xyz, d_scale, d_rot, d_op, d_col = offsets.split([3, 3, 4, 1, 3], -1)
        means = means + d_xyz * OFFSET_SCALE
        log_scales = log_scales + d_scale
        quats = quats + d_rot
        opacity = opacity + d_op
        colour = colour + d_col
    return means, quats, log_scales.exp(), torch.sigmoid(opacity[..., 0]), torch.sigmoid(colour)
