"""Frames that cross a stage boundary, as video files read and written in batches (memory stays bounded for
any length of audio).

A trainer hands its rendered frames to a refiner as two lossless videos: the RGB frames (``.mkv``, H.264 RGB
at quantiser 0, bit-exact) and the render's alpha, the head's coverage (``.mkv``, FFV1 gray).
The same files work in-process, in a subprocess and in a container. ``.mp4`` is the deliverable: H.264
(yuv420p) with the speech muxed in as AAC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .errors import InputError

#: what a lossless frames file is: the only container the lossless writer makes
LOSSLESS_SUFFIX = ".mkv"


class VideoWriter:
    """Write frames in batches (``[B, H, W, 3]`` uint8 RGB, or ``[B, H, W]`` with ``gray``) to ``path``:
    ``.mkv`` losslessly, ``.mp4`` as H.264 with ``audio`` (a wav) muxed in when given. The file appears under
    its name only when the writer closes without an error (temporary name, then rename)."""

    def __init__(self, path: Path, fps: float, audio: Path | None = None, gray: bool = False):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (LOSSLESS_SUFFIX, ".mp4"):
            raise ValueError(f"{self.path}: frames are written to .mkv (lossless) or .mp4, not {suffix or 'no suffix'}")
        if gray and suffix != LOSSLESS_SUFFIX:
            raise ValueError(f"{self.path}: an alpha video is written losslessly, to .mkv")
        if audio is not None and suffix != ".mp4":
            raise ValueError(f"{self.path}: audio is muxed into .mp4 only")
        self.fps, self.audio, self.gray = fps, audio, gray
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self._gen: Any = None
        self._size: tuple[int, int] | None = None

    def _start(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        lossless = self.path.suffix.lower() == LOSSLESS_SUFFIX
        if lossless:
            if self.gray:  # FFV1 is lossless by design, in every ffmpeg build (x264's gray is not, in older ones)
                kwargs: dict[str, Any] = dict(codec="ffv1", pix_fmt_in="gray", pix_fmt_out="gray", quality=None)
            else:
                kwargs = dict(codec="libx264rgb", pix_fmt_in="rgb24", pix_fmt_out="rgb24", quality=None,
                              output_params=["-qp", "0", "-preset", "ultrafast"])
        else:
            kwargs = dict(codec="libx264", quality=8, pix_fmt_out="yuv420p",
                          audio_path=str(self.audio) if self.audio else None,
                          audio_codec="aac" if self.audio else None,
                          output_params=["-shortest"] if self.audio else None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._gen = imageio_ffmpeg.write_frames(str(self._tmp), (width, height), fps=self.fps, macro_block_size=1
                                                if lossless else 2, ffmpeg_log_level="error", **kwargs)
        self._gen.send(None)
        self._size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (``[H, W, 3]``) or a batch (``[B, H, W, 3]``); gray: ``[H, W]`` or ``[B, H, W]``."""
        frames = np.asarray(frames)
        one = 2 if self.gray else 3
        if frames.ndim == one:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != one + 1 or (not self.gray and frames.shape[-1] != 3):
            raise ValueError(f"{self.path}: frames must be uint8 [B, H, W{'' if self.gray else ', 3'}], "
                             f"got {frames.dtype} {list(frames.shape)}")
        if self._gen is None:
            self._start(frames.shape[2], frames.shape[1])
        if frames.shape[1:3] != self._size:
            raise ValueError(f"{self.path}: frame size {list(frames.shape[1:3])} differs from the first frame's "
                             f"{list(self._size or ())}")
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame))
        self.frames += len(frames)

    def close(self) -> None:
        if self._gen is None:
            raise ValueError(f"{self.path}: no frames were written")
        self._gen.close()
        self._gen = None
        os.replace(self._tmp, self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
            return
        if self._gen is not None:  # an error while writing: no partial file under any name
            try:
                self._gen.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            self._gen = None
        self._tmp.unlink(missing_ok=True)


def read_video(path: Path, batch: int = 16, gray: bool = False) -> Iterator[np.ndarray]:
    """The frames of ``path`` in batches of up to ``batch``: ``[B, H, W, 3]`` uint8 RGB, or ``[B, H, W]`` with
    ``gray``. An InputError names the file when it is missing or not a video."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray" if gray else "rgb24", bpp=1 if gray else 3)
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise InputError(f"{path} is not a video ffmpeg can read ({str(exc).strip().splitlines()[-1][:200]})") from None
    width, height = meta["size"]
    shape = (height, width) if gray else (height, width, 3)
    pending: list[np.ndarray] = []
    try:
        for data in reader:
            pending.append(np.frombuffer(data, np.uint8).reshape(shape))
            if len(pending) == batch:
                yield np.stack(pending)
                pending = []
        if pending:
            yield np.stack(pending)
    finally:
        reader.close()


def frame_pairs(frames: Path, alpha: Path, batch: int = 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rgb [B, H, W, 3], alpha [B, H, W])`` batches of a frames file and its alpha, checked to match."""
    seen = 0
    rgb_batches, alpha_batches = read_video(frames, batch), read_video(alpha, batch, gray=True)
    for rgb in rgb_batches:
        a = next(alpha_batches, None)
        if a is None or a.shape != rgb.shape[:3]:
            raise InputError(f"{alpha} does not match {frames} at frame {seen} (its frames must have the same "
                             f"count and size)")
        seen += len(rgb)
        yield rgb, a
    if next(alpha_batches, None) is not None:
        raise InputError(f"{alpha} has more frames than {frames} ({seen})")


def refine_stream(refine: Any, frames: Path, alpha: Path, writer: VideoWriter, batch: int = 8,
                  progress: Any = None) -> int:
    """Pass every frame of ``frames`` (with its ``alpha``) through ``refine`` (a refiner loaded in-process,
    :class:`~being_core.stage.FrameFilter`) into ``writer``, batch by batch. Returns the frame count."""
    count = 0
    for rgb, a in frame_pairs(frames, alpha, batch):
        writer.write(refine.refine_frames(rgb, a))
        count += len(rgb)
        if progress is not None:
            progress.advance(len(rgb))
    return count
