"""Mouth polygons, the whiteness score and its per-subject threshold."""

from __future__ import annotations

import numpy as np


def mouth_mask(polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=1)
    return np.asarray(canvas) > 0


def whiteness(image) -> np.ndarray:
    """HSV value x (1 - saturation), in [0, 1]: high for teeth, low for lips, tongue and shadow."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    return hsv[..., 2] * (1 - hsv[..., 1])


def otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0, 1))
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * w0 - mu) ** 2 / np.clip(w0 * (1 - w0), 1e-12, None)
    return float(edges[1:][np.argmax(between)])


def learn_threshold(ctx, lm: np.ndarray, open_ids: np.ndarray, sample: int) -> float | None:
    """Otsu's split of inner-mouth whiteness over (a sample of) the open-mouth frames; None if none is open."""
    from PIL import Image

    from . import INNER_MOUTH

    if len(open_ids) == 0:
        return None
    pick = open_ids[np.linspace(0, len(open_ids) - 1, min(sample, len(open_ids))).round().astype(int)]
    values = []
    for i in pick:
        image = Image.open(ctx.input(f"ori_imgs/{i}.jpg")).convert("RGB")
        values.append(whiteness(image)[mouth_mask(lm[i, INNER_MOUTH, :2], image.size)])
    return otsu(np.concatenate(values))
