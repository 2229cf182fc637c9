"""A head model learned from the clip itself, fitted by reprojection.

Conventions (the ones the public trainers read, see the dataset reference):

* Canonical head frame: x to the subject's left (image right), y up, z out of the face toward the camera;
  units are decimetres (the outer eye corners 33-263 are set 0.9 dm apart, an adult average).
* Camera frame: OpenGL (x right, y up, looking down -z). A canonical point ``v`` is posed as
  ``R(euler) @ v + trans`` and projected as ``u = cx - f X / Z``, ``v = cy + f Y / Z`` (``Z < 0``).
* ``R(euler) = rot_x(a) @ rot_y(b) @ rot_z(c)`` with the reference's matrices, which are the standard ones
  transposed: ``rot_x(a) = [[1,0,0],[0,cos a, sin a],[0,-sin a, cos a]]`` and likewise for y and z.
* ``track_params.pt`` stores the angles in the reference tracker's own convention instead (see
  :func:`to_reference_euler`), since GaussianTalker's reader poses its vertices with the reference's code.
* ``transforms_*.json`` hold the camera-to-world matrix ``[R^T | -R^T (trans / 10)]`` (metres), as the
  reference writes it; ``track_params.pt`` keeps ``trans`` in decimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from being_core.stage import FACEMESH_RIGID_POINTS

EYE_OUTER = (33, 263)
EYE_DISTANCE_DM = 0.9
#: The points the fit aligns frames on: those speech and expression hardly move. Aligning every point instead
#: lets the jaw and lips pull the pose: on three shared clips the head came 1-2 % closer to the camera whenever
#: the mouth opened, and the tracked pose alone predicted the mouth's opening (docs/benchmarks.md).
RIGID_POINTS = FACEMESH_RIGID_POINTS
SEARCH_ITERATIONS = 30  # optimiser steps per focal candidate, on a sample of frames


def euler2rot(euler: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` radians -> ``[N, 3, 3]``, the reference's ``rot_x @ rot_y @ rot_z``."""
    a, b, c = euler[:, 0], euler[:, 1], euler[:, 2]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    rx = torch.stack([one, zero, zero, zero, ca, sa, zero, -sa, ca], 1).view(-1, 3, 3)
    ry = torch.stack([cb, zero, -sb, zero, one, zero, sb, zero, cb], 1).view(-1, 3, 3)
    rz = torch.stack([cc, sc, zero, -sc, cc, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rx @ ry @ rz


def rot2euler(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler2rot` for ``[N, 3, 3]`` (the standard Rx(-a) Ry(-b) Rz(-c) decomposition)."""
    sb = np.clip(rot[:, 0, 2], -1, 1)
    b = np.arcsin(sb)
    a = np.arctan2(-rot[:, 1, 2], rot[:, 2, 2])
    c = np.arctan2(-rot[:, 0, 1], rot[:, 0, 0])
    return -np.stack([a, b, c], 1)


#: the value of ``track_params.pt``'s ``euler_convention``: angles as the reference tracker writes them
REFERENCE_EULER = "reference"


def to_reference_euler(euler: np.ndarray) -> np.ndarray:
    """Angles for :func:`euler2rot` as the reference tracker's own ``euler2rot`` reads them (the rotation matrix
    is the same). That code assembles each matrix from column vectors, so its ``rot_x`` and ``rot_y`` are the
    standard rotations, the transposes of ours, while its ``rot_z`` equals ours: ``(a, b, c) -> (-a, -b, c)``,
    an involution (it also converts back)."""
    return euler * np.array([-1.0, -1.0, 1.0], dtype=euler.dtype)


def project(posed: torch.Tensor, focal: torch.Tensor, cx: float, cy: float) -> torch.Tensor:
    """``[N, V, 3]`` camera-frame points -> ``[N, V, 2]`` pixels."""
    z = posed[..., 2]
    return torch.stack([cx - focal * posed[..., 0] / z, cy + focal * posed[..., 1] / z], -1)


def pose(points: torch.Tensor, euler: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    return points @ euler2rot(euler).transpose(1, 2) + trans[:, None, :]


def c2w_matrices(euler: np.ndarray, trans: np.ndarray, trans_scale: float = 0.1) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-world ``[R^T | -R^T t]`` with ``t = trans * trans_scale``."""
    rot = euler2rot(torch.as_tensor(euler, dtype=torch.float64)).numpy()
    rot_t = rot.transpose(0, 2, 1)
    out = np.tile(np.eye(4), (len(euler), 1, 1))
    out[:, :3, :3] = rot_t
    out[:, :3, 3] = -(rot_t @ (trans * trans_scale)[:, :, None])[:, :, 0]
    return out


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch similarity fit ``dst ~ s R src + t`` for ``src [V,3]``, ``dst [N,V,3]``."""
    mu_s, mu_d = src.mean(0), dst.mean(1)
    a, b = src - mu_s, dst - mu_d[:, None]
    cov = np.einsum("nvi,vj->nij", b, a) / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones((len(dst), 3))
    d[:, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ (d[:, :, None] * vt)
    scale = (sig * d).sum(1) / (a ** 2).sum(1).mean()
    trans = mu_d - scale[:, None] * np.einsum("nij,j->ni", rot, mu_s)
    return scale, rot, trans


@dataclass
class HeadFit:
    mean: np.ndarray  # [V, 3] canonical mean shape, dm
    basis: np.ndarray  # [K, V, 3] expression basis (orthonormal in R^{3V})
    exp: np.ndarray  # [N, K]
    euler: np.ndarray  # [N, 3] radians
    trans: np.ndarray  # [N, 3] dm, camera frame
    focal: float
    errors: np.ndarray  # [N, V] reprojection error, pixels
    focal_search: dict[float, float]  # focal -> mean error at the search stage


class _Adam:
    """Adam with a learning-rate scale per step. Not torch.optim.Adam: its first use imports torch._dynamo,
    about 3.5 s on a 2-core machine, a fifth of the whole fit of a 71 s clip."""

    def __init__(self, params: list[tuple[torch.Tensor, float]], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.m = [torch.zeros_like(p) for p, _ in params]
        self.v = [torch.zeros_like(p) for p, _ in params]

    def zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, scale: float = 1.0) -> None:
        self.t += 1
        b1, b2 = self.betas
        for (p, lr), m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            step = lr * scale / (1 - b1 ** self.t)
            p.addcdiv_(m, (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps), value=-step)


def fit_head(landmarks: np.ndarray, width: int, height: int, n_exp: int = 16, iterations: int = 80,
             focal_factors: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0), smooth: float = 1.0,
             weights: np.ndarray | None = None, progress=None, seed: int = 0,
             rigid: tuple[int, ...] | None = RIGID_POINTS) -> HeadFit:
    """Learn a mean shape and expression basis from ``landmarks [N, V, 3]`` (pixels; z = depth, smaller
    nearer) and fit per-frame pose and expression under a perspective camera whose focal length is chosen
    by search over ``focal_factors * width``. The frames are aligned on the ``rigid`` points (None: on every
    point), so what moves the others (the jaw, the lips, the brows) is expression, not pose."""
    torch.manual_seed(seed)
    n = len(landmarks)
    cx, cy = width / 2.0, height / 2.0
    pts = np.stack([landmarks[..., 0] - cx, cy - landmarks[..., 1], -landmarks[..., 2]], -1).astype(np.float64)
    # Generalized Procrustes: canonical shapes of every frame, aligned to their mean.
    idx = np.arange(pts.shape[1]) if rigid is None else np.asarray(rigid)
    ref = pts[0] - pts[0].mean(0)
    for _ in range(3):
        scale, rot, tr = _umeyama(ref[idx], pts[:, idx])
        canon = np.einsum("nji,nvj->nvi", rot, pts - tr[:, None]) / scale[:, None, None]
        ref = canon.mean(0)
    units = EYE_DISTANCE_DM / np.linalg.norm(ref[EYE_OUTER[0]] - ref[EYE_OUTER[1]])
    centre = ref.mean(0)
    mean = (ref - centre) * units
    canon = (canon - centre) * units
    # Expression basis: principal components of the per-frame deviations from the mean.
    dev = (canon - mean).reshape(n, -1)
    _, _, vt = np.linalg.svd(dev - dev.mean(0), full_matrices=False)
    k = min(n_exp, max(1, n - 1))
    basis = vt[:k]
    exp0 = dev @ basis.T
    euler0 = rot2euler(rot)
    px_per_dm = scale / units  # weak-perspective scale of each frame
    shift = tr - np.einsum("nij,j->ni", rot, centre) * scale[:, None]  # image-plane position of the centre

    target = torch.as_tensor(landmarks[..., :2], dtype=torch.float32)
    w = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float32)

    def run(focal: float, frames: np.ndarray, iters: int, learn_shape: bool) -> tuple[float, dict]:
        depth = focal / px_per_dm[frames]
        t0 = np.stack([shift[frames, 0] * depth / focal, shift[frames, 1] * depth / focal, -depth], 1)
        p = {"euler": torch.tensor(euler0[frames], dtype=torch.float32, requires_grad=True),
             "trans": torch.tensor(t0, dtype=torch.float32, requires_grad=True),
             "exp": torch.tensor(exp0[frames], dtype=torch.float32, requires_grad=True),
             "mean": torch.tensor(mean, dtype=torch.float32, requires_grad=learn_shape)}
        b = torch.tensor(basis.reshape(k, -1, 3), dtype=torch.float32)
        f = torch.tensor(float(focal))
        opt = _Adam([(p["euler"], 3e-3), (p["trans"], 1e-2), (p["exp"], 1e-2)] +
                    ([(p["mean"], 1e-3)] if learn_shape else []))
        tgt, wf = target[frames], w[frames]
        consecutive = len(frames) > 2 and np.all(np.diff(frames) == 1)
        for it in range(iters):
            opt.zero_grad()
            shape = p["mean"] + torch.einsum("nk,kvc->nvc", p["exp"], b)
            uv = project(pose(shape, p["euler"], p["trans"]), f, cx, cy)
            err = ((uv - tgt) ** 2).sum(-1).mean(1)
            loss = (err * wf).sum() / wf.sum().clamp(min=1)
            if consecutive and smooth > 0:
                acc = lambda x: (x[2:] - 2 * x[1:-1] + x[:-2]).pow(2).sum(-1).mean()  # noqa: E731
                loss = loss + smooth * (1e4 * acc(p["euler"]) + 1e3 * acc(p["trans"]))
            loss.backward()
            opt.step(0.5 * (1 + math.cos(math.pi * it / iters)))  # cosine-annealed learning rate
            if progress is not None:
                progress.advance()
        with torch.no_grad():
            shape = p["mean"] + torch.einsum("nk,kvc->nvc", p["exp"], b)
            uv = project(pose(shape, p["euler"], p["trans"]), f, cx, cy)
            errors = (uv - tgt).norm(dim=-1)
        return float(errors.mean()), {**{key: v.detach().numpy() for key, v in p.items()},
                                      "errors": errors.numpy()}

    sample = np.unique(np.linspace(0, n - 1, min(n, 120)).round().astype(int))
    search = {fac * width: run(fac * width, sample, SEARCH_ITERATIONS, False)[0] for fac in focal_factors}
    focal = min(search, key=lambda f: search[f])
    _, best = run(focal, np.arange(n), iterations, True)
    return HeadFit(mean=best["mean"], basis=basis.reshape(k, -1, 3).astype(np.float32), exp=best["exp"],
                   euler=best["euler"], trans=best["trans"], focal=float(focal), errors=best["errors"],
                   focal_search={round(kf, 1): round(v, 3) for kf, v in search.items()})


def densify_weights(edges, n_vertices: int, level: int = 4) -> np.ndarray:
    """A sparse-as-dense ``[V_dense, n_vertices] float32`` matrix that places points on every mesh triangle
    on a barycentric grid of ``level`` steps (shared edge points kept once)."""
    nbrs: dict[int, set[int]] = {i: set() for i in range(n_vertices)}
    for a, b in edges:
        nbrs[a].add(b)
        nbrs[b].add(a)
    tris = {tuple(sorted((a, b, c))) for a in nbrs for b in nbrs[a] if b > a for c in nbrs[a] & nbrs[b] if c > b}
    rows: dict[tuple, None] = {}
    for tri in sorted(tris):
        for i in range(level + 1):
            for j in range(level + 1 - i):
                kk = level - i - j
                key = tuple(sorted((v, wgt) for v, wgt in zip(tri, (i, j, kk)) if wgt))
                rows.setdefault(key, None)
    out = np.zeros((len(rows), n_vertices), dtype=np.float32)
    for r, key in enumerate(rows):
        for v, wgt in key:
            out[r, v] = wgt / level
    return out
