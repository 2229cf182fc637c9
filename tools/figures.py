"""The README's figures, drawn from a run folder (run by hand):

    python -m tools.figures avatar RUN/avatar/val.mp4 docs/images/talking-avatar.png [--frames 3]
    python -m tools.figures prepare RUN docs/images/prepare-output.png

``avatar``: held-out frames of the side-by-side video the trainer writes (the render on the left, the real
frame on the right), the ones with the widest spread of mouth openings, stacked with labels.
``prepare``: what `being prepare` writes, as geometry and features only (no pixels of the person).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def avatar(video: Path, out: Path, count: int) -> None:
    import imageio_ffmpeg
    from PIL import Image, ImageDraw

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    half = width // 2
    # the real frames' lower-middle region varies most with the mouth: pick frames spread over its brightness
    mouth = np.array([f[int(height * 0.55):int(height * 0.8), half + half // 3: width - half // 3].mean()
                      for f in frames])
    order = np.argsort(mouth)
    picks = sorted(order[np.linspace(0, len(order) - 1, count).round().astype(int)])
    label_h = 28
    canvas = Image.new("RGB", (width, count * height + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((half // 2 - 40, 8), "Being (rendered)", fill="black")
    draw.text((half + half // 2 - 40, 8), "real frame (held out)", fill="black")
    for row, i in enumerate(picks):
        canvas.paste(Image.fromarray(frames[i]), (0, label_h + row * height))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)


def prepare(run: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    params = torch.load(run / "track_params.pt")
    verts = params["vertices"][0].numpy()
    lms = np.loadtxt(run / "ori_imgs" / "0.lms")
    feats = np.load(run / "aud_mel.npy")
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.2))
    ax[0].scatter(verts[:, 0], verts[:, 1], s=0.3, c=verts[:, 2], cmap="viridis")
    ax[0].set_title(f"track_params.pt vertices: {len(verts)} points (dm)")
    ax[0].set_aspect("equal")
    ax[1].plot(*lms[:17].T, ".-", *lms[17:27].T, ".", *lms[27:36].T, ".", *lms[36:48].T, ".",
               *lms[48:60].T, ".-", *lms[60:].T, ".-")
    ax[1].invert_yaxis()
    ax[1].set_aspect("equal")
    ax[1].set_title("ori_imgs/0.lms: 68 iBUG points (px)")
    ax[2].imshow(feats[:, 8, :].T, aspect="auto", origin="lower", cmap="magma")
    ax[2].set_title(f"aud_mel.npy {list(feats.shape)}: centre window per frame")
    ax[2].set_xlabel("video frame")
    ax[2].set_ylabel("mel band")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="figure", required=True)
    a = sub.add_parser("avatar")
    a.add_argument("video", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--frames", type=int, default=3)
    p = sub.add_parser("prepare")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.figure == "avatar":
        avatar(args.video, args.out, args.frames)
    else:
        prepare(args.run, args.out)


if __name__ == "__main__":
    main()
