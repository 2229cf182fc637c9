"""Draw docs/images/prepare-output.png from a prepared run folder (geometry and features only, no pixels of
the person in the clip):

    .venv/bin/python benchmarks/figure_prepare.py RUN docs/images/prepare-output.png
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(run: Path, out: Path) -> None:
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


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
