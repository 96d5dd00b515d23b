"""ONNX Runtime target: the torch.export ONNX graph, run on onnxruntime's CPU provider.

int8 is edgesdk's QDQ model (``edgesdk.calibration``): onnxruntime fuses each
DequantizeLinear -> MatMul into an integer MatMul with uint8 activations, the fast path on
CPUs without VNNI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.runtime.runner import Runner, import_runtime

from .base import TARGETS, Target

__all__ = ["OnnxRuntimeTarget", "OnnxRuntimeRunner"]


class OnnxRuntimeRunner(Runner):
    """Runs a .onnx file in an onnxruntime InferenceSession on the CPU."""

    def activate(self) -> None:
        ort = import_runtime("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.model_path), options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


@TARGETS.register("onnx")
class OnnxRuntimeTarget(Target):
    name = "onnx"
    runtime = "onnxruntime"
    extra = "onnx"
    distribution = "onnxruntime"
    precisions = ("fp32", "int8")
    model_file = "model.onnx"
    runner_class = OnnxRuntimeRunner

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
