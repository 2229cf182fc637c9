"""The mouth metrics (being_trainer_gaussian_avatar.lipsync) on constructed cases and on a real clip."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
from being_trainer_gaussian_avatar import lipsync

from being_core.audio import SAMPLE_RATE


def mouths(openings, width=40.0) -> np.ndarray:
    """``[T, 20, 2]`` mouth points whose inner-lip gap is ``opening x width`` (corners ``width`` apart)."""
    o = np.asarray(openings, dtype=float)
    pts = np.zeros((len(o), len(lipsync.MOUTH), 2)) + [100.0, 200.0]
    pts[:, lipsync.LEFT, 0] -= width / 2
    pts[:, lipsync.RIGHT, 0] += width / 2
    pts[:, lipsync.UPPER, 1] -= o * width / 2
    pts[:, lipsync.LOWER, 1] += o * width / 2
    return pts


def speech(rng, n_frames, fps=25.0):
    """Opening of a talking mouth: smooth, between shut and wide."""
    t = np.arange(n_frames) / fps
    return np.clip(0.08 + 0.06 * np.sin(2 * np.pi * 3.1 * t) + 0.02 * rng.standard_normal(n_frames), 0, None)


def test_the_opening_is_the_inner_lip_gap_over_the_mouth_width():
    np.testing.assert_allclose(lipsync.opening(mouths([0.0, 0.1, 0.25], width=30)), [0.0, 0.1, 0.25])
    nan = mouths([0.1])
    nan[0] = np.nan
    assert np.isnan(lipsync.opening(nan)).all()


def test_a_mouth_that_never_moves_follows_nothing():
    real = speech(np.random.default_rng(0), 100)
    still = np.full(100, 0.08)
    m = lipsync.against_real(mouths(still), mouths(real))
    assert m["mouth_corr"] == 0.0
    assert m["av_offset"] is None
    assert m["mouth_bias_pct"] == pytest.approx(100 * (0.08 - real.mean()) / real.mean(), abs=0.1)


def test_a_shifted_video_scores_its_shift():
    real = speech(np.random.default_rng(1), 150)
    for shift in (-3, 0, 2, 5):
        late = np.roll(real, shift)  # the rendered mouth does now what the real one did `shift` frames ago
        m = lipsync.against_real(mouths(late), mouths(real))
        assert m["av_offset"] == shift
        assert (m["mouth_corr"] == 1.0) == (shift == 0)
    exact = lipsync.against_real(mouths(real), mouths(real))
    assert exact == {"mouth_corr": 1.0, "mouth_bias_pct": 0.0, "lmd": 0.0, "av_offset": 0, "av_offset_frames": 0.0,
                     "shut_frames": int((real < lipsync.CLOSED).sum()), "shut_closed": 1.0}


def test_a_video_half_a_frame_late_scores_half_a_frame():
    """Whole frames cannot tell a mouth half a frame late from one in time or a frame late: the fine lag can."""
    rng = np.random.default_rng(3)
    periods, phases = rng.uniform(4, 20, 6), rng.uniform(0, 2 * np.pi, 6)

    def mouth_at(t):  # a talking mouth's opening as a smooth function of time (frames), not periodic
        return 0.08 + 0.02 * np.sin(2 * np.pi * t[:, None] / periods + phases).sum(-1)

    t = np.arange(200.0)
    real = mouth_at(t)
    for shift in (-0.5, 0.25, 0.5, 2.5):
        m = lipsync.against_real(mouths(mouth_at(t - shift)), mouths(real))
        assert m["av_offset_frames"] == pytest.approx(shift, abs=0.1), (shift, m)
        assert m["av_offset"] in (int(np.floor(shift)), int(np.ceil(shift)))


def test_lips_that_never_close_score_no_closure():
    """``shut_closed``: of the frames whose real mouth is shut ("p", "b", "m", pauses), the share the render shuts."""
    real = np.array([0.0, 0.02, 0.1, 0.2, 0.04, 0.15, 0.1, 0.01])  # shut in frames 0, 1, 4 and 7
    half_open = np.maximum(real, 0.06)  # the avatar that talks with its mouth half open
    m = lipsync.against_real(mouths(half_open), mouths(real))
    assert m["shut_frames"] == 4 and m["shut_closed"] == 0.0
    shuts_two = half_open.copy()
    shuts_two[[1, 7]] = 0.03
    assert lipsync.against_real(mouths(shuts_two), mouths(real))["shut_closed"] == 0.5
    wide = lipsync.against_real(mouths(real + 0.1), mouths(real + 0.1))
    assert wide["shut_frames"] == 0 and wide["shut_closed"] is None  # a real mouth that never shuts: nothing to score


def test_a_mouth_twice_as_open_is_biased_by_100_percent():
    real = speech(np.random.default_rng(2), 80)
    m = lipsync.against_real(mouths(2 * real), mouths(real))
    assert m["mouth_bias_pct"] == 100.0 and m["mouth_corr"] == 1.0


def test_frames_without_a_face_are_left_out():
    real = speech(np.random.default_rng(3), 60)
    rendered = mouths(real)
    rendered[10:20] = np.nan
    m = lipsync.against_real(rendered, mouths(real))
    assert m["mouth_corr"] == 1.0 and m["lmd"] == 0.0
    assert lipsync.against_real(mouths(real[:2]), mouths(real[:2]))["mouth_corr"] is None


def talk_and_pause(fps=25.0):
    """4 s of audio: noise with a syllable-rate envelope, with a pause of frames 38 to 61 (1.52 s to 2.48 s).
    Returns the samples and the frames of the pause."""
    rng = np.random.default_rng(4)
    n = 4 * SAMPLE_RATE
    samples = (0.2 * rng.standard_normal(n) * (1.5 + np.sin(np.arange(n) / 800))).astype(np.float32)
    pause = np.arange(38, 62)
    samples[round(38 / fps * SAMPLE_RATE):round(62 / fps * SAMPLE_RATE)] *= 1e-3  # 60 dB down
    return samples, pause


def test_pauses_are_found_and_their_edges_left_out():
    samples, pause = talk_and_pause()
    silent = lipsync.pauses(lipsync.loudness(samples, SAMPLE_RATE, 100, 25.0), 25.0)
    assert np.flatnonzero(silent).tolist() == list(range(pause[0] + 2, pause[-1] + 1 - 2))


def test_a_mouth_that_closes_in_the_pause_scores_all_closed():
    samples, pause = talk_and_pause()
    talking = speech(np.random.default_rng(5), 100)
    shut = talking.copy()
    shut[pause] = 0.01
    m = lipsync.against_speech(mouths(shut), samples, SAMPLE_RATE, 25.0)
    assert m["silent_frames"] == len(pause) - 4 and m["silent_closed"] == 1.0
    assert lipsync.against_speech(mouths(talking), samples, SAMPLE_RATE, 25.0)["silent_closed"] < 0.5
    assert m["envelope_corr"] > lipsync.against_speech(mouths(talking), samples, SAMPLE_RATE, 25.0)["envelope_corr"]


def test_speech_without_pauses_has_no_silent_score():
    samples, _ = talk_and_pause()
    samples = np.abs(samples) + 0.2  # never quiet
    m = lipsync.against_speech(mouths(np.full(100, 0.1)), samples, SAMPLE_RATE, 25.0)
    assert m["silent_frames"] == 0 and m["silent_closed"] is None


@pytest.mark.slow
def test_on_a_real_clip_a_video_two_frames_late_scores_two(face5):
    reader = imageio_ffmpeg.read_frames(str(face5))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    real = lipsync.mouth_points(frames)
    assert np.isfinite(real).all() and real.shape == (122, 20, 2)
    assert np.nanstd(lipsync.opening(real)) > 0.02, "the clip's mouth moves"
    late = lipsync.mouth_points([frames[0], frames[0], *frames[:-2]])
    assert lipsync.against_real(late, real)["av_offset"] == 2
    assert lipsync.against_real(real, real)["mouth_corr"] == 1.0


def audio_and_mouth(rng, n_frames, lead=None):
    """Audio windows ``[n, 16, 4]`` cut from smooth 50 Hz features (frame ``i``: features ``2i ... 2i + 15``) and a
    mouth opening driven by the feature at each window's centre; from frame ``lead`` on, the mouth moves one frame
    before its audio (the opening of frame ``i`` is that of frame ``i + 1``)."""
    raw = np.apply_along_axis(lambda c: np.convolve(c, np.ones(5) / 5, "same"), 0,
                              rng.standard_normal((2 * n_frames + 18, 4)))
    windows = np.stack([raw[2 * i:2 * i + 16] for i in range(n_frames + 1)])
    drive = 0.08 + 0.05 * np.tanh(3 * windows[:, 8, 0] - windows[:, 8, 1])
    opening = drive[:n_frames] + 0.003 * rng.standard_normal(n_frames)
    if lead is not None:
        opening[lead:] = drive[lead + 1:n_frames + 1]
    return windows[:n_frames], opening


def test_the_audio_baseline_follows_a_mouth_the_audio_drives_without_lag():
    from benchmarks.lipsync import audio_baseline, stretch_lags

    windows, opening = audio_and_mouth(np.random.default_rng(0), 400)
    held = np.arange(340, 400)
    pred = audio_baseline(windows, opening, range(340), held)
    assert lipsync.correlation(pred, opening[held]) > 0.9
    assert abs(lipsync.fine_lag(pred, opening[held])) < 0.2
    lags = stretch_lags(windows, opening, 60)
    assert len(lags) == 6 and all(abs(v) < 0.2 for v in lags)


def test_a_stretch_whose_mouth_moves_before_its_audio_reads_its_lead():
    from benchmarks.lipsync import audio_baseline, stretch_lags

    windows, opening = audio_and_mouth(np.random.default_rng(1), 400, lead=340)
    held = np.arange(340, 400)
    pred = audio_baseline(windows, opening, range(340), held)
    assert lipsync.best_lag(pred, opening[held]) == 1  # the baseline does a frame later what this mouth does
    assert lipsync.fine_lag(pred, opening[held]) > 0.7
    # the other stretches, fitted on frames that are mostly in sync, read no lag
    assert all(abs(v) < 0.3 for v in stretch_lags(windows, opening, 60)[:5])


def test_the_audio_baseline_solves_wide_windows_in_the_frames_space_alike():
    from benchmarks.lipsync import audio_baseline

    rng = np.random.default_rng(2)
    windows, opening = audio_and_mouth(rng, 300)
    wide = np.concatenate([windows, rng.standard_normal((300, 16, 12))], axis=2)  # 256 values per frame
    fit, held = np.arange(200), np.arange(250, 300)  # fewer frames to fit on than values: the dual form
    x = wide.reshape(300, -1)
    a = (x[fit] - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    w = np.linalg.solve(a.T @ a + 1e3 * np.eye(a.shape[1]), a.T @ (opening[fit] - opening[fit].mean()))
    primal = (x[held] - x[fit].mean(0)) / (x[fit].std(0) + 1e-6) @ w + opening[fit].mean()
    np.testing.assert_allclose(audio_baseline(wide, opening, fit, held), primal, rtol=1e-6, atol=1e-9)


def speech_like(opening, rate=SAMPLE_RATE, fps=25.0, seed=0):
    """Noise whose loudness in each frame follows ``opening`` (louder when the mouth is open), silent below 0.05."""
    rng = np.random.default_rng(seed)
    per = rate // int(fps)
    gain = np.clip(np.asarray(opening) - 0.05, 0, None) * 5
    return (rng.standard_normal(len(gain) * per) * np.repeat(gain, per)).astype(np.float32)


def test_a_clip_whose_mouth_moves_three_frames_before_its_sound_is_out_of_sync():
    open_ = speech(np.random.default_rng(3), 300)
    sound = speech_like(np.r_[np.full(3, 0.0), open_[:-3]])  # the sound 3 frames (120 ms) after the mouth
    lag, warning = lipsync.clip_sync(mouths(open_), sound, SAMPLE_RATE, 25.0)
    assert abs(lag + 3) < 0.3
    assert warning.startswith("the clip's mouth follows its own speech best 3.0 frames before it (r = 0.")
    assert warning.endswith("real speakers' lips lead by about half a frame): its sound looks out of sync with its "
                            "picture, and the avatar learns the offset. Check the clip, and if so prepare it again "
                            "with its sound moved by -120 ms (--set ingest.audio_shift_ms=..., added to any shift "
                            "already set)")
    lag, warning = lipsync.clip_sync(mouths(open_), speech_like(open_), SAMPLE_RATE, 25.0)
    assert abs(lag) < 0.3 and warning is None


def test_frames_past_the_end_of_the_sound_are_left_out_of_the_clips_sync():
    open_ = speech(np.random.default_rng(4), 300)
    sound = speech_like(open_)[:-10 * SAMPLE_RATE // 25]  # the last 10 frames have no sound
    lag, warning = lipsync.clip_sync(mouths(open_), sound, SAMPLE_RATE, 25.0)
    assert abs(lag) < 0.3 and warning is None


def test_a_real_clip_with_its_sound_moved_120_ms_earlier_is_out_of_sync(prepared_copy, face5):
    from being_trainer_gaussian_avatar.evaluate import clip_sync

    from being_core.ingest import extract_audio
    from being_core.progress import Reporter

    lag, warning = clip_sync(prepared_copy, 25.0)
    assert abs(lag) <= lipsync.SYNC_WARN_FRAMES and warning is None  # as recorded
    extract_audio(face5, prepared_copy, Reporter(), shift_ms=-120)
    moved, warning = clip_sync(prepared_copy, 25.0)
    assert moved > lag + 2 and "its sound looks out of sync" in warning and "sound moved by +" in warning


def test_a_clip_with_less_sound_than_three_frames_has_no_sync():
    assert lipsync.clip_sync(mouths(speech(np.random.default_rng(5), 50)), np.zeros(1000, np.float32),
                             SAMPLE_RATE, 25.0) == (None, None)
