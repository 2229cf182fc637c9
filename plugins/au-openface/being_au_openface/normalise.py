"""Reading OpenFace CSVs of any 2.x vintage and running FeatureExtraction."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

from being_core.au import AU_C, AU_R


def normalise(path: Path, n_frames: int) -> tuple[list[dict], dict]:
    """Rows for dataset frames ``0 .. n_frames-1`` from an OpenFace CSV, and counts of what was fixed."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, skipinitialspace=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty") from None
        missing = [c for c in ("frame", "confidence", "success") if c not in header]
        if missing:
            raise ValueError(f"{path} is not an OpenFace CSV: no {', '.join(missing)} column")
        index = {h: k for k, h in enumerate(header)}
        best: dict[int, dict] = {}
        for line_no, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(f"{path} line {line_no}: {len(values)} values for {len(header)} columns")
            try:
                row = {h: float(values[k]) for h, k in index.items()
                       if h in ("frame", "face_id", "confidence", "success") or h.startswith("AU")}
            except ValueError as exc:
                raise ValueError(f"{path} line {line_no}: {exc}") from None
            frame = int(row["frame"]) - 1  # OpenFace counts frames from 1
            if frame >= n_frames:
                raise ValueError(f"{path} has a row for frame {frame + 1}, but the dataset has only {n_frames} frames")
            if frame >= 0 and (frame not in best or row["confidence"] > best[frame]["confidence"]):
                best[frame] = row
    rows, absent = [], 0
    for i in range(n_frames):
        src = best.get(i)
        if src is None:
            absent += 1
            rows.append({"success": 0, "confidence": 0.0})
            continue
        row = {"confidence": src["confidence"], "success": int(src["success"])}
        for au in AU_R:
            row[f"{au}_r"] = src.get(f"{au}_r", 0.0)
        for au in AU_C:
            row[f"{au}_c"] = int(src.get(f"{au}_c", 0.0))
        rows.append(row)
    lacking = [f"{au}_r" for au in AU_R if f"{au}_r" not in index]
    return rows, {"rows_in_csv": len(best), "frames_without_row": absent,
                  "frames_failed": sum(1 for r in rows if not r["success"]), "au_columns_missing": lacking,
                  "had_face_id": "face_id" in index}


def run_feature_extraction(binary: Path, frames: Path, n_frames: int, scratch: Path, timeout_s: float,
                           progress) -> Path:
    """Run OpenFace on the frames (linked as zero-padded names: OpenFace sorts file names as text, which would
    put 10.jpg before 2.jpg) and return the CSV it wrote."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ValueError(f"binary: {binary} is not an executable file (OpenFace's FeatureExtraction)")
    work = scratch / "openface"
    if work.exists():
        shutil.rmtree(work)
    (work / "frames").mkdir(parents=True)
    for i in range(n_frames):
        os.symlink((frames / f"{i}.jpg").resolve(), work / "frames" / f"{i:06d}.jpg")
    with progress.task("au: OpenFace FeatureExtraction", total=None, unit="run") as task:
        try:
            proc = subprocess.run([str(binary), "-fdir", str(work / "frames"), "-out_dir", str(work / "out"), "-aus",
                                   "-of", "au"], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ValueError(f"OpenFace ran longer than timeout_s={timeout_s:g} s") from None
        task.advance()
    out = work / "out" / "au.csv"
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ValueError(f"OpenFace exited with code {proc.returncode} and wrote no au.csv: {tail}")
    return out
