"""Audio helpers shared by audio encoders: reading ingest's wav and cutting per-video-frame windows.

numpy only (imported inside the functions); no model code.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_RATE = 16000
FEATURE_RATE = 50.0  # 20 ms hop: the rate of wav2vec2/HuBERT states and of the mel features


def read_wav(path: Path):
    """``[T] float32`` in [-1, 1] from a 16 kHz 16-bit PCM wav (what ingest writes); any channel count is
    averaged to mono. Raises ValueError naming the file otherwise."""
    import numpy as np

    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path} is not a PCM wav file: {exc}") from None
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} is sampled at {rate} Hz; the audio encoders expect {SAMPLE_RATE} Hz from ingest")
    if width != 2:
        raise ValueError(f"{path} has {8 * width}-bit samples; the audio encoders expect 16-bit PCM from ingest")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1)


def frame_windows(feats, n_frames: int, fps: float, window: int, rate: float = FEATURE_RATE, lead: int = 0):
    """Cut ``[T, D]`` features at ``rate`` Hz into ``[n_frames, window, D]``, one window per video frame.

    Video frame ``i`` is shown at ``i / fps`` seconds (its presentation time, when the audio that goes with it
    plays), i.e. at feature index ``c = round(i * rate / fps)`` (feature ``j`` is centred at ``j / rate``); its
    window is ``c - window // 2 ... c + window - window // 2 - 1``, with the first/last feature repeated beyond
    the ends. At 50 Hz and 25 fps ``window=16`` gives ``2i - 8 ... 2i + 7``, the windows of the reference trainers'
    DeepSpeech and wav2vec2 features (AD-NeRF, RAD-NeRF, ER-NeRF; they pad with zeros where we repeat), and
    ``window=2`` the pair ``2i - 1, 2i``. ``lead`` moves every window that many features later (lips move before
    the sound they shape, so a window reaching further ahead can tell more about the mouth; a live session then
    waits as much longer for each frame's last feature). Returns the windows and the frame-count mismatch (audio
    length in video frames minus ``n_frames``).
    """
    audio_frames = int(round(len(feats) / (rate / fps)))
    return _cut(feats, n_frames, fps, rate, window_offsets(window, lead)), audio_frames - n_frames


def window_offsets(window: int, lead: int = 0):
    """The feature offsets, from a frame's presentation time, of its window (:func:`frame_windows`)."""
    import numpy as np

    return np.arange(window) - window // 2 + lead


def frame_pairs(feats, n_frames: int, fps: float, rate: float = FEATURE_RATE):
    """``[n_frames, 2, D]``: the two features from frame ``i``'s presentation time on (``c, c + 1`` with ``c =
    round(i * rate / fps)``; at 50 Hz and 25 fps ``2i, 2i + 1``), the last repeated beyond the end. The layout of
    the reference trainers' HuBERT file (``aud_hu.npy``: the 50 Hz states reshaped two by two), which differs from
    a centred window of 2 (:func:`frame_windows`)."""
    import numpy as np

    return _cut(feats, n_frames, fps, rate, np.arange(2))


def frame_centre(i, fps: float, rate: float = FEATURE_RATE):
    """The feature index at which video frame(s) ``i`` are shown: ``round(i * rate / fps)``."""
    import numpy as np

    return np.round(np.asarray(i) * rate / fps).astype(int)


def _cut(feats, n_frames: int, fps: float, rate: float, offsets):
    """``feats[frame_centre(i) + offsets]`` for every frame ``i``, the first/last feature repeated beyond the ends."""
    import numpy as np

    index = np.clip(frame_centre(np.arange(n_frames), fps, rate)[:, None] + offsets[None, :], 0, len(feats) - 1)
    return np.ascontiguousarray(feats[index])


def check_mismatch(mismatch: int, limit: int, n_samples: int, n_frames: int, fps: float) -> None:
    """Fail when audio and video lengths differ by more than ``limit`` video frames."""
    if abs(mismatch) > limit:
        raise ValueError(
            f"aud.wav lasts {n_samples / SAMPLE_RATE:.2f} s but the video has {n_frames} frames at {fps:g} fps "
            f"({mismatch:+d} frames); raise max_mismatch_frames if the tracks really are this far apart"
        )


@dataclass(frozen=True)
class AudioFeatures:
    """What an audio encoder promises in its report's ``info``; a trainer reads it through ``reads_info``."""

    encoder: str
    file: str
    dim: int
    window: int
    rate: float

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> AudioFeatures:
        """Parse an audio encoder's ``info``; ValueError naming what is missing (e.g. no encoder ran)."""
        if not info:
            raise ValueError("this run has no audio features (no audio_encoder stage ran); prepare it with audio")
        try:
            return cls(str(info["encoder"]), str(info["file"]), int(info["dim"]), int(info["window"]),
                       float(info["rate"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the audio encoder's info is incomplete ({exc!r}); it must carry encoder, file, "
                             f"dim, window and rate") from None


def frame_edges(i, fps: float, rate: int = SAMPLE_RATE):
    """The first sample of video frame ``i`` (frame ``i`` spans ``frame_edges(i)`` to ``frame_edges(i + 1)``); an int
    for an int (a live session asks this for every frame), an array for an array."""
    if isinstance(i, int):
        return round(i * rate / fps)  # half to even, as numpy rounds
    import numpy as np

    return np.round(np.asarray(i) * rate / fps).astype(np.int64)


class FrameWindows:
    """:func:`frame_windows`, as a stream: features in as an encoder computes them, each video frame's window out
    as soon as its last feature is in. The windows equal the offline ones except at the end of the audio (offline
    repeats the last feature beyond it; a stream does not know where it ends). Keeps one window of features."""

    def __init__(self, window: int, fps: float, rate: float = FEATURE_RATE, lead: int = 0):
        self.window, self.fps, self.rate = window, fps, rate
        self.offsets = window_offsets(window, lead)
        self._kept: Any = None  # features from index self._first on
        self._first = 0
        self._count = 0
        self.next_frame = 0

    def centre(self, i: int) -> int:
        return int(frame_centre(i, self.fps, self.rate))

    def last_needed(self, i: int) -> int:
        """The index of the last feature frame ``i``'s window holds."""
        return self.centre(i) + int(self.offsets[-1])

    def lookahead(self, hop: int, feature_lookahead: int, rate: int = SAMPLE_RATE) -> int:
        """Samples past a frame's end that its window needs, when feature ``j`` is known once the samples up to
        ``j * hop + feature_lookahead`` are (the most over a second of frames; 0 at least)."""
        n = max(2, int(round(self.fps)))
        return max(0, max(self.last_needed(i) * hop + feature_lookahead - int(frame_edges(i + 1, self.fps, rate))
                          for i in range(n)))

    def add(self, feats):
        """Add ``[t, D]`` features; returns the ``[k, W, D]`` windows of the frames now complete (``k`` may be 0)."""
        import numpy as np

        feats = np.asarray(feats, dtype=np.float32)
        if not len(feats):  # nothing new (its width may be unknown yet)
            dim = self._kept.shape[1] if self._kept is not None else (feats.shape[1] if feats.ndim == 2 else 0)
            return np.zeros((0, self.window, dim), np.float32)
        kept = feats if self._kept is None else np.concatenate([self._kept, feats])
        self._count += len(feats)
        out = []
        while self.last_needed(self.next_frame) < self._count:
            index = np.clip(self.centre(self.next_frame) + self.offsets, 0, None) - self._first
            out.append(kept[index])
            self.next_frame += 1
        keep_from = max(0, self.centre(self.next_frame) + int(self.offsets[0]))
        self._kept = kept[max(0, keep_from - self._first):]
        self._first = max(self._first, keep_from)
        return np.stack(out) if out else np.zeros((0, self.window, kept.shape[1]), np.float32)
