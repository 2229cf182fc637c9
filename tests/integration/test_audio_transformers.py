"""audio_encoder 'wav2vec2' and 'hubert' through the real transformers loading path, with tiny random-init
models that the tests build and save (no hub here): same 320-sample stride as the real models."""

import json

import numpy as np
import pytest
from being_audio_wav2vec2.inference import chunked, load, n_states, normalise, runner
from being_audio_wav2vec2.testing import save_tiny_model

from being_core.audio import AudioFeatures
from being_core.manifest import Manifest


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"wav2vec2": save_tiny_model(root / "wav2vec2-large-xlsr-53-esperanto", "wav2vec2"),
            "hubert": save_tiny_model(root / "tiny-hubert", "hubert")}


def test_the_stride_is_the_real_one(tiny_models):
    from transformers import Wav2Vec2ForCTC

    model, _ = load(Wav2Vec2ForCTC, tiny_models["wav2vec2"])
    infer = runner(model, "cpu", __import__("torch").float32, lambda o: o.logits)
    for n in (400, 16000, 16000 * 3 + 123):
        assert infer(np.zeros(n, np.float32)).shape == (n_states(n), 44)


def test_chunked_matches_unchunked(tiny_models, being_testdata, tmp_path):
    from transformers import Wav2Vec2ForCTC

    from being_core.audio import read_wav
    from being_core.ingest import extract_audio
    from being_core.progress import Reporter

    extract_audio(being_testdata / "audio" / "geneface_zozo.wav", tmp_path, Reporter())  # 10.9 s of speech
    audio = normalise(read_wav(tmp_path / "aud.wav"))
    model, _ = load(Wav2Vec2ForCTC, tiny_models["wav2vec2"])
    infer = runner(model, "cpu", __import__("torch").float32, lambda o: o.logits)
    whole = chunked(audio, infer, 60.0, 0.0)
    parts = chunked(audio, infer, 2.0, 2.0)
    assert whole.shape == parts.shape == (n_states(len(audio)), 44)
    # Self-attention sees the whole clip in one case and 6 s in the other: close, not identical.
    assert np.abs(whole - parts).mean() / np.abs(whole).mean() < 0.01


def test_missing_model_is_a_clear_error(tmp_path):
    from transformers import Wav2Vec2ForCTC

    with pytest.raises(ValueError) as err:
        load(Wav2Vec2ForCTC, "someone/not-downloaded-model")
    assert str(err.value).startswith(
        "stages.audio_encoder.config.model: model 'someone/not-downloaded-model' is not available locally (")
    assert "huggingface-cli download someone/not-downloaded-model" in str(err.value)


def test_swapping_the_encoder_is_one_line_and_the_manifest_follows(prepared_copy, being_run_stage, tiny_models):
    dims = {}
    for impl, config in (("mel", {}), ("wav2vec2", {"model": tiny_models["wav2vec2"]}),
                         ("hubert", {"model": tiny_models["hubert"]})):
        being_run_stage(prepared_copy, "audio_encoder", impl, config)
        features = AudioFeatures.from_info(Manifest.load(prepared_copy).stages["audio_encoder"]["info"])
        array = np.load(prepared_copy / features.file)
        assert array.shape == (122, features.window, features.dim) and array.dtype == np.float32
        dims[impl] = (features.encoder, features.window, features.dim)
    assert dims == {"mel": ("mel", 16, 80), "wav2vec2": ("wav2vec2", 16, 44), "hubert": ("hubert", 2, 32)}
    # Only the reference model's logits get the reference name, and a swap removes the old files.
    assert (prepared_copy / "aud_hubert.npy").exists()
    assert not (prepared_copy / "aud_mel.npy").exists() and not (prepared_copy / "aud_eo.npy").exists()
    assert not (prepared_copy / "aud_hu.npy").exists(), "a tiny model is not facebook/hubert-large-ls960-ft"


def test_reference_name_for_the_esperanto_logits(prepared_copy, being_run_stage, tiny_models):
    entry = being_run_stage(prepared_copy, "audio_encoder", "wav2vec2", {"model": tiny_models["wav2vec2"]})
    assert set(entry["outputs"]) == {"aud_w2v.npy", "aud_eo.npy"}
    np.testing.assert_array_equal(np.load(prepared_copy / "aud_eo.npy"), np.load(prepared_copy / "aud_w2v.npy"))
    assert entry["info"]["reference_file"] == "aud_eo.npy"
    hidden = being_run_stage(prepared_copy, "audio_encoder", "wav2vec2",
                             {"model": tiny_models["wav2vec2"], "output": "hidden", "layer": 1})
    assert set(hidden["outputs"]) == {"aud_w2v.npy"} and hidden["info"]["dim"] == 32
    assert not (prepared_copy / "aud_eo.npy").exists()
    json.dumps(hidden)


def test_the_reference_hubert_file_keeps_the_reference_pairs(prepared_copy, being_run_stage, tmp_path):
    """aud_hu.npy is the 50 Hz states two by two (frame i: 2i, 2i + 1) as the reference trainers cut it; Being's own
    aud_hubert.npy is the pair centred on the frame's time (2i - 1, 2i)."""
    model = save_tiny_model(tmp_path / "hubert-large-ls960-ft", "hubert")
    entry = being_run_stage(prepared_copy, "audio_encoder", "hubert", {"model": model})
    assert set(entry["outputs"]) == {"aud_hubert.npy", "aud_hu.npy"}
    ours, reference = np.load(prepared_copy / "aud_hubert.npy"), np.load(prepared_copy / "aud_hu.npy")
    assert ours.shape == reference.shape == (122, 2, 32)
    np.testing.assert_array_equal(reference[:, 0], ours[:, 1])  # state 2i
    np.testing.assert_array_equal(reference[:-1, 1], ours[1:, 0])  # state 2i + 1
    assert not np.array_equal(reference, ours)


def test_deterministic(prepared_copy, being_run_stage, tiny_models):
    being_run_stage(prepared_copy, "audio_encoder", "hubert", {"model": tiny_models["hubert"]})
    first = np.load(prepared_copy / "aud_hubert.npy")
    being_run_stage(prepared_copy, "audio_encoder", "hubert", {"model": tiny_models["hubert"]}, force=True)
    np.testing.assert_array_equal(first, np.load(prepared_copy / "aud_hubert.npy"))
