"""Carry a prepared run folder to a machine without mediapipe or ffmpeg (the GPU box) in a few tens of MB.

    python -m tools.gpu.pack pack RUN PACK      # here: frames -> H.264 (crf 14), labels, landmarks, fit
    python -m tools.gpu.pack unpack PACK RUN    # there: rebuilds the run folder with cv2 and numpy

Unpacking rebuilds ``ori_imgs`` (decoded from the H.264 copy, so a little softer than the original JPEGs;
training and evaluation both see the same decoded frames), ``parsing``, ``torso_imgs`` and ``gt_imgs``
(with the face tracker's own composite code), the 68-point ``.lms``, ``track_params.pt`` (vertices
recomputed from the head model), ``being.json`` and ``config.yaml``. A development tool for the GPU box (the
benchmarks then run on the unpacked folder); unpacking needs being-face-mediapipe installed (its composite
code; not mediapipe itself).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

COLOURS = [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)]  # bg, head, neck, torso (cv2 order)
#: files that travel as they are; aud.wav too: the trainer reads it (the clip's own sync, the held-out speech,
#: `silence: close`'s pauses)
COPIED = ("bc.jpg", "being.json", "config.yaml", "transforms_train.json", "transforms_val.json", "aud.wav")


def pack(run: Path, dest: Path) -> None:
    import cv2
    import imageio_ffmpeg
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    n = json.loads((run / "being.json").read_text())["dataset"]["n_frames"]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-framerate", "25", "-start_number",
                    "0", "-i", str(run / "ori_imgs" / "%d.jpg"), "-c:v", "libx264", "-crf", "14", "-pix_fmt",
                    "yuv444p", str(dest / "frames.mp4")], check=True)
    labels = np.zeros((n, *cv2.imread(str(run / "parsing" / "0.png")).shape[:2]), np.uint8)
    for i in range(n):
        p = cv2.imread(str(run / "parsing" / f"{i}.png"))
        for k, c in enumerate(COLOURS):
            labels[i][(p == c).all(-1)] = k
    np.savez_compressed(dest / "labels.npz", labels=labels)
    lm = np.load(run / "face" / "landmarks.npy")
    np.savez_compressed(dest / "landmarks.npz", landmarks=lm, confidence=np.load(run / "face" / "confidence.npy"))
    track = torch.load(run / "track_params.pt")
    head = np.load(run / "face" / "head_model.npz")
    np.savez_compressed(dest / "fit.npz", **{k: track[k].numpy() for k in ("id", "exp", "euler", "trans", "focal")},
                        euler_convention=np.array(track.get("euler_convention", "")),
                        mean=head["mean"], basis=head["basis"], dense=head["dense_weights"])
    np.savez_compressed(dest / "audio.npz", aud_mel=np.load(run / "aud_mel.npy"))
    for name in COPIED:
        shutil.copy(run / name, dest / name)


def unpack(src: Path, run: Path) -> None:
    import cv2
    import torch

    for sub in ("ori_imgs", "parsing", "torso_imgs", "gt_imgs", "face"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    labels = np.load(src / "labels.npz")["labels"]
    lmz = np.load(src / "landmarks.npz")
    lm = lmz["landmarks"]
    np.save(run / "face" / "landmarks.npy", lm)
    np.save(run / "face" / "confidence.npy", lmz["confidence"])
    cap = cv2.VideoCapture(str(src / "frames.mp4"))
    frames = []
    while len(frames) < len(labels):
        ok, frame = cap.read()
        if not ok:
            raise SystemExit(f"frames.mp4 ended at frame {len(frames)} of {len(labels)}")
        frames.append(frame)
    global _JOB
    _JOB = (run, cv2.imread(str(src / "bc.jpg")), frames, labels, lm)
    from multiprocessing import get_context

    with get_context("fork").Pool() as pool:
        pool.map(_write_frame, range(len(labels)), chunksize=16)
    fit = np.load(src / "fit.npz")
    shapes = fit["mean"][None] + np.einsum("nk,kvc->nvc", fit["exp"], fit["basis"])
    vertices = torch.einsum("dv,nvc->ndc", torch.from_numpy(fit["dense"]), torch.from_numpy(shapes).float())
    convention = {"euler_convention": str(fit["euler_convention"])} if "euler_convention" in fit and \
        str(fit["euler_convention"]) else {}
    torch.save({k: torch.from_numpy(fit[k]) for k in ("id", "exp", "euler", "trans", "focal")} | {"vertices": vertices}
               | convention,
               run / "track_params.pt")
    np.save(run / "aud_mel.npy", np.load(src / "audio.npz")["aud_mel"])
    if (src / "speech").is_dir():  # new speech for the avatars to say (tools/gpu/carry.py --speech)
        shutil.copytree(src / "speech", run / "speech", dirs_exist_ok=True)
    for name in COPIED:
        if name != "aud.wav" or (src / name).is_file():  # packs made before aud.wav travelled lack it
            shutil.copy(src / name, run / name)


_JOB = None


def _write_frame(i: int) -> None:
    import cv2
    from being_face_mediapipe.lm68 import MESH_TO_68
    from being_face_mediapipe.parsing import torso_rgba

    run, bc, frames, labels, lm = _JOB
    frame, lab = frames[i], labels[i]
    cv2.imwrite(str(run / "ori_imgs" / f"{i}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    np.savetxt(run / "ori_imgs" / f"{i}.lms", lm[i, MESH_TO_68, :2], "%f")
    cv2.imwrite(str(run / "parsing" / f"{i}.png"), np.array(COLOURS, np.uint8)[lab])
    head, neck, torso = lab == 1, lab == 2, lab == 3
    cv2.imwrite(str(run / "torso_imgs" / f"{i}.png"), torso_rgba(frame, head, neck, torso, lm[i]))
    cv2.imwrite(str(run / "gt_imgs" / f"{i}.jpg"), np.where((lab == 0)[..., None], bc, frame))


if __name__ == "__main__":
    verb, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    (pack if verb == "pack" else unpack)(a, b)
