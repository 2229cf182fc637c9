import wave

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import make_video, prepare
from PIL import Image

from being_core.config import IngestConfig
from being_core.errors import InputError
from being_core.ingest import ingest, probe

NO_FACE_STAGES = ["ingest.crop=center", "stages.face_tracker=null", "stages.audio_encoder=null", "stages.au_extractor=null",
                  "stages.teeth_segmenter=null"]


def decoded_frames(path):
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def wav_facts(path):
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


@pytest.mark.parametrize("clip, frames", [
    ("videoretalking_face5.mp4", 122),               # H.264 524x524, AAC 44.1 kHz stereo
    ("sadtalker_hdtf_WDA_AlexandriaOcasioCortez_000.mp4", 200),  # MPEG-4 Part 2, AAC 16 kHz stereo
])
def test_ingest_counts_decoded_frames_and_writes_16k_mono(being_testdata, being_run_dir, clip, frames):
    video = being_testdata / "videos" / clip
    result = ingest(video, being_run_dir, IngestConfig(crop="center"))
    assert result.n_frames == frames == decoded_frames(video)
    jpgs = sorted(being_run_dir.glob("ori_imgs/*.jpg"))
    assert len(jpgs) == frames and (being_run_dir / "ori_imgs" / f"{frames - 1}.jpg").exists()
    assert Image.open(jpgs[0]).size == (512, 512)
    rate, channels, width, n = wav_facts(being_run_dir / "aud.wav")
    assert (rate, channels, width) == (16000, 1, 2)
    assert abs(n / rate - frames / 25) < 0.2
    assert not (being_run_dir / ".being" / "ingest").exists()


def test_ingest_resamples_other_rates_and_keeps_native_size(being_testdata, being_run_dir, tmp_path):
    # A 30 fps, 48 kHz stereo variant of a real clip: 25 fps frames counted from decoding.
    src = make_video(tmp_path / "30fps.mp4", "-i", str(being_testdata / "videos" / "liveportrait_d20.mp4"),
                     "-i", str(being_testdata / "audio" / "sadtalker_fayu_pcm24.wav"), "-map", "0:v", "-map", "1:a",
                     "-r", "30", "-t", "4", "-c:a", "aac", "-ar", "48000")
    result = ingest(src, being_run_dir, IngestConfig(size=None, min_frames=10, crop="center"))
    assert result.n_frames in (100, 101)
    assert (result.width, result.height) == (480, 480)
    assert wav_facts(being_run_dir / "aud.wav")[:2] == (16000, 1)


def test_no_audio_is_an_error_then_allowed_with_the_flag(being_testdata, being_run_dir):
    video = being_testdata / "videos" / "liveportrait_d0_noaudio.mp4"
    with pytest.raises(InputError) as err:
        prepare(video, being_run_dir, NO_FACE_STAGES)
    assert str(err.value) == (
        f"{video} has no audio stream; prepare it anyway with --no-audio (ingest.audio: optional), "
        f"but a trainer needs audio")
    assert not (being_run_dir / "ori_imgs").exists()
    manifest = prepare(video, being_run_dir, [*NO_FACE_STAGES, "ingest.audio=optional"])
    assert manifest.data["dataset"]["n_frames"] == 78 == decoded_frames(video)
    assert manifest.data["dataset"]["has_audio"] is False
    assert not (being_run_dir / "aud.wav").exists()


def test_not_a_video(being_testdata, being_run_dir):
    path = being_testdata / "MANIFEST.md"
    with pytest.raises(InputError) as err:
        probe(path)
    assert str(err.value) == f"{path} is not a video ffmpeg can read (ffmpeg: invalid data)"


def test_audio_file_has_no_video_stream(being_testdata, being_run_dir):
    path = being_testdata / "audio" / "geneface_zozo.wav"
    with pytest.raises(InputError) as err:
        ingest(path, being_run_dir, IngestConfig(crop="center"))
    assert str(err.value) == f"{path} has no video stream"


def test_missing_file(being_run_dir, tmp_path):
    with pytest.raises(InputError) as err:
        probe(tmp_path / "nope.mp4")
    assert str(err.value) == f"{tmp_path / 'nope.mp4'} does not exist"


def test_too_short_leaves_nothing(being_testdata, being_run_dir):
    video = being_testdata / "videos" / "videoretalking_face5.mp4"
    with pytest.raises(InputError) as err:
        ingest(video, being_run_dir, IngestConfig(min_frames=500, crop="center"))
    assert str(err.value) == (f"{video} is too short: 122 frames at 25 fps, at least 500 are needed "
                              f"(ingest.min_frames)")
    assert not (being_run_dir / "ori_imgs").exists() and not (being_run_dir / "aud.wav").exists()


def test_run_folder_that_is_a_file(being_testdata, tmp_path):
    target = tmp_path / "taken"
    target.write_text("user data")
    with pytest.raises(InputError) as err:
        prepare(being_testdata / "videos" / "videoretalking_face5.mp4", target, NO_FACE_STAGES)
    assert str(err.value) == f"run folder {target} exists and is not a folder"
    assert target.read_text() == "user data"


def test_never_overwrites_the_input(being_testdata, tmp_path):
    run = tmp_path / "run"
    (run / "ori_imgs").mkdir(parents=True)
    video = run / "aud.wav"
    video.write_bytes((being_testdata / "videos" / "videoretalking_face5.mp4").read_bytes())
    before = video.read_bytes()
    with pytest.raises(InputError) as err:
        prepare(video, run, NO_FACE_STAGES)
    assert str(err.value) == f"run folder {run} would overwrite the input {video}; choose another -o"
    assert video.read_bytes() == before


def test_reingest_replaces_frames(being_testdata, being_run_dir):
    ingest(being_testdata / "videos" / "sadtalker_hdtf_WDA_AlexandriaOcasioCortez_000.mp4", being_run_dir,
           IngestConfig(crop="center"))
    result = ingest(being_testdata / "videos" / "videoretalking_face5.mp4", being_run_dir,
                    IngestConfig(size=128, crop="center"))
    assert len(list(being_run_dir.glob("ori_imgs/*.jpg"))) == result.n_frames == 122
    assert np.asarray(Image.open(being_run_dir / "ori_imgs" / "121.jpg")).shape == (128, 128, 3)


@pytest.mark.parametrize("shift_ms", [120, -120])
def test_the_sound_moves_against_the_picture_sample_for_sample(being_testdata, tmp_path, shift_ms):
    from being_core.audio import read_wav
    from being_core.ingest import extract_audio
    from being_core.progress import Reporter

    clip = being_testdata / "videos" / "videoretalking_face5.mp4"
    plain, moved = tmp_path / "plain", tmp_path / "moved"
    plain.mkdir(), moved.mkdir()
    seconds = extract_audio(clip, plain, Reporter())
    assert extract_audio(clip, moved, Reporter(), shift_ms) == pytest.approx(seconds + shift_ms / 1000)
    a, b = read_wav(plain / "aud.wav"), read_wav(moved / "aud.wav")
    n = 16 * abs(shift_ms)  # samples at 16 kHz
    if shift_ms > 0:  # later: silence before the same samples
        assert not b[:n].any() and np.array_equal(b[n:], a)
    else:  # earlier: its start cut
        assert np.array_equal(b, a[n:])
    assert wav_facts(moved / "aud.wav")[:3] == (16000, 1, 2)
    assert not list(moved.glob(".*"))  # no temporary file left
