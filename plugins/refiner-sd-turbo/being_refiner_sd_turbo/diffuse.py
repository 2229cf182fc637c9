"""The diffusion pass: a local diffusers image-to-image pipeline over whole frames, blended back on the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .folder import check_model


def feathered(alpha: torch.Tensor, dilate: int, feather: int) -> torch.Tensor:
    """``[B, H, W]`` alpha to a blend weight ``[B, H, W, 1]``: grown by ``dilate`` pixels, then softened inward
    over ``feather`` pixels; exactly 0 outside the grown region."""
    a = alpha[:, None]
    if dilate > 0:
        a = F.max_pool2d(a, 2 * dilate + 1, stride=1, padding=dilate)
    grown = a > 0
    if feather > 0:  # erode-and-blur: the weight falls to 0 at the grown region's edge, not beyond it
        inner = -F.max_pool2d(-a, 2 * feather + 1, stride=1, padding=feather)
        a = F.avg_pool2d(inner, 2 * feather + 1, stride=1, padding=feather, count_include_pad=False)
    return torch.where(grown, a, torch.zeros_like(a)).clamp(0, 1).permute(0, 2, 3, 1)


class Diffusion:
    """The pipeline on one device with its prompt encoded once; the same noise for every frame
    (:class:`being_core.FrameFilter`)."""

    def __init__(self, cfg, device: str):
        import diffusers
        import transformers
        from diffusers import StableDiffusionImg2ImgPipeline

        diffusers.utils.logging.disable_progress_bar()  # Being shows its own progress
        diffusers.utils.logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()

        folder = check_model(Path(cfg.model))
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(cfg.dtype) or (
            torch.float16 if device.startswith("cuda") else torch.float32)
        try:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, dtype=dtype, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{folder} could not be loaded as a Stable Diffusion image-to-image pipeline: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.cfg, self.device, self.dtype = cfg, device, dtype
        with torch.inference_mode():
            self.embeds = pipe.encode_prompt(cfg.prompt, device, 1, cfg.guidance_scale > 1)[0]

    def __call__(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, h, w, _ = rgb.shape
        x = rgb.permute(0, 3, 1, 2)
        small = x if (h, w) == (cfg.size, cfg.size) else F.interpolate(x, (cfg.size, cfg.size), mode="bilinear",
                                                                        antialias=True, align_corners=False)
        # the same noise for every frame: one generator per frame, all seeded alike
        gens = [torch.Generator(self.device).manual_seed(cfg.seed) for _ in range(b)]
        with torch.inference_mode():
            out = self.pipe(prompt_embeds=self.embeds.expand(b, -1, -1), image=small.to(self.dtype),
                            strength=cfg.strength, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                            generator=gens, output_type="pt").images.float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, (h, w), mode="bilinear", align_corners=False)
        m = feathered(alpha, cfg.dilate, cfg.feather)
        y = out.permute(0, 2, 3, 1).clamp(0, 1)
        return torch.where(m > 0, rgb * (1 - m) + y * m, rgb)

    def refine_frames(self, rgb, alpha):
        """uint8 ``[B, H, W, 3]`` and ``[B, H, W]`` arrays through the pass on its device."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).float().div_(255)
        m = torch.from_numpy(np.ascontiguousarray(alpha)).to(self.device).float().div_(255)
        return (self(x, m).clamp(0, 1) * 255).round().byte().cpu().numpy()
