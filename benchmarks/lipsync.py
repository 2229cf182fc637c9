"""Lip sync, scored the same way for Being's avatars and for videos made by anything else (run by hand;
results in docs/benchmarks.md).

    python -m benchmarks.lipsync run RUN [RUN ...] [--json OUT.json]
    python -m benchmarks.lipsync video VIDEO [VIDEO ...] [--audio WAV] [--reference REAL.mp4] [--json OUT.json]

``run`` scores trained run folders from what training wrote: ``avatar/val.mp4`` (the held-out renders beside
the real frames) and the speech under those frames (``aud.wav``), with the trainer's own ``lip_sync``; and every
render in ``renders/*/`` against its speech. ``video`` scores any talking-head video (another system's output,
or a real recording as a reference point): its mouth against its own audio track (or ``--audio``), and, with
``--reference``, against a real video of the same speech (correlation, bias, mouth LMD scaled to the
reference's size, offset). Needs mediapipe (FaceMesh finds the mouth).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from being_core.audio import SAMPLE_RATE
from being_core.ingest import ffmpeg_exe


def frames_of(video: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of ``video`` as uint8 RGB, and its frame rate."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader], float(meta["fps"])


def speech_of(media: Path) -> np.ndarray:
    """The audio of ``media`` as 16 kHz mono float32 (ValueError when it has none)."""
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(media), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
                           "-f", "s16le", "-"], capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise ValueError(f"{media} has no audio that ffmpeg can read: {proc.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(proc.stdout, "<i2").astype(np.float32) / 32768.0


def score_run(run: Path) -> list[dict]:
    """The held-out mouth metrics of a trained run (from its val.mp4), then one row per render."""
    from being_trainer_gaussian_avatar import lipsync
    from being_trainer_gaussian_avatar.train import lip_sync

    manifest = json.loads((run / "being.json").read_text())
    facts = manifest["dataset"]
    frames, _ = frames_of(run / "avatar" / "val.mp4")
    half = frames[0].shape[1] // 2
    ids = list(range(facts["val_start"], facts["n_frames"]))
    if len(ids) != len(frames):
        raise ValueError(f"{run}/avatar/val.mp4 has {len(frames)} frames, the val split {len(ids)}")
    pred = np.stack([f[:, :half] for f in frames])
    gt = np.stack([f[:, half:] for f in frames])
    rows = [{"what": f"{run.name} (held out)", **lip_sync(run, ids, facts["fps"], pred, gt)}]
    for render in sorted((run / "renders").glob("*/render.mp4")):
        video, fps = frames_of(render)
        rows.append({"what": f"{run.name} says {render.parent.name}",
                     **lipsync.against_speech(lipsync.mouth_points(video), speech_of(render.parent / "aud.wav"),
                                              SAMPLE_RATE, fps)})
    return rows


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
    for p in (runs, videos):
        p.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.what == "run":
        rows = [row for run in args.runs for row in score_run(run)]
    else:
        rows = [score_video(v, args.audio, args.reference) for v in args.videos]
    keys = [k for k in ("mouth_corr", "mouth_bias_pct", "lmd", "av_offset", "silent_frames", "silent_closed",
                        "silent_closed_real", "envelope_corr", "envelope_corr_real") if any(k in r for r in rows)]
    print(" | ".join(["what", *keys]))
    for r in rows:
        print(" | ".join([r["what"], *(str(r.get(k, "")) for k in keys)]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
