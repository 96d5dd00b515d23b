"""edgesdk's activation smoothing written into the PyTorch model that full-integer LiteRT starts from.

edgesdk's int8 calibration migrates activation outliers into the weights of the layers that read
them (``calibration.smooth``: a layer's input divided per channel by a scale, its weight's input
columns multiplied by it, the same function), and the ONNX, OpenVINO and TensorRT int8 models
are quantized from that smoothed graph. LiteRT's full-integer model is converted by litert-torch
from PyTorch, so the same scales are written into a copy of the PyTorch model before it is
converted: each such ``nn.Linear`` reads ``x * (1 / scale)`` (a ``MUL`` in the .tflite) with its
weight's columns scaled. Without it, an int8 layer reading a LayerNorm output spends its levels
on a few outlier channels, as the ONNX int8 did before smoothing.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["SmoothedLinear", "smoothed_model"]


class SmoothedLinear(nn.Module):
    """``linear`` reading its input divided per channel by ``scale``, its weight's input columns
    multiplied by ``scale``: the same function, with smaller outliers in what it quantizes."""

    def __init__(self, linear: nn.Linear, scale: np.ndarray) -> None:
        super().__init__()
        s = torch.from_numpy(np.asarray(scale, np.float32)).to(linear.weight.dtype)
        self.register_buffer("inverse", 1 / s)
        self.linear = copy.deepcopy(linear)
        with torch.no_grad():
            self.linear.weight.mul_(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inverse)


def smoothed_model(model: nn.Module, scales: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` with each ``nn.Linear`` named in ``scales`` (PyTorch module names, as
    calibration names layers) a ``SmoothedLinear``; other layers are left as they are."""
    out = copy.deepcopy(model)
    for name, scale in sorted(scales.items()):
        layer = out.get_submodule(name)
        if isinstance(layer, nn.Linear) and layer.in_features == len(scale):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, SmoothedLinear(layer, scale))
    return out
