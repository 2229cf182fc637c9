"""Example teeth_segmenter ``bright``: teeth are the bright, unsaturated pixels inside the inner lips.

It reads the 68-point landmarks (``ori_imgs/<i>.lms``, points 60-67 are the inner lip contour) that any
face tracker writes, so it works beside every tracker. Deliberately small: it shows the whole plugin API.
"""

from __future__ import annotations

from pydantic import Field

from being_core import StageConfig, StageContext, StageReport, TeethSegmenter, hookimpl

INNER_LIPS = slice(60, 68)


class BrightConfig(StageConfig):
    min_value: float = Field(0.55, ge=0, le=1, description="Smallest HSV value (brightness) counted as teeth.")
    max_saturation: float = Field(0.45, ge=0, le=1, description="Largest HSV saturation counted as teeth.")
    min_opening_px: float = Field(2.0, ge=0, le=1000, description="Inner-lip gap below which the mouth counts as closed.")


class BrightTeeth(TeethSegmenter[BrightConfig]):
    """Teeth = bright, unsaturated pixels inside the inner-lip polygon (numpy + Pillow)."""

    name = "bright"
    version = "0.1.0"
    inputs = ("ori_imgs/*.jpg", "ori_imgs/*.lms")

    def run(self, ctx: StageContext[BrightConfig]) -> StageReport:
        import numpy as np
        from PIL import Image, ImageDraw

        cfg = ctx.config
        n = ctx.dataset.n_frames
        open_frames = 0
        for i in ctx.progress.track(range(n), "teeth: bright", unit="frame"):
            image = Image.open(ctx.input(f"ori_imgs/{i}.jpg")).convert("RGB")
            lips = np.loadtxt(ctx.input(f"ori_imgs/{i}.lms"))[INNER_LIPS]
            mask = np.zeros((image.height, image.width), dtype=bool)
            opening = float(np.linalg.norm(lips[2] - lips[6]))  # points 62 (upper) and 66 (lower)
            if np.isfinite(lips).all() and opening >= cfg.min_opening_px:
                poly = Image.new("L", image.size, 0)
                ImageDraw.Draw(poly).polygon([tuple(p) for p in lips], fill=1)
                hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
                mask = (np.asarray(poly) > 0) & (hsv[..., 2] >= cfg.min_value) & (hsv[..., 1] <= cfg.max_saturation)
                open_frames += 1
            np.save(ctx.output(f"teeth_mask/{i}.npy"), mask)
        return StageReport(metrics={"frames": n, "open_mouth_frames": open_frames})


@hookimpl
def being_register_stages(registry):
    registry.add(BrightTeeth)
