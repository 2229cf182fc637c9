"""Tiny random-init wav2vec2/HuBERT models for tests (no hub access anywhere): the real 320-sample stride
and layer-norm front end of the large models, 32-wide, saved with a feature extractor so that they load
through exactly the code path a user's model takes."""

from __future__ import annotations

from pathlib import Path

CONV = dict(conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2))
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
            do_stable_layer_norm=True, **CONV)


def save_tiny_model(folder: Path, kind: str, vocab_size: int = 44, seed: int = 0) -> str:
    """Build and save a tiny ``kind`` ('wav2vec2' CTC or 'hubert') model in ``folder``; returns its path."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    torch.manual_seed(seed)
    if kind == "wav2vec2":
        model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=vocab_size, **TINY))
    elif kind == "hubert":
        model = HubertModel(HubertConfig(**TINY))
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return str(folder)
