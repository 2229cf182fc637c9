"""Being audio_encoder ``hubert``: HuBERT hidden states per video frame.

With ``facebook/hubert-large-ls960-ft``, the last layer and ``window: 2`` this is the reference
``aud_hu.npy`` ``[N, 2, 1024]`` (the pair of 50 Hz states of each 25 fps frame), written under that name too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from being_core import AudioEncoder, StageConfig, StageContext, StageReport, hookimpl

REFERENCE_MODEL = "facebook/hubert-large-ls960-ft"
FEATURE_FILE = "aud_hubert.npy"
REFERENCE_FILE = "aud_hu.npy"


class HubertConfig(StageConfig):
    model: str = Field(REFERENCE_MODEL, description="Local folder, or a model id already in the local Hugging "
                                                    "Face cache; never downloaded at run time.")
    layer: int = Field(-1, description="Hidden layer (-1 = last, 0 = the conv features).")
    window: int = Field(2, ge=1, le=64, description="50 Hz states per video frame (W); 2 as the reference.")
    chunk_seconds: float = Field(20.0, gt=0, description="Audio per model call; bounds memory on long clips.")
    context_seconds: float = Field(2.0, ge=0, description="Extra audio each side of a chunk, then dropped.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes the GPU when there is one.")
    fp16: bool = Field(False, description="Half precision (GPU only).")
    max_mismatch_frames: int = Field(25, ge=0, description="Largest audio/video length difference, in frames.")


class HubertEncoder(AudioEncoder):
    """HuBERT hidden states per video frame (transformers; local models only)."""

    name = "hubert"
    version = "0.1.0"
    Config = HubertConfig
    outputs = (FEATURE_FILE,)
    optional_outputs = (REFERENCE_FILE,)

    @classmethod
    def contract_config(cls, workdir):
        from being_audio_wav2vec2.testing import save_tiny_model

        return {"model": save_tiny_model(workdir / "tiny-hubert", "hubert")}

    def run(self, ctx: StageContext) -> StageReport:
        from being_audio_wav2vec2 import encode, reference_name
        from transformers import HubertModel

        cfg: HubertConfig = ctx.config  # type: ignore[assignment]
        also = REFERENCE_FILE if reference_name(cfg.model, REFERENCE_MODEL.split("/")[1]) and cfg.layer == -1 \
            and cfg.window == 2 else None
        return encode(ctx, cfg, HubertModel, lambda o: o.hidden_states[cfg.layer], self.name, FEATURE_FILE, also)


@hookimpl
def being_register_stages(registry):
    registry.add(HubertEncoder)
