"""Which features each video frame gets: the window around its presentation time, the reference's pairs."""

from __future__ import annotations

import numpy as np

from being_core.audio import FrameWindows, frame_pairs, frame_windows


def _index(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None]  # feature j holds the value j


def test_a_frame_s_window_is_centred_on_the_time_it_is_shown():
    windows, mismatch = frame_windows(_index(100), 50, 25.0, 16)
    assert mismatch == 0
    # frame i is shown at i / 25 s = feature 2i: 2i - 8 ... 2i + 7, as the reference trainers cut their windows
    np.testing.assert_array_equal(windows[10, :, 0], np.arange(12, 28))
    np.testing.assert_array_equal(windows[0, :, 0], [0] * 9 + list(range(1, 8)))  # the first feature repeated
    np.testing.assert_array_equal(windows[49, :, 0], list(range(90, 100)) + [99] * 6)
    pair, _ = frame_windows(_index(100), 50, 25.0, 2)
    np.testing.assert_array_equal(pair[10, :, 0], [19, 20])
    # 30 fps: frame 3 is shown at 0.1 s = feature 5
    np.testing.assert_array_equal(frame_windows(_index(100), 30, 30.0, 4)[0][3, :, 0], [3, 4, 5, 6])


def test_the_reference_pairs_start_at_the_frame():
    pairs = frame_pairs(_index(99), 50, 25.0)
    np.testing.assert_array_equal(pairs[10, :, 0], [20, 21])
    np.testing.assert_array_equal(pairs[49, :, 0], [98, 98])  # one feature short at the end: repeated
    np.testing.assert_array_equal(frame_pairs(_index(100), 50, 25.0)[:, :, 0], np.arange(100).reshape(50, 2))


def test_a_stream_gives_the_offline_windows_as_soon_as_their_last_feature_is_in():
    feats = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    offline, _ = frame_windows(feats, 50, 25.0, 16)
    stream = FrameWindows(16, 25.0)
    got = [stream.add(feats[j:j + 7]) for j in range(0, 100, 7)]
    streamed = np.concatenate(got)
    assert stream.last_needed(0) == 7
    # the last frames need features past the end, which a stream waits for
    assert len(streamed) == 47  # frame 46 needs feature 99, the last
    np.testing.assert_array_equal(streamed, offline[:47])


def test_a_lead_moves_every_window_later_offline_and_in_a_stream():
    feats = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    centred, _ = frame_windows(_index(100), 50, 25.0, 16)
    ahead, _ = frame_windows(_index(100), 50, 25.0, 16, lead=4)
    np.testing.assert_array_equal(ahead[10, :, 0], np.arange(16, 32))  # 2i - 4 ... 2i + 11
    np.testing.assert_array_equal(ahead[10:40], centred[12:42])  # 4 features = 2 frames later, inside the clip
    np.testing.assert_array_equal(ahead[49, :, 0], list(range(94, 100)) + [99] * 10)
    behind, _ = frame_windows(_index(100), 50, 25.0, 16, lead=-2)
    np.testing.assert_array_equal(behind[10, :, 0], np.arange(10, 26))
    offline, _ = frame_windows(feats, 50, 25.0, 16, lead=4)
    stream, centred_stream = FrameWindows(16, 25.0, lead=4), FrameWindows(16, 25.0)
    assert stream.last_needed(0) == 11 and centred_stream.last_needed(0) == 7
    # a stream waits 4 more features (80 ms) for each frame: 4 x 320 more samples at 16 kHz with a hop of 320
    assert stream.lookahead(320, 256) - centred_stream.lookahead(320, 256) == 4 * 320
    streamed = np.concatenate([stream.add(feats[j:j + 5]) for j in range(0, 100, 5)])
    assert len(streamed) == 45  # frame 44 needs feature 99, the last
    np.testing.assert_array_equal(streamed, offline[:45])
