"""Pose-free geometric measures of the face mesh and their per-subject calibration."""

from __future__ import annotations

import numpy as np

from being_core.stage import FACEMESH_RIGID_POINTS

EYE_OUTER = (33, 263)


def align(lm: np.ndarray, found: np.ndarray, rigid: tuple[int, ...] | None = FACEMESH_RIGID_POINTS) -> np.ndarray:
    """``[N, V, 3]`` landmarks (pixels, y down) -> the same shapes similarity-aligned to their mean, y up,
    in units of the outer-eye-corner distance. The similarity is fitted on the ``rigid`` points (None: on all):
    fitted on every point, a dropping jaw or raised brows would tilt and shrink the whole face, and the measures
    of the other AUs would move with them."""
    pts = lm.astype(np.float64) * np.array([1.0, -1.0, -1.0])
    on = np.arange(pts.shape[1]) if rigid is None else np.asarray(rigid)
    ref = pts[np.flatnonzero(found)[0]]
    for _ in range(2):
        mu_r = ref[on].mean(0)
        a = ref[on] - mu_r
        out = np.empty_like(pts)
        for i, p in enumerate(pts):
            mu = p[on].mean(0)
            b = p[on] - mu
            u, s, vt = np.linalg.svd(b.T @ a)
            d = np.sign(np.linalg.det(u @ vt))
            rot = u @ np.diag([1, 1, d]) @ vt
            scale = (s * [1, 1, d]).sum() / (b ** 2).sum()
            out[i] = scale * (p - mu) @ rot + mu_r
        ref = out[found].mean(0)
    unit = np.linalg.norm(ref[EYE_OUTER[0]] - ref[EYE_OUTER[1]])
    return (out - ref.mean(0)) / unit


def raw_measures(s: np.ndarray) -> dict[str, np.ndarray]:
    """Signed measures per frame from aligned shapes ``[N, V, 3]`` (larger = more of the AU)."""
    y = s[..., 1]

    def dist(a, b):
        return np.linalg.norm(s[:, a, :2] - s[:, b, :2], axis=-1)

    eye_open = (dist(159, 145) / dist(33, 133) + dist(386, 374) / dist(362, 263)) / 2
    inner_brow = ((y[:, 107] - y[:, 133]) + (y[:, 336] - y[:, 362])) / 2
    outer_brow = ((y[:, 70] - y[:, 33]) + (y[:, 300] - y[:, 263])) / 2
    brow_gap = dist(107, 336)
    cheek = ((y[:, 117] - y[:, 145]) + (y[:, 346] - y[:, 374])) / 2
    centre = (y[:, 13] + y[:, 14]) / 2
    corners = (y[:, 61] + y[:, 291]) / 2 - centre
    width = dist(61, 291)
    return {
        "AU01": inner_brow,
        "AU02": outer_brow,
        "AU04": -(inner_brow - np.median(inner_brow)) / (np.std(inner_brow) + 1e-9)
        - (brow_gap - np.median(brow_gap)) / (np.std(brow_gap) + 1e-9),
        "AU05": eye_open,
        "AU06": cheek,
        "AU07": -eye_open,
        "AU12": (width - np.median(width)) / (np.std(width) + 1e-9) + (corners - np.median(corners)) / (np.std(corners) + 1e-9),
        "AU15": -corners,
        "AU20": (width - np.median(width)) / (np.std(width) + 1e-9) - (corners - np.median(corners)) / (np.std(corners) + 1e-9),
        "AU25": dist(13, 14),
        "AU26": dist(152, 1),
        "AU45": -eye_open,
    }


#: AUs measured as an opening whose resting value is not "off": their 5th percentile is the zero point.
OPENINGS = {"AU25", "AU26"}
#: AUs that change within a frame or two (not median-filtered).
FAST = {"AU25", "AU45"}


def calibrate(m: np.ndarray, found: np.ndarray, top: float, zero_percentile: float = 50) -> np.ndarray:
    """The ``zero_percentile`` (neutral: the median) -> 0 and the 99th percentile -> ``top``, clipped to [0, 5]."""
    ref = m[found]
    lo, hi = np.percentile(ref, zero_percentile), np.percentile(ref, 99)
    return np.clip((m - lo) / max(hi - lo, 1e-9) * top, 0, 5)


def intensities(lm: np.ndarray, found: np.ndarray, top: float = 3.0, smooth: int = 1,
                rigid: tuple[int, ...] | None = FACEMESH_RIGID_POINTS) -> dict[str, np.ndarray]:
    """``{AU: [N] intensity}`` for the AUs this extractor estimates; 0 on frames without a face.
    A median filter of half-width ``smooth`` steadies every AU but the blink, which lasts only a few frames;
    ``rigid``: the points the frames are aligned on (:func:`align`)."""
    if not found.any():
        raise ValueError("no frame of face/landmarks.npy has a face")
    shapes = align(lm, found, rigid)
    out = {}
    for au, m in raw_measures(shapes).items():
        v = calibrate(m, found, top, 5 if au in OPENINGS else 50)
        if smooth and au not in FAST:
            pad = np.pad(v, smooth, mode="edge")
            v = np.median(np.lib.stride_tricks.sliding_window_view(pad, 2 * smooth + 1), axis=1)
        out[au] = np.where(found, v, 0.0)
    out["AU07"] = np.where(out["AU45"] >= top / 2, 0.0, out["AU07"])  # a blink is not a lid tightening
    return out
