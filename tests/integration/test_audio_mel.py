"""audio_encoder 'mel' on real speech."""

import numpy as np
import pytest
from being_audio_mel import MelConfig, log_mel
from conftest import make_video

from being_core.audio import frame_windows, read_wav
from being_core.ingest import extract_audio
from being_core.progress import Reporter


def encode(wav, n_frames, **cfg):
    return encode_samples(read_wav(wav), n_frames, **cfg)


def encode_samples(audio, n_frames, **cfg):
    config = MelConfig(**cfg)
    return frame_windows(log_mel(audio, config), n_frames, 25.0, config.window, lead=config.lead)


@pytest.mark.parametrize("source", ["sadtalker_RD_Radio31_000.wav", "sadtalker_fayu_pcm24.wav",
                                    "geneface_zozo.wav", "videoretalking_audio1.wav"])
@pytest.mark.parametrize("seconds", [1.0, 2.37, 4.0])
def test_one_feature_window_per_video_frame(being_testdata, tmp_path, source, seconds):
    trimmed = make_video(tmp_path / "clip.wav", "-i", str(being_testdata / "audio" / source), "-t", str(seconds))
    extract_audio(trimmed, tmp_path, Reporter())  # 16 kHz mono, as ingest writes it
    n = round(seconds * 25)
    windows, mismatch = encode(tmp_path / "aud.wav", n)
    assert windows.shape == (n, 16, 80) and windows.dtype == np.float32
    assert abs(mismatch) <= 1


def test_speech_and_silence_differ(being_testdata, tmp_path):
    speech = make_video(tmp_path / "speech.wav", "-i", str(being_testdata / "audio" / "geneface_zozo.wav"),
                        "-t", "2", "-ac", "1", "-ar", "16000")
    silence = make_video(tmp_path / "silence.wav", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2")
    s, _ = encode(speech, 50)
    q, _ = encode(silence, 50)
    assert s.mean() - q.mean() > 5  # natural-log energies: speech is orders of magnitude louder
    assert s.std(axis=(0, 1)).mean() > 10 * q.std(axis=(0, 1)).mean() + 0.1


def test_a_tone_lands_in_its_mel_band(tmp_path):
    """A 1 kHz tone: the loudest band of every window is the one whose centre frequency is nearest 1 kHz."""
    import librosa

    wav = make_video(tmp_path / "tone.wav", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=16000", "-t", "2",
                     "-c:a", "pcm_s16le")
    windows, _ = encode(wav, 50)
    cfg = MelConfig()
    centres = librosa.mel_frequencies(n_mels=cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax or 8000)[1:-1]
    expected = int(np.argmin(np.abs(centres - 1000)))
    loudest = windows[5:-5].argmax(axis=2)  # away from the clip's edges
    assert set(np.unique(loudest)) <= {expected - 1, expected, expected + 1}
    assert (loudest == expected).mean() > 0.9


def test_wrong_rate_or_format_is_a_clear_error(being_testdata, tmp_path):
    path = make_video(tmp_path / "48k.wav", "-i", str(being_testdata / "audio" / "sadtalker_fayu_pcm24.wav"),
                      "-c:a", "pcm_s16le")
    with pytest.raises(ValueError) as err:
        read_wav(path)
    assert str(err.value) == f"{path} is sampled at 48000 Hz; the audio encoders expect 16000 Hz from ingest"
    path = being_testdata / "audio" / "sadtalker_fayu_pcm24.wav"  # 24-bit WAVE_FORMAT_EXTENSIBLE
    with pytest.raises(ValueError) as err:
        read_wav(path)
    assert str(err.value) == f"{path} is not a PCM wav file: unknown format: 65534"


def test_a_lead_moves_the_windows_later_offline_and_live(being_testdata, tmp_path):
    """lead: 6 gives frame i the window centred 6 features (3 frames, 120 ms) after its time, offline and in a
    live stream alike; the stream waits 120 ms longer for each frame."""
    from being_audio_mel import MelStream

    extract_audio(being_testdata / "audio" / "geneface_zozo.wav", tmp_path, Reporter())
    audio = read_wav(tmp_path / "aud.wav")[:3 * 16000]
    n = 75
    centred, _ = encode_samples(audio, n)
    ahead, _ = encode_samples(audio, n, lead=6)
    np.testing.assert_array_equal(ahead[:n - 7], centred[3:n - 4])
    assert not np.array_equal(ahead, centred)
    stream, plain = MelStream(MelConfig(lead=6), 25.0), MelStream(MelConfig(), 25.0)
    assert stream.lookahead - plain.lookahead == 6 * 320
    streamed = np.concatenate([stream.push(audio[at:at + 1234]) for at in range(0, len(audio), 1234)])
    k = n - 8  # the last frames' windows run past the audio's end
    np.testing.assert_allclose(streamed[:k], ahead[:k], atol=1e-4)
