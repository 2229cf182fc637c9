"""The avatar assembled for one run on one device: the Gaussians, the deformer and the rasteriser, rendering
frames; its optimiser groups and its state. What training and rendering share."""

from __future__ import annotations

import torch

from .data import RunData
from .model import OFFSET_SCALE, Deformer, Gaussians, deformed
from .raster import pick_backend


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
               camera=None, viewmats=None, mouth=None):
        """Render frames ``ids`` (cameras of those training frames) over per-pixel ``backgrounds [B, H, W, 3]``;
        ``audio``/``eye``/``camera`` (the deformer's pose input)/``viewmats`` (head-to-camera ``[B, 4, 4]``)
        override the frames' own. ``mouth``, ``(camera [B, C], weight [N])``: the Gaussians deformed as with that
        pose input in the share ``weight`` of each (:func:`.render.mouth_weight`), with ``camera`` in the rest.
        Returns ``(rgb, alpha, means2d)``."""
        d = self.data
        ids_cpu = ids.cpu()
        offsets = None
        if deform:
            audio, eye, own = self.deformer_inputs(ids_cpu, audio, eye, camera)
            offsets = self.deformer(self.gauss.means, audio, eye, own)
            if mouth is not None:
                other = self.deformer(self.gauss.means, audio, eye, self.deformer_inputs(ids_cpu, camera=mouth[0])[2])
                offsets = offsets + mouth[1].to(self.device)[None, :, None] * (other - offsets)
        means, quats, scales, opac, colours = deformed(self.gauss, offsets, len(ids_cpu))
        view = d.viewmats[ids_cpu] if viewmats is None else viewmats
        rgb, alpha, means2d = self.raster(means, quats, scales, opac, colours, view.to(self.device),
                                          d.Ks[ids_cpu].to(self.device), d.width, d.height)
        if backgrounds is not None:
            rgb = rgb + (1 - alpha) * backgrounds
        return rgb, alpha, means2d

    def deformer_inputs(self, ids_cpu: torch.Tensor, audio=None, eye=None, camera=None) -> tuple[torch.Tensor, ...]:
        """The deformer's audio, eye and pose inputs for frames ``ids_cpu`` (or those given), on the device."""
        d = self.data
        audio = (d.audio[ids_cpu] if audio is None else audio).to(self.device)
        eye = (d.eye[ids_cpu] if eye is None else eye).to(self.device)
        camera = (d.camera[ids_cpu] if camera is None else camera).to(self.device)
        if not self.cfg.camera_token:
            camera = torch.zeros_like(camera)
        return audio, eye, camera

    def motion(self, ids: torch.Tensor, vertices: torch.Tensor, camera=None) -> torch.Tensor:
        """How the deformation of frames ``ids`` (``camera``: their pose inputs, if not their own) moves the head
        model's mean ``vertices`` (indices): ``[B, S, 3]`` in head units, to compare with ``data.expression`` (the
        expression loss)."""
        points = self.data.points[vertices].to(self.device)
        return self.deformer(points, *self.deformer_inputs(ids.cpu(), camera=camera))[..., :3] * OFFSET_SCALE

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
