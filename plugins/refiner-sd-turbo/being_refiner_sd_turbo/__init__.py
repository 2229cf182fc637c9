"""Being refiner ``sd-turbo``: a diffusion pass over the head.

diffusers' image-to-image pipeline, loaded from a local folder the user brings (e.g. a downloaded
``stabilityai/sd-turbo``; local files and safetensors weights only), runs one or two denoising steps at a
configurable strength on each frame, with the same noise for every frame so that consecutive frames do not
flicker, and the result is blended back over the head region only (the render's alpha, grown and feathered).
It learns nothing, so its ``run`` only refines the held-out frames for the side-by-side metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from being_core import Refiner, Resources, StageConfig, StageContext, StageReport, hookimpl
from being_core.stage import REFINED_VAL, REPLAY_DIR


class SDTurboConfig(StageConfig):
    model: str = Field(description="Absolute path of a local diffusers Stable Diffusion folder (model_index.json, "
                       "unet/, vae/, text_encoder/, tokenizer/, scheduler/ with safetensors weights), e.g. "
                       "stabilityai/sd-turbo downloaded once; never fetched.")
    strength: float = Field(0.3, gt=0, le=1, description="How far each frame is noised before denoising: 0 keeps "
                            "it, 1 replaces it. steps x strength must reach 1 (one denoising step at least).")
    steps: int = Field(4, ge=1, le=50, description="Scheduler steps of the full schedule; the pass runs "
                       "int(steps x strength) of them (1-2 for SD-turbo).")
    prompt: str = Field("a sharp, detailed photo of a person's face", max_length=300,
                        description="Text the pass is conditioned on.")
    guidance_scale: float = Field(0.0, ge=0, le=20, description="Classifier-free guidance; SD-turbo is trained "
                                  "without it (0).")
    size: int = Field(512, ge=64, le=2048, description="Side the frame is resized to for the pass (a multiple of "
                      "8; SD-turbo was trained at 512).")
    dilate: int = Field(8, ge=0, le=256, description="Pixels by which the render's alpha grows into the blended "
                        "region; outside it nothing changes.")
    feather: int = Field(4, ge=0, le=64, description="Pixels over which the blend fades out at the region's edge.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="The noise: the same for every frame of a stream.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights' precision: 'auto' is float16 on a GPU and float32 on the CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes the GPU when there is one.")

    @field_validator("model")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not Path(value).is_absolute():
            raise ValueError(f"{value!r}: give the model folder's absolute path (a container sees it at the same path)")
        return value

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"{value} is not a multiple of 8 (the autoencoder halves the size three times)")
        return value

    @model_validator(mode="after")
    def _one_step_at_least(self) -> SDTurboConfig:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps {self.steps} x strength {self.strength} runs no denoising step; raise either")
        return self


class SDTurboRefiner(Refiner[SDTurboConfig]):
    """One or two diffusion steps (diffusers, a local SD-turbo folder you bring) over the head, blended back."""

    name = "sd-turbo"
    version = "0.1.0"
    needs_gpu = True
    outputs = (REFINED_VAL,)
    batch = 4

    @classmethod
    def contract_config(cls, workdir: Path) -> dict:
        from .testing import save_tiny_pipeline

        return {"model": str(save_tiny_pipeline(workdir / "tiny-sd")), "size": 64, "device": "cpu", "dilate": 2,
                "feather": 1}

    @classmethod
    def config_problems(cls, config: SDTurboConfig) -> list[str]:
        """A model folder that is missing or incomplete, before the trainer's replay runs."""
        from .folder import check_model

        try:
            check_model(Path(config.model))
        except ValueError as exc:
            return [str(exc)]
        return []

    @classmethod
    def resources(cls, config: SDTurboConfig) -> Resources:
        return Resources.for_device(config.device, cpus=2.0)

    def run(self, ctx: StageContext[SDTurboConfig]) -> StageReport:
        import time

        started = time.monotonic()
        refine = self.open(ctx.root, ctx.config)
        loaded = time.monotonic() - started
        n = self.refine_file(ctx, refine, f"{REPLAY_DIR}/val.mkv", ctx.output(REFINED_VAL))
        seconds = time.monotonic() - started - loaded
        return StageReport(metrics={"val_frames": n, "load_seconds": round(loaded, 1),
                                    "refine_fps": round(n / max(seconds, 1e-6), 2), "device": refine.device,
                                    "denoising_steps": int(ctx.config.steps * ctx.config.strength)})

    def open(self, folder: Path, config: SDTurboConfig, device: str | None = None):
        import torch

        from .diffuse import Diffusion

        if device is None:
            device = "cuda" if config.device == "auto" and torch.cuda.is_available() else (
                "cpu" if config.device == "auto" else config.device)
        return Diffusion(config, device)


@hookimpl
def being_register_stages(registry):
    registry.add(SDTurboRefiner)
