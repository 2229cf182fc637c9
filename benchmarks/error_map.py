"""Where the held-out error lives: how much of it stays the same over the frames, and which parts of the frame
hold it (run by hand; results in docs/benchmarks.md).

    python -m benchmarks.error_map VIDEO [--panels 2|3] [--out DIR] [--no-mouth]

VIDEO is a side-by-side video whose last panel is the real frame: the trainer's ``avatar/val.mp4`` (render |
real, ``--panels 2``, the default) or ``benchmarks.refiner``'s ``val-refined.mp4`` (render | refined | real,
``--panels 3``). Every other panel is scored against the real one over all frames:

- ``mse`` and the PSNR of that mean (the trainer's ``psnr`` averages per-frame PSNRs, so it reads a little
  higher);
- ``constant_share``: the part of the squared error that is the same in every frame (the per-pixel mean error,
  squared, over the per-pixel mean squared error). An image-to-image map learned elsewhere cannot know it: it is
  the look of this stretch of the clip (light, hair, an animated background), not of a frame. Over T frames,
  error that changes at random from frame to frame still reads about 1/T as constant;
- ``mouth_share`` (needs mediapipe): the part inside the mouth region, the lips' box grown by half its width
  on every side, found by FaceMesh on each real frame;
- ``tiles``: the five cells of a 16 x 16 grid holding the most squared error, with each one's share and how
  much of it is constant.

Writes DIR/error_map.json and DIR/error_map.png (per panel: the per-pixel mean squared error, its constant part
and its varying part, on one colour scale). Memory stays bounded: the frames are read in batches and summed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID = 16
TOP_TILES = 5


@dataclass
class ErrorSums:
    """Running sums of one panel's error against the real frames (float64, ``[H, W]`` summed over channels)."""

    frames: int = 0
    error: np.ndarray | None = None  # sum over frames of the error, per pixel and channel [H, W, 3]
    squared: np.ndarray | None = None  # sum over frames of the squared error, per pixel [H, W]
    mouth: float = 0.0  # squared error inside the mouth region, summed
    mouth_frames: int = 0

    def add(self, pred: np.ndarray, real: np.ndarray, boxes: list[tuple[int, int, int, int] | None]) -> None:
        """``pred``/``real``: ``[B, H, W, 3]`` uint8; ``boxes``: per frame (top, bottom, left, right) or None."""
        e = pred.astype(np.float64) / 255 - real.astype(np.float64) / 255
        sq = (e ** 2).sum(-1)
        if self.error is None:
            self.error, self.squared = np.zeros(e.shape[1:]), np.zeros(sq.shape[1:])
        assert self.squared is not None
        self.error += e.sum(0)
        self.squared += sq.sum(0)
        self.frames += len(e)
        for k, box in enumerate(boxes):
            if box is not None:
                top, bottom, left, right = box
                self.mouth += float(sq[k, top:bottom, left:right].sum())
                self.mouth_frames += 1

    def maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``[H, W]`` per pixel, channels summed: the mean squared error, its constant part (the mean error,
        squared) and the rest."""
        assert self.error is not None and self.squared is not None and self.frames
        total = self.squared / self.frames
        constant = ((self.error / self.frames) ** 2).sum(-1)
        return total, constant, np.clip(total - constant, 0, None)

    def summary(self, with_mouth: bool) -> dict:
        """The panel's figures (see the module's doc)."""
        assert self.squared is not None
        total, constant, _ = self.maps()
        overall = float(total.sum())
        h, w = total.shape
        rows, cols = np.array_split(np.arange(h), GRID), np.array_split(np.arange(w), GRID)
        tiles = []
        for r in rows:
            for c in cols:
                cell = total[r[0]:r[-1] + 1, c[0]:c[-1] + 1].sum()
                const = constant[r[0]:r[-1] + 1, c[0]:c[-1] + 1].sum()
                tiles.append({"rows": [int(r[0]), int(r[-1]) + 1], "cols": [int(c[0]), int(c[-1]) + 1],
                              "share": round(float(cell) / overall, 4) if overall else 0.0,
                              "constant_share": round(float(const / cell), 4) if cell else 0.0})
        tiles.sort(key=lambda t: -t["share"])
        mse = overall / (3 * h * w)
        out = {"frames": self.frames, "mse": float(f"{mse:.6g}"),
               "psnr_of_mean_mse": round(float(10 * np.log10(1 / mse)), 3) if mse else None,
               "constant_share": round(float(constant.sum()) / overall, 4) if overall else 0.0,
               "tiles": tiles[:TOP_TILES]}
        if with_mouth:
            out["mouth_share"] = round(self.mouth / (self.squared.sum()), 4) if self.squared.sum() else 0.0
            out["mouth_frames"] = self.mouth_frames
        return out


def mouth_box(points: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    """The lips' box (``[20, 2]`` FaceMesh mouth points in pixels) grown by half its width on every side."""
    if not np.isfinite(points).all():
        return None
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    grow = (x1 - x0) / 2
    return (max(0, int(y0 - grow)), min(h, int(np.ceil(y1 + grow))),
            max(0, int(x0 - grow)), min(w, int(np.ceil(x1 + grow))))


def error_map(video: Path, panels: int, mouth: bool = True) -> tuple[dict, dict[str, ErrorSums]]:
    """Score every panel of ``video`` but the last against the last (see the module's doc)."""
    import contextlib

    from being_core.frames import read_video

    names = ["render"] if panels == 2 else ["render", "refined"] if panels == 3 else \
        [f"panel {k}" for k in range(panels - 1)]
    sums = {name: ErrorSums() for name in names}
    with contextlib.ExitStack() as stack:
        meter = None
        if mouth:
            from being_trainer_gaussian_avatar.lipsync import MouthMeter

            meter = stack.enter_context(MouthMeter())
        for batch in read_video(video):
            width = batch.shape[2]
            if width % panels:
                raise ValueError(f"{video} is {width} pixels wide, which does not split into {panels} panels")
            side = width // panels
            real = batch[:, :, -side:]
            h = real.shape[1]
            boxes = [mouth_box(meter.points(np.ascontiguousarray(f)), h, side) if meter else None for f in real]
            for k, name in enumerate(names):
                sums[name].add(batch[:, :, k * side:(k + 1) * side], real, boxes)
    if not sums[names[0]].frames:
        raise ValueError(f"{video} holds no frames")
    return {name: s.summary(mouth) for name, s in sums.items()}, sums


def write_maps(sums: dict[str, ErrorSums], path: Path) -> None:
    """Per panel one row: total | constant | varying per-pixel squared error, one colour scale for all."""
    import cv2

    from being_core.protocol import write_bytes_atomic

    maps = [s.maps() for s in sums.values()]
    top = max(float(np.percentile(m[0], 99.5)) for m in maps) or 1.0
    rows = []
    for total, constant, varying in maps:
        row = [cv2.applyColorMap((np.clip(m / top, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
               for m in (total, constant, varying)]
        rows.append(np.concatenate(row, 1))
    ok, png = cv2.imencode(".png", np.concatenate(rows, 0))
    if not ok:
        raise ValueError(f"{path}: the error map could not be encoded as PNG")
    write_bytes_atomic(path, png.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("--panels", type=int, default=2, help="panels side by side, the real frame last (default 2)")
    ap.add_argument("--out", type=Path, help="folder for error_map.json and error_map.png (default: the video's)")
    ap.add_argument("--no-mouth", action="store_true", help="skip the mouth region (no mediapipe needed)")
    args = ap.parse_args()
    from being_core.protocol import write_json_atomic

    if args.panels < 2:
        ap.error("--panels needs at least 2 (a panel to score and the real frame)")
    result, sums = error_map(args.video, args.panels, mouth=not args.no_mouth)
    out = args.out or args.video.parent
    write_json_atomic(out / "error_map.json", {"video": str(args.video), **result})
    write_maps(sums, out / "error_map.png")
    for name, r in result.items():
        mouth = f", mouth region {r['mouth_share']:.1%}" if "mouth_share" in r else ""
        print(f"{name}: {r['frames']} frames, mse {r['mse']:.3g} (PSNR of the mean {r['psnr_of_mean_mse']} dB), "
              f"constant over the frames {r['constant_share']:.1%}{mouth}")
        for t in r["tiles"]:
            print(f"  rows {t['rows'][0]}-{t['rows'][1]}, columns {t['cols'][0]}-{t['cols'][1]}: {t['share']:.1%} "
                  f"of the error, {t['constant_share']:.0%} of it constant")
    print(f"wrote {out / 'error_map.json'} and {out / 'error_map.png'}")


if __name__ == "__main__":
    main()
