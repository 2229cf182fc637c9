"""Benchmark: frames per second of each step of `being prepare` on a real clip (run by hand).

    .venv/bin/python -m benchmarks.prepare_stages ../shared/testdata/videos/dfrf_cnn2_25fps.mp4

Prints one JSON line per step (ingest, face landmarks, head fit, audio) and the whole stage; the numbers
recorded in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video", type=Path)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")

    import cv2
    from being_audio_mel import MelConfig, log_mel
    from being_face_mediapipe.fit import fit_head
    from being_face_mediapipe.track import detect, fill_gaps

    from being_core.audio import frame_windows, read_wav
    from being_core.config import IngestConfig
    from being_core.ingest import ingest
    from being_core.progress import Reporter

    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "video": args.video.name}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        result = ingest(args.video, root, IngestConfig(size=args.size, crop="center"))
        n = result.n_frames
        report["frames"] = n
        report["ingest_fps"] = round(n / (time.perf_counter() - t), 1)

        class Frames:
            def __len__(self):
                return n

            def __getitem__(self, i):
                return cv2.cvtColor(cv2.imread(str(root / "ori_imgs" / f"{i}.jpg")), cv2.COLOR_BGR2RGB)

        t = time.perf_counter()
        tracks = detect(Frames(), result.width, result.height, 4, 0.5, Reporter())
        t_lm = time.perf_counter() - t
        report["landmarks_fps"] = round(n / t_lm, 1)
        t = time.perf_counter()
        fit = fit_head(fill_gaps(tracks.landmarks, tracks.found), result.width, result.height,
                       weights=tracks.found.astype(np.float32))
        t_fit = time.perf_counter() - t
        report["fit_fps"] = round(n / t_fit, 1)
        report["landmarks_plus_fit_fps"] = round(n / (t_lm + t_fit), 1)
        report["reprojection_px_mean"] = round(float(fit.errors[tracks.found].mean()), 3)
        report["reprojection_px_p95"] = round(float(np.percentile(fit.errors[tracks.found], 95)), 3)
        for label in ("mel_realtime_factor_first_call", "mel_realtime_factor"):  # the first call imports librosa
            t = time.perf_counter()
            audio = read_wav(root / "aud.wav")
            frame_windows(log_mel(audio, MelConfig()), n, 25.0, 16)
            report[label] = round(len(audio) / 16000 / (time.perf_counter() - t), 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
