"""Real-time factor of the audio encoders (run by hand; numbers in docs/benchmarks.md).

    python -m benchmarks.audio_encoders AUD_WAV [--large] [--device cpu|cuda] [--fp16]

Runs the plugins' own chunked inference (being_audio_wav2vec2.inference) on a 16 kHz mono wav with
random-init models: the tiny test models, and with --large full-size wav2vec2-large / HuBERT-large configs
(317 M parameters each; random weights time the same as trained ones). Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from being_audio_wav2vec2.inference import chunked, load, normalise, pick_device, runner
    from being_audio_wav2vec2.testing import save_tiny_model
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from being_core.audio import read_wav

    wav = Path(sys.argv[1])
    device_name = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "auto"
    fp16 = "--fp16" in sys.argv
    audio = normalise(read_wav(wav))
    seconds = len(audio) / 16000
    device, dtype = pick_device(device_name, fp16)
    report = {"audio_seconds": round(seconds, 2), "device": str(device), "fp16": fp16,
              "torch_threads": torch.get_num_threads()}
    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                 feat_extract_norm="layer", do_stable_layer_norm=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"wav2vec2-tiny": (Wav2Vec2ForCTC, save_tiny_model(Path(tmp) / "w", "wav2vec2"), "logits"),
                  "hubert-tiny": (HubertModel, save_tiny_model(Path(tmp) / "h", "hubert"), "hidden")}
        if "--large" in sys.argv:
            for name, cls, cfg in (("wav2vec2-large", Wav2Vec2ForCTC, Wav2Vec2Config(vocab_size=44, **large)),
                                   ("hubert-large", HubertModel, HubertConfig(**large))):
                folder = Path(tmp) / name
                cls(cfg).save_pretrained(folder)
                Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000).save_pretrained(folder)
                models[name] = (cls, str(folder), "logits" if cls is Wav2Vec2ForCTC else "hidden")
        for name, (cls, path, out) in models.items():
            model, _ = load(cls, path)
            infer = runner(model, device, dtype, (lambda o: o.logits) if out == "logits" else (lambda o: o.hidden_states[-1]))
            chunked(audio[:16000 * 5], infer, 20.0, 2.0)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            states = chunked(audio, infer, 20.0, 2.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            report[name] = {"realtime_factor": round(seconds / (time.perf_counter() - t), 1),
                            "dim": int(states.shape[1])}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
