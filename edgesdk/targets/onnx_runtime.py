"""ONNX Runtime target: the torch.export ONNX graph, run on onnxruntime's CPU provider.

int8 is edgesdk's QDQ model (``edgesdk.calibration``): onnxruntime fuses each
DequantizeLinear -> MatMul into an integer MatMul with uint8 activations, the fast path on
CPUs without VNNI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgesdk.runtime.runner import import_runtime

from .base import TARGETS, Target

__all__ = ["OnnxRuntimeTarget"]


@TARGETS.register("onnx")
class OnnxRuntimeTarget(Target):
    name = "onnx"
    runtime = "onnxruntime"
    extra = "onnx"
    distribution = "onnxruntime"
    precisions = ("fp32", "int8")
    model_file = "model.onnx"
    purposes = {"model.onnx": "the model: onnxruntime runs it"}

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        import_runtime("onnxruntime", self.extra)
        notes = {"exporter": "torch.onnx.export(dynamo=True)", "opset": artifacts.onnx_opset}
        if precision == "fp32":
            shutil.copyfile(artifacts.onnx_fp32(), folder / self.model_file)
            return notes
        calibration = artifacts.calibration()
        shutil.copyfile(calibration.model, folder / self.model_file)
        return {**notes, "int8": "QDQ: uint8 activations, int8 per-channel weights, int8 embedding rows",
                **self.write_ranges(calibration, folder)}
