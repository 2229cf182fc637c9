"""Which input a trained avatar's mouth follows: its audio window, its pose input or its eye input (run by hand;
results in docs/benchmarks.md).

    python -m benchmarks.deformer_inputs RUN MODEL.pt [MODEL.pt ...]

For pairs of training frames (a, b), the deformation of the Gaussians around the mouth (those that
``silence: close-mouth`` moves, :func:`being_trainer_gaussian_avatar.render.mouth_weight` above one half) is computed
with all of frame a's inputs, then with one of them (audio, pose or eye) taken from frame b, then with all of b's.
Each input's share is the mean change of the mouth's offsets when only that input is b's, over the change when all
three are b's. An avatar that reads the mouth from the audio has an audio share near 1 and a pose share near 0; one
that learnt each training frame's mouth by its pose (a short clip's frames each have a pose of their own) has it the
other way round, and its held-out mouth follows nothing it could know from new speech.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: training-frame pairs the shares average over
PAIRS = 40


def input_shares(av: Any, data: Any, pairs: int = PAIRS, seed: int = 0) -> dict:
    """``{"audio", "pose", "eye"}`` shares of the mouth's deformation (module doc) of avatar ``av`` on ``data`` (its
    :class:`RunData`), and ``"mouth_offset"``: the mean change in head units when all three inputs change."""
    import numpy as np
    import torch
    from being_trainer_gaussian_avatar.model import OFFSET_SCALE
    from being_trainer_gaussian_avatar.render import mouth_weight

    from benchmarks.common import shut_or_middle

    train = np.asarray(data.train_ids)
    mouth = mouth_weight(data, shut_or_middle(data), av.gauss.means) > 0.5
    drawn = np.random.default_rng(seed).choice(train, (pairs, 2))
    a, b = torch.as_tensor(drawn[:, 0]), torch.as_tensor(drawn[:, 1])

    @torch.no_grad()
    def offsets(audio, eye, camera):  # the inputs of frames `audio`, `eye`, `camera`, as a render gives them
        given = av.deformer_inputs(audio, data.audio[audio], data.eye[eye], data.camera[camera])
        return av.deformer(av.gauss.means, *given)[:, mouth.to(av.device), :3] * OFFSET_SCALE

    base = offsets(a, a, a)

    def change(other):
        return float((other - base).norm(dim=-1).mean())

    everything = change(offsets(b, b, b))
    return {"audio": round(change(offsets(b, a, a)) / everything, 3), "pose": round(change(offsets(a, a, b)) / everything, 3),
            "eye": round(change(offsets(a, b, a)) / everything, 3), "mouth_offset": round(everything, 6),
            "pairs": pairs, "mouth_gaussians": int(mouth.sum())}


def main() -> None:
    import tempfile

    from benchmarks.common import load_saved, trainer_context

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the prepared run the avatars were trained on")
    ap.add_argument("models", type=Path, nargs="+", help="avatar/model.pt files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            from being_trainer_gaussian_avatar import AvatarConfig

            ctx = trainer_context(args.run, Path(tmp) / "out", AvatarConfig(device="cpu"), Path(tmp) / "state")
            av, data, _ = load_saved(ctx, model, device="cpu")
            print(json.dumps({"model": str(model), **input_shares(av, data)}), flush=True)


if __name__ == "__main__":
    main()
