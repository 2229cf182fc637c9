"""Writing frames (and audio) to mp4 with the ffmpeg that imageio-ffmpeg ships."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_video(path: Path, frames, fps: float = 25.0, audio: Path | None = None) -> None:
    """Write ``frames`` (an iterable of ``[H, W, 3] uint8`` RGB, or one ``[T, H, W, 3]`` array) as H.264,
    muxing ``audio`` (AAC) when given. Written to a temporary name, then renamed."""
    import imageio_ffmpeg

    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    tmp = Path(path).with_name(f".{Path(path).stem}.tmp.mp4")
    writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", quality=8,
                                         pix_fmt_out="yuv420p", macro_block_size=2,
                                         audio_path=str(audio) if audio else None,
                                         audio_codec="aac" if audio else None,
                                         output_params=["-shortest"] if audio else None, ffmpeg_log_level="error")
    writer.send(None)
    writer.send(np.ascontiguousarray(first))
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    os.replace(tmp, path)
