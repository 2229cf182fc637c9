"""Being teeth_segmenter ``easyportrait``: an EasyPortrait-style ONNX model run with onnxruntime.

The model takes ``[1, 3, H, W]`` float32 (RGB, normalised with ``mean``/``std``) and returns ``[1, C, H, W]``
logits over EasyPortrait's 8 labels (0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 lips, 7 teeth). Frames are
letterboxed to the model's input size (aspect kept, padded at the bottom/right), the arg-max label map is
cropped back and resized (nearest) to the frame, and ``teeth_label`` becomes the mask.

Being ships no weights: export the EasyPortrait face-parsing model of your choice to ONNX (e.g. with
mmsegmentation's ``pytorch2onnx``) and set ``model`` to the file.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from being_core import StageConfig, StageContext, StageReport, TeethSegmenter, hookimpl

_Side = Annotated[int, Field(ge=16, le=4096)]
_Level = Annotated[float, Field(ge=0, le=255)]
_Spread = Annotated[float, Field(gt=0, le=255)]


class EasyPortraitConfig(StageConfig):
    model: str | None = Field(None, description="Path of the ONNX model (absolute, or relative to the run folder).")
    input_size: tuple[_Side, _Side] | None = Field(None, description="Model input (height, width); null = read it "
                                                                 "from the model.")
    teeth_label: int = Field(7, ge=0, le=255, description="Label of teeth in the model's output.")
    mean: tuple[_Level, _Level, _Level] = Field((123.675, 116.28, 103.53), description="RGB mean, 0-255 scale.")
    std: tuple[_Spread, _Spread, _Spread] = Field((58.395, 57.12, 57.375), description="RGB std, 0-255 scale.")
    device: str = Field("auto", description="'auto' uses CUDA when onnxruntime has it, else the CPU; or 'cpu'.")


class EasyPortraitTeeth(TeethSegmenter[EasyPortraitConfig]):
    """EasyPortrait-style ONNX face parsing (onnxruntime); label 7 = teeth."""

    name = "easyportrait"
    version = "0.1.0"

    @classmethod
    def contract_config(cls, workdir):
        from .testing import save_tiny_model

        return {"model": str(save_tiny_model(workdir / "tiny-easyportrait.onnx"))}

    def run(self, ctx: StageContext[EasyPortraitConfig]) -> StageReport:
        from pathlib import Path

        import numpy as np

        from .infer import Segmenter

        cfg = ctx.config
        if cfg.model is None:
            raise ValueError("stages.teeth_segmenter.config.model is not set: export an EasyPortrait model to ONNX "
                             "and give its path")
        path = Path(cfg.model) if Path(cfg.model).is_absolute() else ctx.root / cfg.model
        if not path.is_file():
            raise ValueError(f"stages.teeth_segmenter.config.model: {path} does not exist")
        seg = Segmenter(path, cfg)
        n = ctx.dataset.n_frames
        with_teeth = 0
        for i in ctx.progress.track(range(n), "teeth: easyportrait", unit="frame"):
            mask = seg.labels(ctx.input(f"ori_imgs/{i}.jpg")) == cfg.teeth_label
            with_teeth += int(mask.any())
            np.save(ctx.output(f"teeth_mask/{i}.npy"), mask)
        return StageReport(metrics={"frames_with_teeth": with_teeth, "input_size": list(seg.size),
                                    "provider": seg.provider})


@hookimpl
def being_register_stages(registry):
    registry.add(EasyPortraitTeeth)
