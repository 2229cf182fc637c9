"""Lip sync, scored the same way for Being's avatars and for videos made by anything else (run by hand;
results in docs/benchmarks.md).

    python -m benchmarks.lipsync run RUN [RUN ...] [--json OUT.json]
    python -m benchmarks.lipsync video VIDEO [VIDEO ...] [--audio WAV] [--reference REAL.mp4] [--json OUT.json]
    python -m benchmarks.lipsync returned RUN SPEECH.wav DIR [DIR ...] [--json OUT.json]

``run`` scores trained run folders from what training wrote: ``avatar/val.mp4`` (the held-out renders beside
the real frames) and the speech under those frames (``aud.wav``), with the trainer's own ``lip_sync``; and every
render in ``renders/*/`` against its speech. ``video`` scores any talking-head video (another system's output,
or a real recording as a reference point): its mouth against its own audio track (or ``--audio``), and, with
``--reference``, against a real video of the same speech (correlation, bias, mouth LMD scaled to the
reference's size, offset). ``returned`` scores what ``benchmarks.gpu_quality --speech`` brought back from a
GPU box (which has no mediapipe): each DIR's ``avatar/val.mp4`` against RUN's held-out speech, and its
``says.mp4`` against SPEECH.wav. Needs mediapipe (FaceMesh finds the mouth).

    python -m benchmarks.lipsync baseline RUN [RUN ...] [--json OUT.json]

``baseline`` tells how much of a held-out ``av_offset`` the stretch of frames reads by itself: a ridge
regression from each frame's audio window (the run's own features) to the real mouth opening, fitted at lag 0 on
the training frames, scored on the held-out frames as a render is; then the same over every stretch of the
held-out length across the clip, each predicted by a fit on the rest, whose spread is how far a predictor without
lag reads off on one stretch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from being_core.audio import SAMPLE_RATE, read_wav
from being_core.ingest import AUDIO_FILE, extract_audio
from being_core.progress import Reporter


def frames_of(video: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of ``video`` as uint8 RGB, and its frame rate."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader], float(meta["fps"])


def speech_of(media: Path) -> np.ndarray:
    """The first audio stream of ``media`` as 16 kHz mono float32, extracted as ingest extracts a clip's."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_audio(media, Path(tmp), Reporter())
        return read_wav(Path(tmp) / AUDIO_FILE)


def render_and_real(val: Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The renders and the real frames of a ``val.mp4`` (the two side by side), ``[T, H, W, 3]`` each; ValueError
    unless it holds ``n_frames`` frames."""
    frames, _ = frames_of(val)
    if len(frames) != n_frames:
        raise ValueError(f"{val} has {len(frames)} frames; its held-out frames are {n_frames}")
    half = frames[0].shape[1] // 2
    return np.stack([f[:, :half] for f in frames]), np.stack([f[:, half:] for f in frames])


def held_out(run: Path, val: Path, name: str) -> dict:
    """The held-out mouth metrics of a ``val.mp4`` (renders beside the real frames) of an avatar of ``run``."""
    facts = json.loads((run / "being.json").read_text())["dataset"]
    return against_real(run, val, range(facts["val_start"], facts["n_frames"]), f"{name} (held out)")


def trained(run: Path, video: Path, name: str) -> dict:
    """The mouth metrics of a ``train-<first>-<last>.mp4`` (renders of training frames ``first`` to ``last``
    beside the real ones, :func:`benchmarks.common.render_training_stretch`) of an avatar of ``run``: as
    :func:`held_out`, its pause metrics over the clip's pauses within those frames."""
    first, last = (int(x) for x in video.stem.split("-")[1:3])
    return against_real(run, video, range(first, last + 1), f"{name} (training frames {first}-{last})")


def against_real(run: Path, video: Path, frames: range, what: str) -> dict:
    """The trainer's mouth metrics (``lip_sync``) of a video of renders beside the real frames ``frames`` of
    ``run``."""
    from being_trainer_gaussian_avatar.evaluate import lip_sync

    facts = json.loads((run / "being.json").read_text())["dataset"]
    pred, gt = render_and_real(video, len(frames))
    return {"what": what, **lip_sync(run, list(frames), facts["fps"], pred, gt, facts["n_frames"])}


def says(video: Path, speech: Path, name: str) -> dict:
    """How the mouth in a rendered ``video`` follows the ``speech`` it says."""
    from being_trainer_gaussian_avatar import lipsync

    frames, fps = frames_of(video)
    return {"what": f"{name} says {speech.stem}",
            **lipsync.against_speech(lipsync.mouth_points(frames), speech_of(speech), SAMPLE_RATE, fps)}


def score_run(run: Path) -> list[dict]:
    """The held-out mouth metrics of a trained run (from its val.mp4), then one row per render."""
    rows = [held_out(run, run / "avatar" / "val.mp4", run.name)]
    for render in sorted((run / "renders").glob("*/render.mp4")):
        rows.append(says(render, render.parent / "aud.wav", f"{run.name}/{render.parent.name}"))
    return rows


def score_returned(run: Path, speech: Path, folder: Path) -> list[dict]:
    """A folder that ``benchmarks.gpu_quality --speech`` wrote: its held-out renders (and those with the other
    ``silence`` settings, ``silence-*/``), its renders of training frames (``avatar/train-*.mp4``) and its
    ``says*.mp4``."""
    rows = [held_out(run, folder / "avatar" / "val.mp4", folder.name)]
    for again in sorted(folder.glob("silence-*/avatar/val.mp4")):
        rows.append(held_out(run, again, f"{folder.name}/{again.parent.parent.name}"))
    for video in sorted(folder.glob("avatar/train-*-*.mp4")):
        rows.append(trained(run, video, folder.name))
    for video in sorted(folder.glob("says*.mp4")):
        rows.append(says(video, speech, f"{folder.name}/{video.stem}"))
    return rows


def audio_baseline(windows: np.ndarray, opening: np.ndarray, fit_ids, ids, ridge: float = 1e3) -> np.ndarray:
    """The mouth openings of frames ``ids`` as predicted from each frame's audio window (``[N, W, D]``, the run's
    features) by a ridge regression fitted at lag 0 on frames ``fit_ids`` (those whose opening is known): a
    predictor that knows only the audio under a frame, to score a stretch of frames with."""
    x = windows.reshape(len(windows), -1).astype(np.float64)
    fit = np.asarray(fit_ids)
    fit = fit[np.isfinite(opening[fit])]
    mean, scale = x[fit].mean(0), x[fit].std(0) + 1e-6
    a = (x[fit] - mean) / scale
    y = opening[fit] - opening[fit].mean()
    if a.shape[1] <= len(fit):
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y)
    else:  # wider windows than frames (a large encoder, a short clip): the same solution in the frames' space
        w = a.T @ np.linalg.solve(a @ a.T + ridge * np.eye(len(fit)), y)
    return (x[np.asarray(ids)] - mean) / scale @ w + opening[fit].mean()


def stretch_lags(windows: np.ndarray, opening: np.ndarray, length: int, margin: int = 8) -> list[float | None]:
    """:func:`~being_trainer_gaussian_avatar.lipsync.fine_lag` of :func:`audio_baseline` against the real
    openings on each stretch of ``length`` frames in turn, each predicted by a fit on the frames outside it (less
    ``margin`` frames either side, whose audio windows overlap the stretch)."""
    from being_trainer_gaussian_avatar import lipsync

    n = len(opening)
    lags = []
    for start in range(0, n - length + 1, length):
        ids = np.arange(start, start + length)
        fit = np.r_[0:max(0, start - margin), min(n, start + length + margin):n]
        lags.append(lipsync.fine_lag(audio_baseline(windows, opening, fit, ids), opening[ids]))
    return lags


def audio_and_mouth(run: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """A prepared run's dataset facts, its audio windows (``[N, W, D]``, its encoder's features) and the mouth
    opening FaceMesh reads on each of its frames (``[N]``), for the audio baseline."""
    import cv2
    from being_trainer_gaussian_avatar import lipsync

    manifest = json.loads((run / "being.json").read_text())
    facts, info = manifest["dataset"], manifest["stages"]["audio_encoder"]["info"]
    frames = (cv2.cvtColor(cv2.imread(str(run / "ori_imgs" / f"{i}.jpg")), cv2.COLOR_BGR2RGB)
              for i in range(facts["n_frames"]))
    return facts, np.load(run / info["file"]), lipsync.opening(lipsync.mouth_points(frames))


def score_baseline(run: Path) -> list[dict]:
    """The audio baseline of a prepared run: on its held-out frames, and the spread over stretches as long."""
    from being_trainer_gaussian_avatar import lipsync

    facts, windows, opening = audio_and_mouth(run)
    val = np.arange(facts["val_start"], facts["n_frames"])
    pred = audio_baseline(windows, opening, range(facts["val_start"]), val)
    lags = [v for v in stretch_lags(windows, opening, len(val)) if v is not None]
    spread = (f"{np.mean(lags):+.2f} ± {np.std(lags):.2f} ({min(lags):+.2f} to {max(lags):+.2f})" if lags else None)
    corr = lipsync.correlation(pred, opening[val])
    return [{"what": f"{run.name} audio baseline (held out)", "mouth_corr": None if corr is None else round(corr, 3),
             "av_offset": lipsync.best_lag(pred, opening[val]), "av_offset_frames": lipsync.fine_lag(pred, opening[val])},
            {"what": f"{run.name} audio baseline, {len(lags)} stretches of {len(val)} frames",
             "av_offset_frames": spread}]


def score_video(video: Path, audio: Path | None, reference: Path | None) -> dict:
    """A video's mouth against its speech and, given a real ``reference`` video, against that one's mouth."""
    from being_trainer_gaussian_avatar import lipsync

    frames, fps = frames_of(video)
    points = lipsync.mouth_points(frames)
    row: dict = {"what": video.name, "frames": len(frames),
                 **lipsync.against_speech(points, speech_of(audio or video), SAMPLE_RATE, fps)}
    if reference is not None:
        real_frames, _ = frames_of(reference)
        n = min(len(frames), len(real_frames))
        real = lipsync.mouth_points(real_frames[:n])
        scale = real_frames[0].shape[1] / frames[0].shape[1]  # LMD in the reference's pixels
        row.update(lipsync.against_real(points[:n] * scale, real))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lipsync", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    runs = sub.add_parser("run", help="score trained run folders")
    runs.add_argument("runs", nargs="+", type=Path)
    videos = sub.add_parser("video", help="score any talking-head video")
    videos.add_argument("videos", nargs="+", type=Path)
    videos.add_argument("--audio", type=Path, help="the speech (default: each video's own audio track)")
    videos.add_argument("--reference", type=Path, help="a real video of the same speech to compare the mouth with")
    returned = sub.add_parser("returned", help="score what benchmarks.gpu_quality --speech brought back")
    returned.add_argument("run", type=Path)
    returned.add_argument("speech", type=Path)
    returned.add_argument("folders", nargs="+", type=Path)
    baseline = sub.add_parser("baseline", help="what a predictor from the audio alone scores on a run's frames")
    baseline.add_argument("runs", nargs="+", type=Path)
    for p in (runs, videos, returned, baseline):
        p.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.what == "run":
        rows = [row for run in args.runs for row in score_run(run)]
    elif args.what == "baseline":
        rows = [row for run in args.runs for row in score_baseline(run)]
    elif args.what == "returned":
        rows = [row for folder in args.folders for row in score_returned(args.run, args.speech, folder)]
    else:
        rows = [score_video(v, args.audio, args.reference) for v in args.videos]
    from being_trainer_gaussian_avatar.lipsync import KEYS

    keys = [k for k in KEYS if any(k in r for r in rows)]
    print(" | ".join(["what", *keys]))
    for r in rows:
        print(" | ".join([r["what"], *(str(r.get(k, "")) for k in keys)]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
