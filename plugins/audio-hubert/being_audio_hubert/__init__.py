"""Being audio_encoder ``hubert``: HuBERT hidden states per video frame.

With ``facebook/hubert-large-ls960-ft``, the last layer and ``window: 2`` this is the reference
``aud_hu.npy`` ``[N, 2, 1024]``, written under that name too in the reference's layout (the 50 Hz states two by
two: frame ``i`` gets ``2i, 2i + 1``); ``aud_hubert.npy`` holds Being's centred pair ``2i - 1, 2i``.
"""

from __future__ import annotations

from being_audio_wav2vec2 import ChunkedModelConfig, encode, open_stream, reference_name
from pydantic import Field

from being_core import AudioEncoder, StageContext, StageReport, hookimpl

REFERENCE_MODEL = "facebook/hubert-large-ls960-ft"
FEATURE_FILE = "aud_hubert.npy"
REFERENCE_FILE = "aud_hu.npy"


class HubertConfig(ChunkedModelConfig):
    model: str = Field(REFERENCE_MODEL, description="Local folder, or a model id already in the local Hugging "
                                                    "Face cache; never downloaded at run time.")
    layer: int = Field(-1, ge=-64, le=64, description="Hidden layer (-1 = last, 0 = the conv features).")
    window: int = Field(2, ge=1, le=64, description="50 Hz states per video frame (W); 2 as the reference.")


class HubertEncoder(AudioEncoder[HubertConfig]):
    """HuBERT hidden states per video frame (transformers; local models only)."""

    name = "hubert"
    version = "0.2.0"
    outputs = (FEATURE_FILE,)
    optional_outputs = (REFERENCE_FILE,)
    #: live, the model sees 2 s before and 160 ms after (offline: 2 s either side, the clip's normalisation)
    stream_exact = False

    @classmethod
    def contract_config(cls, workdir):
        from being_audio_wav2vec2.testing import save_tiny_model

        return {"model": save_tiny_model(workdir / "tiny-hubert", "hubert")}

    def run(self, ctx: StageContext[HubertConfig]) -> StageReport:
        from transformers import HubertModel

        cfg = ctx.config
        also = REFERENCE_FILE if reference_name(cfg.model, REFERENCE_MODEL.split("/")[1]) and cfg.layer == -1 \
            and cfg.window == 2 else None
        return encode(ctx, cfg, HubertModel, lambda o: o.hidden_states[cfg.layer], self.name, FEATURE_FILE, also,
                      reference_pairs=True)

    def stream(self, ctx: StageContext[HubertConfig], device: str | None = None):
        from transformers import HubertModel

        return open_stream(ctx, ctx.config, HubertModel, lambda o: o.hidden_states[ctx.config.layer], device)


@hookimpl
def being_register_stages(registry):
    registry.add(HubertEncoder)
