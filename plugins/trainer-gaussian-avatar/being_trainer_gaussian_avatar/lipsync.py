"""Lip sync, measured: how far a mouth opens in each frame, compared with the real frames or with the speech.

The opening of a frame is FaceMesh's inner-lip gap (points 13 and 14) divided by the mouth's width (corners 61
and 291), so it does not depend on the frame size or the distance to the camera. A mouth is *closed* below
:data:`CLOSED`. Against real frames: the correlation of the openings, the mean bias (in % of the real mean),
the mouth landmark distance, the lag that best aligns the two (the audio-video offset; 0 when in sync) and the
share of the frames with real lips closed where the rendered ones close too.
Against speech: the share of silent frames (an energy voice-activity detector, no model) with a closed mouth,
and the correlation of the opening with the speech envelope.

numpy does the arithmetic; mediapipe (FaceMesh) finds the landmarks, imported only when frames are measured.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import numpy as np

#: FaceMesh points of the lips (outer and inner contours)
MOUTH = [61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91, 78, 81, 13, 311, 308, 402, 14, 178]
UPPER, LOWER, LEFT, RIGHT = (MOUTH.index(k) for k in (13, 14, 61, 291))
#: an opening (inner-lip gap / mouth width) below this is a closed mouth; speaking mouths sit around 0.07-0.12
CLOSED = 0.05
#: every lip-sync metric, in the order the trainer's metrics and the benchmark's tables show them
KEYS = ("mouth_corr", "mouth_bias_pct", "lmd", "av_offset", "av_offset_frames", "shut_frames", "shut_closed",
        "silent_frames", "silent_closed",
        "silent_closed_real", "envelope_corr", "envelope_corr_real")
#: the audio-video offset is searched within this many frames either way
MAX_LAG = 5
#: a clip whose mouth follows its own speech more than this many frames early or late (real speakers' lips move
#: about half a frame before the sound) is probably out of sync; below :data:`SYNC_MIN_R` the lag is not trusted
SYNC_WARN_FRAMES, SYNC_MIN_R = 1.5, 0.2
#: speech quieter than the clip's loud level (95th percentile of frame RMS) by this many dB is silence
SILENCE_DB = 25.0
#: a pause is silence that lasts this many seconds at least; its first and last frames are left out
MIN_PAUSE_S, PAUSE_EDGE = 0.3, 2


class MouthMeter:
    """FaceMesh over frames one by one (each on its own, no tracking between frames), as a context manager:
    ``meter.points(frame)`` gives the ``[20, 2]`` pixel positions of the :data:`MOUTH` points in a uint8 RGB
    frame, NaN when no face is found. ImportError on entry when mediapipe is not installed."""

    def __enter__(self) -> MouthMeter:
        import mediapipe as mp

        from being_core.native import native_stderr_to

        with contextlib.ExitStack() as stack:
            stack.enter_context(native_stderr_to(logging.getLogger("being.stage")))
            self._mesh = stack.enter_context(mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def points(self, frame: np.ndarray) -> np.ndarray:
        res = self._mesh.process(np.ascontiguousarray(frame))
        if not res.multi_face_landmarks:
            return np.full((len(MOUTH), 2), np.nan)
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(lm[k].x * frame.shape[1], lm[k].y * frame.shape[0]) for k in MOUTH])


def mouth_points(frames: Iterable[np.ndarray]) -> np.ndarray:
    """``[T, 20, 2]``: :meth:`MouthMeter.points` of every frame."""
    with MouthMeter() as meter:
        return np.array([meter.points(f) for f in frames]).reshape(-1, len(MOUTH), 2)


def opening(points: np.ndarray) -> np.ndarray:
    """``[T]`` inner-lip gap over mouth width of :func:`mouth_points` (NaN where there was no face)."""
    gap = np.linalg.norm(points[:, UPPER] - points[:, LOWER], axis=-1)
    width = np.linalg.norm(points[:, LEFT] - points[:, RIGHT], axis=-1)
    return gap / np.where(width > 0, width, np.nan)


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r over the frames where both are known; 0 when either does not vary (a mouth that never moves
    follows nothing), None with fewer than 3 such frames."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def lag_scores(moved: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> dict[int, float]:
    """Pearson's r of ``moved[t + k]`` with ``reference[t]`` for each lag ``k`` within ``±max_lag`` frames."""
    n = min(len(moved), len(reference))
    scores = {}
    for k in range(-max_lag, max_lag + 1):
        lo, hi = max(0, -k), min(n, n - k)
        if hi - lo >= 3:
            r = correlation(moved[lo + k:hi + k], reference[lo:hi])
            if r is not None:
                scores[k] = r
    return scores


def best_lag(moved: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> int | None:
    """The lag ``k`` (frames, within ``±max_lag``) that best aligns ``moved[t + k]`` with ``reference[t]``: how
    many frames later ``moved`` does what ``reference`` does. Ties go to the smallest ``|k|``; None when
    nothing correlates."""
    return _best(lag_scores(moved, reference, max_lag))


def _best(scores: dict[int, float]) -> int | None:
    if not scores or max(scores.values()) <= 0:
        return None
    top = max(scores.values())
    return min((k for k, r in scores.items() if r >= top - 1e-9), key=abs)


def fine_lag(moved: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> float | None:
    """:func:`best_lag` to a fraction of a frame: the peak of the parabola through the correlations at the best
    lag and its two neighbours (a mouth half a frame late scores about 0.5, where the whole-frame lag is 0 or 1
    by a hair). The best lag itself where a neighbour is missing; None when nothing correlates."""
    return _fine(lag_scores(moved, reference, max_lag))


def _fine(scores: dict[int, float]) -> float | None:
    k = _best(scores)
    if k is None:
        return None
    if k - 1 not in scores or k + 1 not in scores:
        return float(k)
    left, mid, right = scores[k - 1], scores[k], scores[k + 1]
    curve = left - 2 * mid + right
    return float(k) if curve >= 0 else round(k + float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5)), 2)


def against_real(rendered: np.ndarray, real: np.ndarray) -> dict[str, float | int | None]:
    """Mouth metrics of rendered frames against the real ones, from :func:`mouth_points` of both:
    ``mouth_corr`` (openings' r), ``mouth_bias_pct`` (mean opening, rendered minus real, in % of the real
    mean), ``lmd`` (mean mouth landmark distance in pixels), ``av_offset`` (:func:`best_lag`, whole frames) and
    ``av_offset_frames`` (:func:`fine_lag`, to a fraction of a frame), ``shut_frames`` (frames whose real mouth is
    :data:`CLOSED`: lips pressed for "p", "b", "m", or shut in a pause) and ``shut_closed`` (the share of those
    whose rendered mouth is closed too; None without such frames)."""
    o_r, o_t = opening(rendered), opening(real)
    ok = np.isfinite(o_r) & np.isfinite(o_t)
    r = correlation(o_r, o_t)
    mean_real = float(o_t[ok].mean()) if ok.any() else 0.0
    dist = np.linalg.norm(rendered - real, axis=-1).mean(-1)
    return {"mouth_corr": None if r is None else round(r, 3),
            "mouth_bias_pct": round(100 * (float(o_r[ok].mean()) - mean_real) / mean_real, 1) if mean_real > 0 else None,
            "lmd": round(float(dist[ok].mean()), 3) if ok.any() else None,
            "av_offset": best_lag(o_r, o_t), "av_offset_frames": fine_lag(o_r, o_t), **closures(o_r, o_t)}


def closures(o_r: np.ndarray, o_t: np.ndarray) -> dict[str, float | int | None]:
    """``shut_frames``: frames whose real opening ``o_t`` is :data:`CLOSED`; ``shut_closed``: the share of them
    whose rendered (predicted) opening ``o_r`` is closed too (None without such frames; NaN frames left out)."""
    ok = np.isfinite(o_r) & np.isfinite(o_t)
    shut = ok & (np.where(ok, o_t, np.inf) < CLOSED)
    return {"shut_frames": int(shut.sum()),
            "shut_closed": round(float(np.mean(o_r[shut] < CLOSED)), 3) if shut.any() else None}


def loudness(samples: np.ndarray, rate: int, n_frames: int, fps: float) -> np.ndarray:
    """``[n_frames]`` RMS level in dB of the audio under each video frame (frame ``i`` spans ``i / fps`` to
    ``(i + 1) / fps`` seconds; frames past the end of the audio are silent)."""
    edges = np.round(np.arange(n_frames + 1) * rate / fps).astype(np.int64)
    level = np.full(n_frames, -120.0)
    for i in range(n_frames):
        piece = samples[edges[i]:edges[i + 1]]
        if len(piece):
            level[i] = 10 * np.log10(float(np.mean(piece.astype(np.float64) ** 2)) + 1e-12)
    return level


def pauses(level: np.ndarray, fps: float, edge: int = PAUSE_EDGE) -> np.ndarray:
    """``[T]`` bool: frames inside pauses of the speech whose :func:`loudness` is ``level``: at least
    :data:`SILENCE_DB` below the loud level for :data:`MIN_PAUSE_S` or more, less ``edge`` frames at each end
    (where the mouth is still closing or already opening)."""
    quiet = level < np.percentile(level, 95) - SILENCE_DB
    out = np.zeros_like(quiet)
    start = None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if i - start >= MIN_PAUSE_S * fps:
                out[start + edge:i - edge] = True
            start = None
    return out


def against_speech(points: np.ndarray, samples: np.ndarray, rate: int, fps: float,
                   quiet: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Mouth metrics of frames against the speech they say: ``silent_frames`` (frames in pauses, see
    :func:`pauses`; ``quiet`` gives them when they were found over a longer stretch of the same speech),
    ``silent_closed`` (the share of those with a closed mouth; None without pauses) and ``envelope_corr`` (r of
    the opening and the loudness, frame by frame)."""
    o = opening(points)
    level = loudness(samples, rate, len(o), fps)
    silent = (pauses(level, fps) if quiet is None else quiet) & np.isfinite(o)
    r = correlation(o, level)
    return {"silent_frames": int(silent.sum()),
            "silent_closed": round(float((o[silent] < CLOSED).mean()), 3) if silent.any() else None,
            "envelope_corr": None if r is None else round(r, 3)}


def clip_sync(points: np.ndarray, samples: np.ndarray, rate: int, fps: float) -> tuple[float | None, str | None]:
    """How a real clip's mouth (:func:`mouth_points` of every frame) follows its own speech (over the frames it
    covers, its silent stretches counted as 60 dB under its loud level at most): the lag in frames
    (:func:`fine_lag` of the opening against the loudness; negative: the lips move first), and a warning when it
    is more than :data:`SYNC_WARN_FRAMES` either way with a correlation of :data:`SYNC_MIN_R` or more, naming the
    ``ingest.audio_shift_ms`` that would bring it to 0. ``(None, None)`` when nothing correlates."""
    o = opening(points)[:int(len(samples) * fps / rate)]  # the frames the speech covers
    if len(o) < 3:
        return None, None
    level = loudness(samples, rate, len(o), fps)
    level = np.maximum(level, np.percentile(level, 95) - 60)  # digital silence is no quieter than a quiet room
    scores = lag_scores(o, level)
    lag = _fine(scores)
    if lag is None:
        return None, None
    peak = max(scores.values())  # the correlation at the best whole-frame lag
    if abs(lag) <= SYNC_WARN_FRAMES or peak < SYNC_MIN_R:
        return lag, None
    shift = int(round(lag * 1000 / fps, -1))
    return lag, (f"the clip's mouth follows its own speech best {abs(lag):.1f} frames {'before' if lag < 0 else 'after'} "
                 f"it (r = {peak:.2f}; real speakers' lips lead by about half a frame): its sound looks out of sync with "
                 f"its picture, and the avatar learns the offset. Check the clip, and if so prepare it again with its "
                 f"sound moved by {shift:+d} ms (--set ingest.audio_shift_ms=..., added to any shift already set)")
