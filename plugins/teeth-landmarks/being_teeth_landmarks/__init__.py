"""Being teeth_segmenter ``landmarks``: teeth inside the face mesh's inner-mouth polygon.

A per-subject colour model separates teeth from lips, tongue and the dark mouth: over the open-mouth frames
of the clip, the inner-mouth pixels' "whiteness" (HSV value times one minus saturation) is split in two by
Otsu's threshold, learned once per clip. Per frame, pixels above it inside the polygon are teeth; masks
smaller than ``min_area`` of the mouth opening are dropped, and a frame's mask must be confirmed by a
neighbouring frame (temporal consistency), so single-frame flickers vanish. Mouth closed (inner-lip gap
under ``min_opening`` of the mouth width) or no face: an all-false mask.
"""

from __future__ import annotations

from pydantic import Field

from being_core import StageConfig, StageContext, StageReport, TeethSegmenter, hookimpl

INNER_MOUTH = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]


class LandmarkTeethConfig(StageConfig):
    min_opening: float = Field(0.06, ge=0, le=1, description="Inner-lip gap, as a share of mouth width, below which the "
                                                       "mouth counts as closed.")
    min_area: float = Field(0.03, ge=0, le=1, description="Smallest teeth mask, as a share of the mouth opening.")
    sample_frames: int = Field(200, ge=1, le=100_000, description="Open-mouth frames used to learn the colour threshold.")


class LandmarkTeeth(TeethSegmenter[LandmarkTeethConfig]):
    """Teeth inside the mesh's inner-mouth polygon, by a per-subject colour threshold (no weights)."""

    name = "landmarks"
    version = "0.1.0"
    inputs = ("ori_imgs/*.jpg", "face/landmarks.npy", "face/confidence.npy")
    requires = ("landmarks:facemesh-478",)

    def run(self, ctx: StageContext[LandmarkTeethConfig]) -> StageReport:
        import numpy as np

        from .segment import learn_threshold, mouth_mask, whiteness

        cfg = ctx.config
        n = ctx.dataset.n_frames
        lm = np.load(ctx.input("face/landmarks.npy"))
        found = np.load(ctx.input("face/confidence.npy")) > 0
        width = np.linalg.norm(lm[:, 61, :2] - lm[:, 291, :2], axis=1)
        gap = np.linalg.norm(lm[:, 13, :2] - lm[:, 14, :2], axis=1)
        is_open = found & (gap >= cfg.min_opening * width)
        open_ids = np.flatnonzero(is_open)
        threshold = learn_threshold(ctx, lm, open_ids, cfg.sample_frames)
        raw = []
        for i in ctx.progress.track(range(n), "teeth: landmarks", unit="frame"):
            from PIL import Image

            image = Image.open(ctx.input(f"ori_imgs/{i}.jpg")).convert("RGB")
            if not is_open[i] or threshold is None:
                raw.append(np.zeros((image.height, image.width), bool))
                continue
            mouth = mouth_mask(lm[i, INNER_MOUTH, :2], image.size)
            teeth = mouth & (whiteness(image) > threshold)
            raw.append(teeth if teeth.sum() >= cfg.min_area * max(mouth.sum(), 1) else np.zeros_like(teeth))
        has = np.array([m.any() for m in raw])
        confirmed = has & (np.roll(has, 1) | np.roll(has, -1))
        for i, mask in enumerate(raw):
            np.save(ctx.output(f"teeth_mask/{i}.npy"), mask if confirmed[i] else np.zeros_like(mask))
        return StageReport(metrics={"open_mouth_frames": int(is_open.sum()), "frames_with_teeth": int(confirmed.sum()),
                                    "whiteness_threshold": None if threshold is None else round(float(threshold), 4)})


@hookimpl
def being_register_stages(registry):
    registry.add(LandmarkTeeth)
