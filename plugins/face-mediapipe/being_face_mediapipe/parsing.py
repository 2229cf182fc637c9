"""Portrait parsing and the composites the trainers read, from selfie segmentation and the face mesh.

Colours are the reference's, in cv2 (BGR) channel order as written to ``parsing/<i>.png``:
background (255, 255, 255), head incl. hair (255, 0, 0), neck (0, 255, 0), torso (0, 0, 255); the
TalkingGaussian variant also paints the inner mouth (100, 100, 100) and hair (0, 0, 0).

How a person pixel (selfie segmentation) is labelled, per frame, from the fitted landmarks:
* head: inside the face oval, or above the jaw curve within the face's width widened by ``hair_margin``;
* neck: below the jaw, within ``neck_width`` of the face width around the chin, down to ``neck_length``
  face heights below the chin;
* torso: every other person pixel.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = (255, 255, 255)
HEAD = (255, 0, 0)
NECK = (0, 255, 0)
TORSO = (0, 0, 255)
MOUTH = (100, 100, 100)
HAIR = (0, 0, 0)
INNER_MOUTH = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]


def face_oval_loop() -> list[int]:
    """FaceMesh's face-oval edges as one ordered loop of vertex ids."""
    import mediapipe as mp

    edges = list(mp.solutions.face_mesh.FACEMESH_FACE_OVAL)
    nxt: dict[int, list[int]] = {}
    for a, b in edges:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    loop, prev, cur = [edges[0][0]], None, edges[0][0]
    while True:
        step = next(v for v in nxt[cur] if v != prev)
        if step == loop[0]:
            return loop
        loop.append(step)
        prev, cur = cur, step


def label(person: np.ndarray, lm: np.ndarray, oval: list[int], hair_margin: float = 0.25,
          neck_width: float = 0.6, neck_length: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a boolean ``person [H, W]`` mask into head, neck and torso masks using landmarks ``[478, 2+]``."""
    import cv2

    h, w = person.shape
    face = np.zeros((h, w), np.uint8)
    pts = np.round(lm[oval, :2]).astype(np.int32)
    cv2.fillPoly(face, [pts], 1)
    face = face.astype(bool)
    x0, x1 = pts[:, 0].min(), pts[:, 0].max()
    y_top, y_chin = pts[:, 1].min(), pts[:, 1].max()
    fw, fh = max(x1 - x0, 1), max(y_chin - y_top, 1)
    # The jaw curve: for each column, the lowest face-oval row (interpolated along the lower half of the oval).
    lower = pts[pts[:, 1] > (y_top + y_chin) / 2]
    order = np.argsort(lower[:, 0])
    cols = np.arange(w)
    jaw = np.interp(cols, lower[order, 0], lower[order, 1], left=lower[order[0], 1], right=lower[order[-1], 1])
    rows = np.arange(h)[:, None]
    wide = (cols >= x0 - hair_margin * fw) & (cols <= x1 + hair_margin * fw)
    head = face | (person & (rows < jaw[None, :]) & wide[None, :])
    cx = (x0 + x1) / 2
    band = np.abs(cols - cx) <= neck_width * fw / 2
    neck = person & ~head & band[None, :] & (rows >= jaw[None, :]) & (rows <= y_chin + neck_length * fh)
    torso = person & ~head & ~neck
    return head, neck, torso


def paint(head, neck, torso, lm=None, oval=None, variant: str = "ernerf") -> np.ndarray:
    """``[H, W, 3] uint8`` parsing image in cv2 channel order."""
    import cv2

    out = np.empty((*head.shape, 3), np.uint8)
    out[:] = BACKGROUND
    out[torso] = TORSO
    out[neck] = NECK
    out[head] = HEAD
    if variant == "talkinggaussian" and lm is not None:
        face = np.zeros(head.shape, np.uint8)
        cv2.fillPoly(face, [np.round(lm[oval, :2]).astype(np.int32)], 1)
        out[head & ~face.astype(bool)] = HAIR
        mouth = np.zeros(head.shape, np.uint8)
        cv2.fillPoly(mouth, [np.round(lm[INNER_MOUTH, :2]).astype(np.int32)], 1)
        out[mouth.astype(bool)] = MOUTH
    return out


def masks_from_parsing(parsing_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Read masks back from a parsing image the way the reference readers do (exact colours, cv2 order)."""
    def eq(colour):
        return (parsing_bgr == np.array(colour, np.uint8)).all(-1)

    return {"head": eq(HEAD) | eq(HAIR) | eq(MOUTH), "neck": eq(NECK), "torso": eq(TORSO), "background": eq(BACKGROUND)}


class BackgroundEstimate:
    """Per pixel, the colour from the frame where it lies farthest from the person (streamed over frames);
    pixels never seen as background are inpainted from their surroundings."""

    def __init__(self, height: int, width: int):
        self.best = np.full((height, width), -1.0, np.float32)
        self.colour = np.zeros((height, width, 3), np.uint8)

    def add(self, frame_bgr: np.ndarray, person: np.ndarray) -> None:
        import cv2

        dist = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5)
        dist[person] = -1
        better = dist > self.best
        self.best[better] = dist[better]
        self.colour[better] = frame_bgr[better]

    def result(self) -> np.ndarray:
        import cv2

        unseen = (self.best <= 0).astype(np.uint8)
        if unseen.any():
            return cv2.inpaint(self.colour, unseen, 5, cv2.INPAINT_TELEA)
        return self.colour.copy()


def torso_rgba(frame_bgr: np.ndarray, head: np.ndarray, neck: np.ndarray, torso: np.ndarray, lm: np.ndarray
               ) -> np.ndarray:
    """``[H, W, 4]`` BGRA: neck and torso pixels, plus the neck extended up under the chin (to the mouth line)
    so that a moving head never uncovers a hole; alpha 0 elsewhere."""
    out = np.zeros((*head.shape, 4), np.uint8)
    body = neck | torso
    out[body, :3] = frame_bgr[body]
    out[body, 3] = 255
    if neck.any():
        mouth_y = int(lm[[13, 14], 1].mean())
        cols = np.flatnonzero(neck.any(0))
        tops = neck[:, cols].argmax(0)
        for c, top in zip(cols, tops):
            if top > mouth_y:
                out[mouth_y:top, c, :3] = frame_bgr[top, c]
                out[mouth_y:top, c, 3] = 255
    return out
