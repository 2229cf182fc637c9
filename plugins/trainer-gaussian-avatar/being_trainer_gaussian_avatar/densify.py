"""Densification: clone small and split large Gaussians with a high view-space gradient, prune transparent or
huge ones, and carry the optimiser's state through it (as gsplat's strategies do: a surviving Gaussian keeps
its Adam moments, a new one starts from zero)."""

from __future__ import annotations

import math

import torch

from .avatar import Avatar

PARAMS = ("means", "log_scales", "quats", "opacity_logits", "colour_logits")


def densify_and_prune(av: Avatar, grad_accum: torch.Tensor, counts: torch.Tensor, cfg,
                      opt: torch.optim.Optimizer | None = None) -> dict:
    """3DGS-style: clone small / split large Gaussians with a high view-space gradient, prune transparent or
    huge ones. ``opt`` (Adam over the Gaussians' parameters) follows: see :func:`carry_state`."""
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
        params = {k: getattr(g, k).detach() for k in PARAMS}
        new = {k: [v, v[small]] for k, v in params.items()}
        n_new = int(small.sum()) + 2 * int(large.sum())
        if large.any():
            from .raster import quat_to_rotmat

            std = params["log_scales"][large].exp()
            for _ in range(2):
                offset = (quat_to_rotmat(params["quats"][large]) @ (torch.randn_like(std) * std)[..., None])[..., 0]
                new["means"].append(params["means"][large] + offset)
                new["log_scales"].append(params["log_scales"][large] - math.log(1.6))
                for k in ("quats", "opacity_logits", "colour_logits"):
                    new[k].append(params[k][large])
        keep = torch.cat([~large, torch.ones(n_new, dtype=torch.bool, device=grow.device)])
        # which old Gaussian each row continues (a split one is replaced by two new ones); -1: a new one
        source = torch.cat([torch.arange(len(g), device=grow.device),
                            torch.full((n_new,), -1, dtype=torch.long, device=grow.device)])[keep]
        merged = {k: torch.cat(v)[keep] for k, v in new.items()}
        alive = (torch.sigmoid(merged["opacity_logits"][:, 0]) > cfg.prune_opacity) & (
            merged["log_scales"].exp().max(1).values < 0.2 * av.extent)
        old = {k: getattr(g, k) for k in PARAMS}
        g.replace(**{k: v[alive] for k, v in merged.items()})
        if opt is not None:
            for k in PARAMS:
                carry_state(opt, old[k], getattr(g, k), source[alive])
    return {"cloned": int(small.sum()), "split": int(large.sum()), "count": len(g)}


def carry_state(opt: torch.optim.Optimizer, old: torch.nn.Parameter, new: torch.nn.Parameter,
                source: torch.Tensor) -> None:
    """Point ``opt`` at ``new`` instead of ``old``, whose row ``i`` continues row ``source[i]`` of ``old`` (-1: a
    new row). Per-row state (Adam's moments) follows the rows it belongs to; a new row starts from zero, and
    scalar state (the step count) is kept, as gsplat's strategies do."""
    for group in opt.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = opt.state.pop(old, None)
    if not state:
        return
    have = source >= 0
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == old.shape[0]:
            rows = torch.zeros((len(source), *value.shape[1:]), dtype=value.dtype, device=value.device)
            rows[have] = value[source[have]]
            moved[key] = rows
        else:
            moved[key] = value
    opt.state[new] = moved
