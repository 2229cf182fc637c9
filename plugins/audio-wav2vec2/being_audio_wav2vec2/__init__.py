"""Being audio_encoder ``wav2vec2``: CTC logits (or a hidden layer) of a local wav2vec2 model.

With ``cpierse/wav2vec2-large-xlsr-53-esperanto`` and ``output: logits`` this is the reference ``aud_eo.npy``
``[N, 16, 44]`` (written under that name too); any other model writes only ``aud_w2v.npy``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from being_core import AudioEncoder, StageConfig, StageContext, StageReport, hookimpl

REFERENCE_MODEL = "cpierse/wav2vec2-large-xlsr-53-esperanto"
FEATURE_FILE = "aud_w2v.npy"
REFERENCE_FILE = "aud_eo.npy"


class ChunkedModelConfig(StageConfig):
    """Settings :func:`encode` reads, shared by the wav2vec2 and HuBERT encoders."""

    chunk_seconds: float = Field(20.0, gt=0, le=600, description="Audio per model call; bounds memory on long clips.")
    context_seconds: float = Field(2.0, ge=0, le=60, description="Extra audio each side of a chunk, then dropped.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes the GPU when there is one.")
    fp16: bool = Field(False, description="Half precision (GPU only).")
    max_mismatch_frames: int = Field(25, ge=0, le=10_000, description="Largest audio/video length difference, in frames.")


class Wav2Vec2Config(ChunkedModelConfig):
    model: str = Field(REFERENCE_MODEL, description="Local folder, or a model id already in the local Hugging "
                                                    "Face cache; never downloaded at run time.")
    output: Literal["logits", "hidden"] = Field("logits", description="CTC logits, or a hidden layer's states.")
    layer: int = Field(-1, ge=-64, le=64, description="Hidden layer for output: hidden (-1 = last, 0 = the conv features).")
    window: int = Field(16, ge=1, le=64, description="50 Hz states per video frame (W); 16 as the reference.")


def reference_name(model: str, suffix: str) -> bool:
    return model.rstrip("/").endswith(suffix)


class Wav2Vec2Encoder(AudioEncoder[Wav2Vec2Config]):
    """wav2vec2 CTC logits or hidden states per video frame (transformers; local models only)."""

    name = "wav2vec2"
    version = "0.2.0"
    outputs = (FEATURE_FILE,)
    optional_outputs = (REFERENCE_FILE,)
    #: live, the model sees 2 s before and 160 ms after (offline: 2 s either side, the clip's normalisation)
    stream_exact = False

    @classmethod
    def contract_config(cls, workdir):
        from .testing import save_tiny_model

        return {"model": save_tiny_model(workdir / "tiny-wav2vec2", "wav2vec2")}

    def run(self, ctx: StageContext[Wav2Vec2Config]) -> StageReport:
        cfg = ctx.config
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

        model_cls = Wav2Vec2ForCTC if cfg.output == "logits" else Wav2Vec2Model
        pick = (lambda o: o.logits) if cfg.output == "logits" else (lambda o: o.hidden_states[cfg.layer])
        also = REFERENCE_FILE if cfg.output == "logits" and reference_name(cfg.model, REFERENCE_MODEL.split("/")[1]) \
            and cfg.window == 16 else None
        return encode(ctx, cfg, model_cls, pick, self.name, FEATURE_FILE, also)

    def stream(self, ctx: StageContext[Wav2Vec2Config], device: str | None = None):
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

        cfg = ctx.config
        model_cls = Wav2Vec2ForCTC if cfg.output == "logits" else Wav2Vec2Model
        pick = (lambda o: o.logits) if cfg.output == "logits" else (lambda o: o.hidden_states[cfg.layer])
        return open_stream(ctx, cfg, model_cls, pick, device)


def open_stream(ctx: StageContext, cfg, model_cls, pick, device: str | None):
    """A :class:`~being_audio_wav2vec2.inference.StateStream` of the encoder's model, on ``device`` (None: the
    config's), shared by the wav2vec2 and HuBERT encoders."""
    from .inference import StateStream, load_once, pick_device, runner

    dev, dtype = pick_device(cfg.device if device is None else device.split(":")[0], cfg.fp16)
    if device is not None and dev.type == "cuda":
        import torch

        dev = torch.device(device)
    model, wants_norm = load_once(model_cls, cfg.model, str(dev), dtype)
    return StateStream(runner(model, dev, dtype, pick), wants_norm, cfg.window, ctx.dataset.fps)


def encode(ctx: StageContext, cfg, model_cls, pick, encoder: str, feature_file: str,
           reference_file: str | None, reference_pairs: bool = False) -> StageReport:
    """Shared by the wav2vec2 and HuBERT encoders: load, run chunked, window per frame, save. The reference file
    holds the same windows, or with ``reference_pairs`` the reference's pairs (``being_core.audio.frame_pairs``)."""
    import numpy as np

    from being_core.audio import SAMPLE_RATE, check_mismatch, frame_pairs, frame_windows, read_wav

    from .inference import chunked, load, n_chunks, normalise, pick_device, runner

    n_frames, fps = ctx.dataset.n_frames, ctx.dataset.fps
    audio = read_wav(ctx.input("aud.wav"))
    device, dtype = pick_device(cfg.device, cfg.fp16)
    model, wants_norm = load(model_cls, cfg.model)
    infer = runner(model, device, dtype, pick)
    with ctx.progress.task(f"audio: {encoder}", total=n_chunks(len(audio), cfg.chunk_seconds, cfg.context_seconds),
                           unit="chunk") as task:
        states = chunked(normalise(audio) if wants_norm else audio, infer, cfg.chunk_seconds, cfg.context_seconds,
                         task)
    windows, mismatch = frame_windows(states, n_frames, fps, cfg.window)
    check_mismatch(mismatch, cfg.max_mismatch_frames, len(audio), n_frames, fps)
    windows = windows.astype(np.float32)
    np.save(ctx.output(feature_file), windows)
    if reference_file:
        np.save(ctx.output(reference_file),
                frame_pairs(states, n_frames, fps).astype(np.float32) if reference_pairs else windows)
    return StageReport(
        metrics={"seconds_of_audio": round(len(audio) / SAMPLE_RATE, 3), "frame_mismatch": mismatch,
                 "device": str(device)},
        info={"encoder": encoder, "file": feature_file, "reference_file": reference_file,
              "dim": int(windows.shape[2]), "window": cfg.window, "rate": 50.0, "source_rate": SAMPLE_RATE,
              "model": cfg.model, "shape": list(windows.shape)},
    )


@hookimpl
def being_register_stages(registry):
    registry.add(Wav2Vec2Encoder)
