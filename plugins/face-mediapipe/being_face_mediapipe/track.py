"""Per-frame FaceMesh landmarks with subject selection and gap filling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_MESH = 478


@dataclass
class Tracks:
    landmarks: np.ndarray  # [N, 478, 3] float32: x, y in pixels, z relative depth in pixels (smaller = nearer)
    found: np.ndarray  # [N] bool: a face was detected (False = interpolated)
    multi_face_frames: list[int]


def _bbox_centre_size(points: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    return (lo + hi) / 2, float(np.prod(hi - lo))


def detect(frames, width: int, height: int, max_faces: int, min_confidence: float, progress) -> Tracks:
    """Run FaceMesh (478 refined landmarks) in tracking mode over a sequence of RGB ``[H, W, 3] uint8`` frames.

    With several faces, follows the subject: the largest face first, then the one nearest the previous
    subject position, so a passer-by never takes over.
    """
    from concurrent.futures import ThreadPoolExecutor

    import mediapipe as mp

    n = len(frames)
    out = np.full((n, N_MESH, 3), np.nan, dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    multi: list[int] = []
    scale = np.array([width, height, width], dtype=np.float32)
    last_centre = None
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max_faces, refine_landmarks=True,
                                         min_detection_confidence=min_confidence,
                                         min_tracking_confidence=min_confidence) as mesh, \
            ThreadPoolExecutor(max_workers=1) as reader:  # decode frame i+1 while FaceMesh runs on frame i
        upcoming = reader.submit(frames.__getitem__, 0)
        for i in progress.track(range(n), "face: landmarks", unit="frame"):
            image = upcoming.result()
            if i + 1 < n:
                upcoming = reader.submit(frames.__getitem__, i + 1)
            result = mesh.process(image)
            faces = result.multi_face_landmarks or []
            if not faces:
                continue
            pts = [np.array([(p.x, p.y, p.z) for p in f.landmark], dtype=np.float32) * scale for f in faces]
            if len(pts) > 1:
                multi.append(i)
                stats = [_bbox_centre_size(p) for p in pts]
                if last_centre is None:
                    pick = int(np.argmax([s for _, s in stats]))
                else:
                    pick = int(np.argmin([np.linalg.norm(c - last_centre) for c, _ in stats]))
            else:
                pick = 0
            out[i] = pts[pick]
            found[i] = True
            last_centre = _bbox_centre_size(pts[pick])[0]
    return Tracks(out, found, multi)


def fill_gaps(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linearly interpolate missing frames from their neighbours (ends hold the nearest found frame)."""
    filled = landmarks.copy()
    idx = np.flatnonzero(found)
    missing = np.flatnonzero(~found)
    if len(missing) == 0:
        return filled
    flat = landmarks[idx].reshape(len(idx), -1)
    interp = np.stack([np.interp(missing, idx, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    filled[missing] = interp.reshape(len(missing), N_MESH, 3).astype(np.float32)
    return filled


def missing_runs(found: np.ndarray) -> list[str]:
    """Frame ranges without a face, as text: ``['3', '10-14']``."""
    runs, start = [], None
    for i, ok in enumerate([*found, True]):
        if not ok and start is None:
            start = i
        elif ok and start is not None:
            runs.append(str(start) if i - 1 == start else f"{start}-{i - 1}")
            start = None
    return runs
