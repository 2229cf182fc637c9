"""Rasterising 3D Gaussians: gsplat on CUDA, and a pure-PyTorch reference for CPUs and tests.

Both take gsplat's arguments and conventions: ``means [B, N, 3]`` in world space, ``quats [B, N, 4]``
(w, x, y, z; any norm), ``scales [B, N, 3]``, ``opacities [B, N]``, ``colors [B, N, 3]``, world-to-camera
``viewmats [B, 4, 4]`` in OpenCV axes (x right, y down, z forward), intrinsics ``Ks [B, 3, 3]``, pixel
centres at ``+0.5``, a 0.3 px² blur on the 2D covariance, alpha capped at 0.999 and ignored below 1/255.
They return ``rgb [B, H, W, 3]``, ``alpha [B, H, W, 1]`` and ``means2d`` (``[B, N, 2]``, gsplat ``[B, 1, N, 2]``; pixels; for
densification, its ``.grad`` is filled by backward when ``retain_grad()`` was called).
"""

from __future__ import annotations

import torch

EPS2D = 0.3
NEAR = 0.01
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TILE = 16


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def project(means, quats, scales, viewmats, Ks):
    """Camera-space depth, 2D means and 2D covariances (with the 0.3 px² blur), per batch item."""
    rot_w, t_w = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
    p = (rot_w @ means[..., None])[..., 0] + t_w
    rs = quat_to_rotmat(quats) * scales[..., None, :]
    cov_world = rs @ rs.transpose(-1, -2)
    cov_cam = rot_w @ cov_world @ rot_w.transpose(-1, -2)
    x, y, z = p.unbind(-1)
    zs = z.clamp(min=NEAR)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    zero = torch.zeros_like(zs)
    jac = torch.stack([fx / zs, zero, -fx * x / zs ** 2, zero, fy / zs, -fy * y / zs ** 2], -1).reshape(*zs.shape, 2, 3)
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2) + EPS2D * torch.eye(2, device=means.device, dtype=means.dtype)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return z, means2d, cov2d


def rasterize_reference(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                        backgrounds=None):
    """The pure-PyTorch rasteriser: tiles of 16x16 pixels, each compositing the Gaussians whose 3-sigma box
    touches it, front to back. Without gradients (rendering), :func:`rasterize_pairs` does it faster."""
    if not torch.is_grad_enabled():
        return rasterize_pairs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds)
    batch, device, dtype = means.shape[0], means.device, means.dtype
    depth, means2d, cov2d = project(means, quats, scales, viewmats, Ks)
    if means2d.requires_grad:
        means2d.retain_grad()
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] ** 2
    conic = torch.stack([cov2d[..., 1, 1], -cov2d[..., 0, 1], cov2d[..., 0, 0]], -1) / det[..., None]
    mid = 0.5 * (cov2d[..., 0, 0] + cov2d[..., 1, 1])
    radius = torch.ceil(3 * torch.sqrt(mid + torch.sqrt((mid ** 2 - det).clamp(min=0.1)))).detach()
    visible = (depth > NEAR) & (det > 0)
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                            torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    rgb_rows, alpha_rows = [], []
    for b in range(batch):
        order = torch.argsort(depth[b].detach())
        order = order[visible[b, order]]
        m2, con, r = means2d[b, order], conic[b, order], radius[b, order]
        op, col = opacities[b, order], colors[b, order]
        lo, hi = (m2.detach() - r[:, None]), (m2.detach() + r[:, None])
        pieces = []
        for ty in range(0, height, TILE):
            for tx in range(0, width, TILE):
                th, tw = min(TILE, height - ty), min(TILE, width - tx)
                hit = (hi[:, 0] >= tx) & (lo[:, 0] <= tx + tw) & (hi[:, 1] >= ty) & (lo[:, 1] <= ty + th)
                idx = torch.nonzero(hit)[:, 0]
                px = xs[ty:ty + th, tx:tx + tw].reshape(-1, 1)
                py = ys[ty:ty + th, tx:tx + tw].reshape(-1, 1)
                if len(idx) == 0:
                    pieces.append((ty, tx, th, tw, torch.zeros(th * tw, 3, device=device, dtype=dtype),
                                   torch.zeros(th * tw, 1, device=device, dtype=dtype)))
                    continue
                dx, dy = px - m2[idx, 0], py - m2[idx, 1]
                c = con[idx]
                power = -0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) - c[:, 1] * dx * dy
                a = (op[idx] * torch.exp(power)).clamp(max=ALPHA_MAX)
                a = torch.where((a >= ALPHA_MIN) & (power <= 0), a, torch.zeros_like(a))
                trans = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)
                w = a * trans
                pieces.append((ty, tx, th, tw, w @ col[idx], w.sum(1, keepdim=True)))
        rows_rgb, rows_a = [], []
        for ty in range(0, height, TILE):
            row = [p for p in pieces if p[0] == ty]
            rows_rgb.append(torch.cat([p[4].reshape(p[2], p[3], 3) for p in row], 1))
            rows_a.append(torch.cat([p[5].reshape(p[2], p[3], 1) for p in row], 1))
        rgb_rows.append(torch.cat(rows_rgb, 0))
        alpha_rows.append(torch.cat(rows_a, 0))
    rgb = torch.stack(rgb_rows)
    alpha_out = torch.stack(alpha_rows)
    if backgrounds is not None:
        rgb = rgb + (1 - alpha_out) * backgrounds[:, None, None, :]
    return rgb, alpha_out, means2d


@torch.no_grad()
def rasterize_pairs(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                    backgrounds=None):
    """The reference rasteriser's image without gradients, 2 to 3 times faster on a CPU (what renders and live
    sessions use there): every (Gaussian, pixel) pair inside the Gaussian's axis-aligned box out to where its
    alpha falls under 1/255 (3 sigma at most) is made at once, sorted by pixel (stably: front to back) and
    composited with a segmented cumulative sum of ``log(1 - alpha)``; no Python loop over tiles. It leaves out the
    pairs beyond 3 sigma that the tiled version keeps when they share a tile (alpha under 1.1 % of the
    Gaussian's opacity).
    """
    batch, device, dtype = means.shape[0], means.device, means.dtype
    depth, means2d, cov2d = project(means, quats, scales, viewmats, Ks)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] ** 2
    conic = torch.stack([cov2d[..., 1, 1], -cov2d[..., 0, 1], cov2d[..., 0, 0]], -1) / det[..., None]
    reach = torch.sqrt(2 * torch.log((opacities * 255).clamp(min=1.0)))  # where alpha falls under 1/255, in sigmas
    k = torch.minimum(reach, torch.full_like(reach, 3.0))
    rx = torch.ceil(torch.sqrt(cov2d[..., 0, 0]) * k)
    ry = torch.ceil(torch.sqrt(cov2d[..., 1, 1]) * k)
    visible = (depth > NEAR) & (det > 0) & (opacities >= ALPHA_MIN)
    out = torch.zeros(batch, 4, height * width, device=device, dtype=dtype)  # rgb and alpha, channel-major
    for b in range(batch):
        m2 = means2d[b]
        x0 = (m2[:, 0] - rx[b] - 0.5).ceil().clamp(min=0)
        x1 = (m2[:, 0] + rx[b] - 0.5).floor().clamp(max=width - 1)
        y0 = (m2[:, 1] - ry[b] - 0.5).ceil().clamp(min=0)
        y1 = (m2[:, 1] + ry[b] - 0.5).floor().clamp(max=height - 1)
        ok = visible[b] & (x1 >= x0) & (y1 >= y0)
        g = torch.nonzero(ok)[:, 0]
        g = g[torch.argsort(depth[b, g])]
        w = x1[g] - x0[g] + 1
        n = (w * (y1[g] - y0[g] + 1)).long()
        starts = (torch.cumsum(n, 0) - n).to(dtype)
        # one gather of everything a pair needs (box origin and width, first pair, centre, conic, opacity), as rows:
        # each field of the pairs then lies contiguous in memory, which the element-wise steps below need to be fast
        # (index_select throughout: on a CPU it is 2 to 3 times faster than indexing with a tensor)
        pack = torch.stack([x0[g], y0[g], w, starts, m2[g, 0] - 0.5, m2[g, 1] - 0.5, conic[b, g, 0], conic[b, g, 1],
                            conic[b, g, 2], opacities[b, g]])
        gi = torch.repeat_interleave(torch.arange(len(g), device=device), n)
        bx, by, bw, first_pair, cx, cy, ca, cb, cc, op = torch.repeat_interleave(pack, n, dim=1).unbind(0)
        local = torch.arange(len(gi), device=device, dtype=dtype) - first_pair
        row = torch.div(local, bw, rounding_mode="floor")
        px = bx + local - row * bw
        py = by + row
        dx, dy = px - cx, py - cy
        power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
        a = (op * torch.exp(power)).clamp(max=ALPHA_MAX)
        keep = torch.nonzero((a >= ALPHA_MIN) & (power <= 0))[:, 0]
        pix = (py * width + px).to(torch.int32).index_select(0, keep)  # int32: sorted 3 times faster than int64
        pix, order = torch.sort(pix, stable=True)
        sel = keep.index_select(0, order)
        a = a.index_select(0, sel)
        la = torch.log1p(-a)
        before = torch.cumsum(la, 0) - la  # log transmittance in front of each pair, from the first pair on
        per_pixel = torch.bincount(pix, minlength=height * width)
        seg_start = (torch.cumsum(per_pixel, 0) - per_pixel).index_select(0, pix)  # each pixel's first pair
        wt = a * torch.exp(before - before.index_select(0, seg_start))
        # each pair's colour and 1 (for alpha), weighted, added up per pixel one channel at a time: a 1D index_add_
        # is several times faster on a CPU than one over [pairs, 3] rows
        rgb1 = torch.cat([colors[b], torch.ones_like(colors[b, :, :1])], 1).T.index_select(1, g)
        contrib = rgb1.index_select(1, gi.index_select(0, sel)).mul_(wt)
        for c in range(4):
            out[b, c].index_add_(0, pix, contrib[c])
    rgb = out[:, :3].transpose(1, 2).reshape(batch, height, width, 3)
    alpha = out[:, 3].reshape(batch, height, width, 1)
    if backgrounds is not None:
        rgb = rgb + (1 - alpha) * backgrounds[:, None, None, :]
    return rgb, alpha, means2d


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                     backgrounds=None):
    """gsplat's CUDA rasteriser with the same arguments (one camera per batch item)."""
    from gsplat import rasterization

    rgb, alpha, info = rasterization(means, quats, scales, opacities, colors, viewmats[:, None], Ks[:, None],
                                     width, height, packed=False, near_plane=NEAR,
                                     backgrounds=None if backgrounds is None else backgrounds[:, None])
    means2d = info["means2d"]  # [B, 1, N, 2]; returned as is so that its retained .grad stays reachable
    if means2d.requires_grad:
        means2d.retain_grad()
    return rgb[:, 0], alpha[:, 0], means2d


def pick_backend(name: str, device: torch.device):
    """'auto': gsplat on CUDA when it imports, the reference otherwise."""
    if name == "reference" or (name == "auto" and device.type != "cuda"):
        return rasterize_reference
    if device.type != "cuda":
        raise ValueError("backend: gsplat needs a CUDA device")
    try:
        import gsplat  # noqa: F401
    except ImportError:
        if name == "gsplat":
            raise ValueError("backend: gsplat is not installed (pip install 'being-trainer-gaussian-avatar[cuda]')") from None
        return rasterize_reference
    return rasterize_gsplat
