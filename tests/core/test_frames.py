"""Frames across a stage boundary (being_core.frames): lossless, batched, atomic, clear about bad files."""

import numpy as np
import pytest

from being_core.errors import InputError
from being_core.frames import VideoWriter, frame_pairs, read_video
from being_core.stage import alpha_path


def _frames(n=11, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, 3)) * 255).astype(np.uint8), (rng.random((n, h, w)) * 255).astype(np.uint8)


def test_lossless_frames_and_alpha_come_back_bit_for_bit_in_batches(tmp_path):
    rgb, alpha = _frames()
    with VideoWriter(tmp_path / "f.mkv", 25) as w:
        w.write(rgb[:4])
        w.write(rgb[4])  # one frame alone
        w.write(rgb[5:])
    with VideoWriter(tmp_path / "f_alpha.mkv", 25, gray=True) as w:
        w.write(alpha)
    batches = list(read_video(tmp_path / "f.mkv", batch=4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert np.array_equal(np.concatenate(batches), rgb)
    pairs = list(frame_pairs(tmp_path / "f.mkv", tmp_path / "f_alpha.mkv", batch=5))
    assert np.array_equal(np.concatenate([a for _, a in pairs]), alpha)
    assert alpha_path("renders/x/frames.mkv") == "renders/x/frames_alpha.mkv"


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    rgb, _ = _frames()
    path = tmp_path / "f.mkv"
    path.write_bytes(b"the old file")
    with pytest.raises(RuntimeError), VideoWriter(path, 25) as w:
        w.write(rgb[:3])
        raise RuntimeError("the renderer crashed")
    assert path.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.mkv"]


def test_bad_frames_and_files_are_named(tmp_path):
    rgb, alpha = _frames()
    with pytest.raises(ValueError, match=r"f\.mkv: frame size \[12, 40\] differs from the first frame's \[24, 40\]"), \
            VideoWriter(tmp_path / "f.mkv", 25) as w:
        w.write(rgb[:2])
        w.write(rgb[:2, :12])
    with pytest.raises(ValueError, match=r"frames must be uint8 \[B, H, W, 3\], got float64"):
        VideoWriter(tmp_path / "g.mkv", 25).write(rgb.astype(float))
    with pytest.raises(ValueError, match=r"h\.avi: frames are written to \.mkv \(lossless\) or \.mp4, not \.avi"):
        VideoWriter(tmp_path / "h.avi", 25)
    with pytest.raises(InputError, match=r"missing\.mkv does not exist"):
        next(read_video(tmp_path / "missing.mkv"))
    (tmp_path / "junk.mkv").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match=r"junk\.mkv is not a video ffmpeg can read"):
        next(read_video(tmp_path / "junk.mkv"))
    with VideoWriter(tmp_path / "f.mkv", 25) as w:
        w.write(rgb)
    with VideoWriter(tmp_path / "short_alpha.mkv", 25, gray=True) as w:
        w.write(alpha[:5])
    with pytest.raises(InputError, match=r"short_alpha\.mkv does not match .*f\.mkv at frame 4 \(its frames must "
                                         r"have the same count and size\)"):
        list(frame_pairs(tmp_path / "f.mkv", tmp_path / "short_alpha.mkv", batch=4))
