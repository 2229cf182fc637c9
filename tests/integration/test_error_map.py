"""benchmarks.error_map on constructed side-by-side videos (lossless, so every figure is exact): an error that
is the same in every frame is all constant, one that flips sign every frame none of it, and an error confined
to the lips of a real portrait is all in the mouth region."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from being_core.frames import VideoWriter
from benchmarks.error_map import GRID, error_map

H = W = 64


def _write(path, frames):
    with VideoWriter(path, 25) as video:
        video.write(np.stack(frames))
    return path


def test_a_steady_error_is_constant_and_a_flickering_one_is_not(tmp_path):
    rng = np.random.default_rng(0)
    real = [rng.integers(40, 200, (H, W, 3), dtype=np.uint8) for _ in range(6)]
    frames = []
    for t, r in enumerate(real):
        pred = r.astype(np.int16)
        pred[:8, :8] += 20  # the same error in every frame: 20 levels on 64 pixels
        pred[40:48, 40:48] += 20 if t % 2 else -20  # flips every frame: mean zero
        frames.append(np.concatenate([pred.astype(np.uint8), r], 1))
    result, _ = error_map(_write(tmp_path / "v.mkv", frames), panels=2, mouth=False)
    r = result["render"]
    assert r["frames"] == 6
    each = 64 * 3 * (20 / 255) ** 2  # squared error of one patch in one frame
    assert r["mse"] == pytest.approx(2 * each / (3 * H * W), rel=1e-5)
    assert r["constant_share"] == pytest.approx(0.5, abs=1e-4)
    cell = H // GRID
    top = {(t["rows"][0] // cell, t["cols"][0] // cell): t for t in r["tiles"][:8]}
    assert top[(0, 0)]["constant_share"] == pytest.approx(1.0) and top[(10, 10)]["constant_share"] == 0.0
    assert top[(0, 0)]["share"] == pytest.approx(0.125, abs=1e-4)  # 4 of the 8 cells each patch covers


def test_three_panels_score_the_render_and_the_refined_frame(tmp_path):
    real = np.full((H, W, 3), 100, np.uint8)
    render, refined = real + 10, real + 5
    result, _ = error_map(_write(tmp_path / "v.mkv", [np.concatenate([render, refined, real], 1)] * 3), panels=3,
                          mouth=False)
    assert result["render"]["mse"] == pytest.approx((10 / 255) ** 2, rel=1e-5)
    assert result["refined"]["mse"] == pytest.approx((5 / 255) ** 2, rel=1e-5)
    with pytest.raises(ValueError, match=r"v\.mkv is 192 pixels wide, which does not split into 5 panels"):
        error_map(tmp_path / "v.mkv", panels=5, mouth=False)


def test_an_error_on_the_lips_is_all_in_the_mouth_region(tmp_path, being_testdata):
    from being_trainer_gaussian_avatar.lipsync import MouthMeter

    from benchmarks.error_map import mouth_box

    face = np.asarray(Image.open(being_testdata / "images" / "liveportrait_d19.jpg").convert("RGB")
                      .resize((256, 256), Image.BOX))
    with MouthMeter() as meter:
        top, bottom, left, right = mouth_box(meter.points(face), 256, 256)
    pred = face.copy()
    pred[top + 4:bottom - 4, left + 4:right - 4] //= 2  # inside the region: the box stays where FaceMesh saw it
    video = _write(tmp_path / "v.mkv", [np.concatenate([pred, face], 1)] * 2)
    result, _ = error_map(video, panels=2)
    assert result["render"]["mouth_frames"] == 2
    assert result["render"]["mouth_share"] == pytest.approx(1.0)
    out = tmp_path / "maps"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.error_map", str(video), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "error_map.json").read_text())["render"]["mouth_share"] == pytest.approx(1.0)
    assert Image.open(out / "error_map.png").size == (3 * 256, 256)
