"""edgesdk's activation smoothing written into the PyTorch model that full-integer LiteRT starts from.

edgesdk's int8 calibration migrates activation outliers into the weights of the layers that read
them (``calibration.smooth``: a layer's input divided per channel by a scale, its weight's input
columns multiplied by it, the same function), and the ONNX, OpenVINO and TensorRT int8 models
are quantized from that smoothed graph. LiteRT's full-integer model is converted by litert-torch
from PyTorch, so the same scales are written into a copy of the PyTorch model before it is
converted: each such ``nn.Linear`` reads ``x * (1 / scale)`` (a ``MUL`` in the .tflite) with its
weight's columns scaled. Without it, an int8 layer reading a LayerNorm output spends its levels
on a few outlier channels, as the ONNX int8 did before smoothing.

Embedding tables likewise: the ONNX int8 divides each column of a token table by its largest
magnitude before taking one int8 scale per row (``calibration.qdq.quantize_embeddings``), where
ai-edge-quantizer takes per-row scales of the table as it is. So each table of
``EMBEDDING_MIN_ROWS`` rows or more is written divided by its column scales, its lookups
multiplied back (``ColumnScaledEmbedding``: a ``MUL`` after the ``EMBEDDING_LOOKUP``). Measured
on the demo's topic MiniLM (722 texts, LiteRT, every other layer float): per-row int8 of the
table as it is cost a logit KL of 8.4e-5 and 0.77 expected changed answers, column-scaled
3.3e-5 and 0.26, as in the ONNX int8.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from edgesdk.calibration.qdq import EMBEDDING_MIN_ROWS, embedding_columns

__all__ = ["ColumnScaledEmbedding", "SmoothedLinear", "smoothed_model"]


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


class ColumnScaledEmbedding(nn.Module):
    """``embedding`` with its table's columns divided by their largest magnitudes and its lookups
    multiplied by them: the same function, with a table whose rows int8 holds evenly."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        columns = torch.from_numpy(embedding_columns(embedding.weight.detach().float().numpy()))
        self.register_buffer("columns", columns.to(embedding.weight.dtype))
        self.embedding = copy.deepcopy(embedding)
        with torch.no_grad():
            self.embedding.weight.div_(self.columns)

    @property
    def weight(self) -> torch.Tensor:
        """The original table, for code that reads an embedding's weight (its dtype, its shape)."""
        return self.embedding.weight * self.columns

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids) * self.columns


def smoothed_model(model: nn.Module, scales: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` with each ``nn.Linear`` named in ``scales`` (PyTorch module names, as
    calibration names layers) a ``SmoothedLinear`` and each ``nn.Embedding`` of at least
    ``EMBEDDING_MIN_ROWS`` rows a ``ColumnScaledEmbedding``; other layers are left as they are."""
    out = copy.deepcopy(model)
    for name, layer in list(out.named_modules()):
        scale = scales.get(name)
        if isinstance(layer, nn.Linear) and scale is not None and layer.in_features == len(scale):
            _replace(out, name, SmoothedLinear(layer, scale))
        elif isinstance(layer, nn.Embedding) and layer.num_embeddings >= EMBEDDING_MIN_ROWS:
            _replace(out, name, ColumnScaledEmbedding(layer))
    return out


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)
