"""How far the composite alone keeps a prepared run from a perfect held-out PSNR (run by hand; results in
docs/benchmarks.md). No training: it needs only a prepared run folder, on a CPU.

    python -m benchmarks.composite_ceiling RUN [--resolution 512] [--split val|train|all]

The trainer renders the head over a per-frame background (``torso_imgs`` over ``bc.jpg``) and its held-out
PSNR compares with the real frame (``ori_imgs``). Even a perfect head scores only what the background
allows: this prints that ceiling, and where the error outside the head comes from (pixels the parsing calls
background, where ``bc.jpg`` differs from the frame; torso and neck pixels, copied from the frame; the
neck extension under the chin), as each region's share of the squared error and the PSNR the
frame would reach without that region's error.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.common import run_data


def main() -> None:
    import cv2
    from being_trainer_gaussian_avatar.losses import db
    from rich.console import Console
    from rich.progress import track

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--resolution", type=int, default=None, help="training width (default: the dataset's)")
    ap.add_argument("--split", choices=("val", "train", "all"), default="val")
    args = ap.parse_args()
    data = run_data(args.run, args.resolution)
    ids = {"val": data.val_ids, "train": data.train_ids, "all": list(range(data.n))}[args.split]
    regions = ("background", "torso_neck", "head_edge_band")
    se = dict.fromkeys(regions, 0.0)
    pixels = dict.fromkeys(regions, 0)
    values = 0
    for i in track(ids, description=f"{len(ids)} {args.split} frames", console=Console(stderr=True)):
        image, head, bg = (a.astype(np.float64) for a in data.pixels(i))
        white = data.background_label(i)
        outside = head == 0
        err = ((bg - image) ** 2).sum(-1) * outside
        # Pixels within 4 px (at 512) of the head that the parsing calls background: hair fringe, anti-aliasing.
        k = max(1, round(4 * data.width / 512))
        grown = cv2.dilate(head.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
        band = grown & outside
        masks = {"head_edge_band": band, "background": white & ~band, "torso_neck": outside & ~white & ~band}
        for name, m in masks.items():
            se[name] += float(err[m].sum())
            pixels[name] += int(m.sum())
        values += image.size
    total = sum(se.values())

    def ceiling(sq):
        return round(db(sq / values), 2)

    out = {"run": str(args.run), "split": args.split, "frames": len(ids), "width": data.width,
           "psnr_ceiling": ceiling(total),
           "regions": {name: {"share_of_pixels": round(pixels[name] / (values / 3), 4),
                              "share_of_error": round(se[name] / max(total, 1e-12), 4),
                              "rmse_in_region": round(math.sqrt(se[name] / max(3 * pixels[name], 1)) * 255, 2),
                              "ceiling_without_it": ceiling(total - se[name])} for name in regions}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
