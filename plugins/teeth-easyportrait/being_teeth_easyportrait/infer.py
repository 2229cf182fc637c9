"""Letterboxed inference of a face-parsing ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Segmenter:
    def __init__(self, path: Path, cfg):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if (
            cfg.device == "auto" and "CUDAExecutionProvider" in available) else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ValueError(f"stages.teeth_segmenter.config.model: {path} is not a loadable ONNX model: {exc}") from None
        self.provider = self.session.get_providers()[0]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if cfg.input_size is not None:
            self.size = tuple(cfg.input_size)
        elif isinstance(inp.shape[2], int) and isinstance(inp.shape[3], int):
            self.size = (inp.shape[2], inp.shape[3])
        else:
            raise ValueError(f"{path} has a dynamic input size {inp.shape}; set input_size")
        self.mean = np.array(cfg.mean, np.float32)
        self.std = np.array(cfg.std, np.float32)

    def labels(self, image_path: Path) -> np.ndarray:
        """``[H, W]`` int label map of one frame at its own size."""
        from PIL import Image

        image = Image.open(image_path).convert("RGB")
        w, h = image.size
        mh, mw = self.size
        scale = min(mw / w, mh / h)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((mh, mw, 3), np.float32)
        canvas[:] = self.mean  # padding normalises to 0
        canvas[:rh, :rw] = np.asarray(image.resize((rw, rh), Image.BILINEAR), np.float32)
        x = ((canvas - self.mean) / self.std).transpose(2, 0, 1)[None]
        logits = self.session.run(None, {self.input_name: x})[0][0]
        lab = logits.argmax(0).astype(np.uint8)[:rh, :rw]
        return np.asarray(Image.fromarray(lab).resize((w, h), Image.NEAREST))
