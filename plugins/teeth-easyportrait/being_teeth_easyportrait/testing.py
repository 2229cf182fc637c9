"""A tiny ONNX model with EasyPortrait's signature, for tests (Being ships no weights).

``[1, 3, H, W] -> [1, 8, H, W]``: a 1x1 convolution whose label-7 ("teeth") logit is the pixel's
brightness minus a threshold and whose other logits are 0, so bright pixels come out as teeth.
"""

from __future__ import annotations

from pathlib import Path


def save_tiny_model(path: Path, height: int = 48, width: int = 64, threshold: float = 1.0) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    weights = np.zeros((8, 3, 1, 1), np.float32)
    weights[7, :, 0, 0] = 1.0  # sum of the normalised channels
    bias = np.zeros(8, np.float32)
    bias[7] = -3 * threshold
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "B"], ["logits"])], "tiny_easyportrait",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, height, width])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
