"""The ``au.csv`` schema the reference trainers read (OpenFace 2.x FeatureExtraction), shared by AU extractors.

Columns: ``frame, face_id, timestamp, confidence, success``, then ``AU01_r ... AU45_r`` (intensity 0-5) and
``AU01_c ... AU45_c`` (presence 0/1), separated by ``", "`` so that readers indexing ``' AU45_r'`` work.
Exactly one row per dataset frame, ``frame`` counting from 1 like OpenFace.
"""

from __future__ import annotations

from pathlib import Path

from .protocol import write_text_atomic

AU_R = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
        "AU23", "AU25", "AU26", "AU45"]
AU_C = AU_R[:-1] + ["AU28", "AU45"]
COLUMNS = ["frame", "face_id", "timestamp", "confidence", "success", *(f"{a}_r" for a in AU_R),
           *(f"{a}_c" for a in AU_C)]


def write_au_csv(path: Path, rows: list[dict[str, float]], fps: float) -> None:
    """Write ``rows`` (one per frame, keys from :data:`COLUMNS`; missing AUs are 0) atomically."""
    lines = [", ".join(COLUMNS)]
    for i, row in enumerate(rows):
        values = {"frame": i + 1, "face_id": 0, "timestamp": round(i / fps, 3), "confidence": 0.0, "success": 0,
                  **row}
        out = []
        for col in COLUMNS:
            v = values.get(col, 0.0)
            out.append(str(int(v)) if col in ("frame", "face_id", "success") or col.endswith("_c")
                       else f"{float(v):.3f}".rstrip("0").rstrip(".") if col != "timestamp" else f"{float(v):.3f}")
        lines.append(", ".join(out))
    write_text_atomic(path, "\n".join(lines) + "\n")
