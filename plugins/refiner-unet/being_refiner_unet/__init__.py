"""Being refiner ``unet``: a small U-Net learned per subject.

Its fit (``run``) learns, from the trainer's replay of the run's own training frames, the map from the
avatar's render (and alpha) to the real frame, inside the head region only: the render's alpha grown by
``dilate`` pixels. Everything outside that region comes back exactly as the trainer rendered it. No
pretrained weights, nothing downloaded; LPIPS joins the loss only from a local weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from being_core import Refiner, Resources, StageConfig, StageContext, StageReport, hookimpl
from being_core.stage import REFINED_VAL, REPLAY_DIR


class UNetConfig(StageConfig):
    steps: int = Field(5000, ge=1, le=1_000_000, description="Fit steps (batches of crops); 5,000 at width 64 "
                       "scored better than 3,000 at width 32 (docs/benchmarks.md, refiner).")
    batch_size: int = Field(8, ge=1, le=256, description="Crops per step.")
    crop: int = Field(256, ge=16, le=4096, description="Side of the square crops around the head, in pixels "
                      "(the whole frame when it is smaller).")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam's learning rate at the start (cosine decay to zero).")
    width: int = Field(64, ge=4, le=512, description="Channels of the U-Net's top level (doubling per level).")
    levels: int = Field(3, ge=1, le=6, description="Resolutions of the U-Net.")
    dilate: int = Field(8, ge=0, le=256, description="Pixels by which the render's alpha grows into the region the "
                        "refiner may change (hair fringe, the head's edge); outside it nothing changes.")
    lambda_ssim: float = Field(0.2, ge=0, le=100, description="Weight of D-SSIM beside L1.")
    lpips_weights: str | None = Field(
        None, description="A local file with LPIPS (AlexNet) weights (the state dict of the lpips package's "
        "LPIPS(net='alex')); never downloaded. When set, lambda_lpips x LPIPS joins the loss.")
    lambda_lpips: float = Field(0.1, ge=0, le=100, description="Weight of LPIPS (with lpips_weights).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes the GPU when there is one.")
    gpu_precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="Arithmetic of refining on a GPU (the fit is always fp32): bf16 convolutions (the "
        "correction is small, so bf16's rounding stays far below one 8-bit step) or fp32. On the CPU always fp32.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed (crops, initial weights).")
    log_every: int = Field(100, ge=1, le=1_000_000, description="Steps between progress notes.")


def pick_device(want: str) -> str:
    """The device of a ``device`` setting: 'auto' takes the GPU when there is one."""
    if want != "auto":
        return want
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Filter:
    """The fitted U-Net on one device (:class:`being_core.FrameFilter`)."""

    def __init__(self, folder: Path, device: str, precision: str):
        import torch

        from .fit import load

        self.device = device
        self.bf16 = precision == "bf16" and torch.device(device).type == "cuda"
        self.net, self.dilate = load(folder, torch.device(device))

    def __call__(self, rgb, alpha):
        import torch

        from .net import refine

        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return refine(self.net, rgb, alpha, self.dilate)

    def refine_frames(self, rgb, alpha):
        from .net import on_host

        return on_host(self, rgb, alpha)


class UNetRefiner(Refiner[UNetConfig]):
    """A U-Net learned per subject on its own renders and real frames; refines the head only (no weights to bring)."""

    name = "unet"
    version = "0.1.0"
    needs_gpu = True
    learns = True
    outputs = (REFINED_VAL, "refiner/unet.safetensors")
    actions = {"refine": Refiner.refine_action(inputs=("refiner/unet.safetensors",))}
    test_config = {"steps": 6, "batch_size": 2, "crop": 32, "width": 4, "levels": 2, "log_every": 2, "dilate": 2}

    @classmethod
    def resources(cls, config: UNetConfig) -> Resources:
        return Resources.for_device(config.device, cpus=2.0)

    def run(self, ctx: StageContext[UNetConfig]) -> StageReport:
        import time

        import torch

        from .fit import WEIGHTS, fit

        device = pick_device(ctx.config.device)
        metrics = fit(ctx, ctx.config, torch.device(device))
        started = time.monotonic()
        n = self.refine_file(ctx, self.open(ctx.out, ctx.config, device), f"{REPLAY_DIR}/val.mkv",
                             ctx.output(REFINED_VAL))
        metrics.update(val_frames=n, refine_fps=round(n / max(time.monotonic() - started, 1e-6), 1))
        return StageReport(metrics={k: v for k, v in metrics.items() if k != "history"},
                           info={"weights": WEIGHTS, "history": metrics["history"]})

    def open(self, folder: Path, config: UNetConfig, device: str | None = None) -> _Filter:
        return _Filter(folder, device or pick_device(config.device), config.gpu_precision)


@hookimpl
def being_register_stages(registry):
    registry.add(UNetRefiner)
