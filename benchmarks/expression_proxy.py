"""How far the deformer's audio path alone carries the mouth, on a CPU in minutes (run by hand; results in
docs/benchmarks.md).

    python -m benchmarks.expression_proxy RUN [--folds 10] [--steps 1000] [--points 512] [--no-camera-token]

The trainer's deformer, trained on its expression loss alone (no Gaussians, no images): for each stretch of the
folds (``benchmarks.folds``), a fresh deformer learns, on the frames that fold trains on, to move the head model's
vertices as the tracked head model moved them (``--steps`` steps of 32 frames at ``--points`` of the vertices that
move most, plus the four lip points), from the same audio windows, eye and pose inputs the trainer gives it. Then
it says where it puts the lips in each held-out frame: their opening (inner-lip gap over mouth width, as FaceMesh's
is measured) is scored against FaceMesh's opening of the real frame over all folds
(:func:`benchmarks.folds.over_folds`), beside the tracked head model's own opening (how closely the target follows
FaceMesh) and the audio baseline (a ridge regression). A screen for audio-path settings (the encoder's window and
lead, the pose input) before spending GPU time: what the images add to the deformer is not in it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from being_trainer_gaussian_avatar import lipsync

from benchmarks.common import run_data
from benchmarks.folds import over_folds, stretches

#: FaceMesh's inner lips and mouth corners: the points of the trainer's mouth opening (its lipsync's)
LIPS = tuple(lipsync.MOUTH[k] for k in (lipsync.UPPER, lipsync.LOWER, lipsync.LEFT, lipsync.RIGHT))


def lip_vertices(run: Path) -> list[int]:
    """The head model's dense vertices that are FaceMesh's :data:`LIPS` (weight 1 on that landmark)."""
    weights = np.load(run / "face" / "head_model.npz")["dense_weights"]
    return [int(np.argmax(weights[:, k])) for k in LIPS]


def opening(lips: np.ndarray) -> np.ndarray:
    """``[T, 4, 3]`` :data:`LIPS` positions in head space -> ``[T]`` inner-lip gap over mouth width, seen from the
    front (x and y) as FaceMesh sees a frontal face: the lips' depth apart is no gap (in 3D, d20's closed lips
    read 0.089 instead of FaceMesh's 0.014)."""
    front = lips[..., :2]
    return np.linalg.norm(front[:, 0] - front[:, 1], axis=-1) / np.linalg.norm(front[:, 2] - front[:, 3], axis=-1)


def fit_and_predict(data, lips: list[int], train: np.ndarray, held: np.ndarray, steps: int, points: int,
                    camera_token: bool, seed: int = 0) -> np.ndarray:
    """The trainer's avatar (its deformer, its fine-stage optimiser groups and batch size) trained on its
    expression loss alone over frames ``train``; the lips' opening its deformer gives frames ``held``."""
    import torch
    from being_trainer_gaussian_avatar import AvatarConfig
    from being_trainer_gaussian_avatar.avatar import Avatar

    cfg = AvatarConfig(seed=seed, camera_token=camera_token, device="cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    av = Avatar(data, cfg, torch.device("cpu"))
    optimiser = av.optimizer(fine=True)  # the Gaussians get no gradient here, so only the deformer moves
    motion = data.expression.float()
    moving = torch.argsort(motion.std(0).norm(dim=-1), descending=True)[:4 * points]
    lip_ids = torch.as_tensor(lips)
    frames = torch.as_tensor(train)
    for _ in range(steps):
        ids = frames[torch.randint(len(frames), (cfg.batch_size,), generator=gen)]
        at = torch.cat([moving[torch.randint(len(moving), (points,), generator=gen)], lip_ids])
        loss = (av.motion(ids, at) - motion[ids][:, at]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        moved = av.motion(torch.as_tensor(held), lip_ids)
    return opening((data.points[lip_ids][None] + moved).numpy())


def score(run: Path, folds: int, steps: int, points: int, camera_token: bool = True) -> list[dict]:
    """Rows for the deformer, the tracked head model and the audio baseline over ``folds`` stretches of ``run``."""
    from benchmarks.lipsync import audio_and_mouth, audio_baseline

    facts, windows, real = audio_and_mouth(run)
    n = facts["n_frames"]
    data = run_data(run, None)
    lips = lip_vertices(run)
    tracked = opening((data.points[lips][None] + data.expression[:, lips].float()).numpy())
    rows: dict[str, list] = {"deformer": [], "tracked": [], "baseline": []}
    for start, end in stretches(n, facts["val_start"], folds):
        held, train = np.arange(start, end), np.r_[0:start, end:n]
        rows["deformer"].append((fit_and_predict(data, lips, train, held, steps, points, camera_token), real[held]))
        rows["tracked"].append((tracked[held], real[held]))
        rows["baseline"].append((audio_baseline(windows, real, train, held), real[held]))
    what = {"deformer": f"deformer on the expression loss ({steps} steps{'' if camera_token else ', no pose input'})",
            "tracked": "the tracked head model", "baseline": "audio baseline"}
    return [{"what": f"{run.name} {what[k]}", **over_folds(v)} for k, v in rows.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.expression_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--no-camera-token", action="store_true")
    args = parser.parse_args(argv)
    for row in score(args.run, args.folds, args.steps, args.points, not args.no_camera_token):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
