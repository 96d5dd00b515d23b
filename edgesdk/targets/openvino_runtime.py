"""OpenVINO target: IR (model.xml + model.bin) from the ONNX graph, run on OpenVINO's CPU plugin.

fp32 reads the float ONNX export through OpenVINO's ONNX frontend (``Core.read_model``;
``convert_model`` does the same conversion but forks a process to send telemetry, which
hangs without network and is unsafe beside the threads of JAX) and keeps dynamic shapes.
Inference runs with ``INFERENCE_PRECISION_HINT=f32`` so the CPU plugin does not drop to
bf16 or f16 on CPUs that have them. int8 converts edgesdk's QDQ model (the same
calibration as every other target): OpenVINO turns each Q/DQ pair into a FakeQuantize and
runs the quantized MatMuls and convolutions in int8 (a layer with a second int8 weight as
two int8 MatMuls); layers the calibration kept out of static int8 stay float, or with int8
weight blocks run as compressed weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgesdk.runtime.runner import import_runtime
from edgesdk.runtime.runners import openvino_core

from .base import TARGETS, Target

__all__ = ["OpenVinoTarget"]

_GENERATED = re.compile(r"[A-Za-z]+_\d+")


@TARGETS.register("openvino")
class OpenVinoTarget(Target):
    name = "openvino"
    runtime = "openvino"
    extra = "openvino"
    distribution = "openvino"
    precisions = ("fp32", "int8")
    model_file = "model.xml"
    purposes = {"model.xml": "the model's OpenVINO IR graph: OpenVINO runs it", "model.bin": "the IR's weights"}

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        ov = import_runtime("openvino", self.extra)
        notes: dict[str, Any] = {"converter": "openvino ONNX frontend (Core.read_model) on the ONNX export"}
        if precision == "fp32":
            source = artifacts.onnx_fp32()
        else:
            calibration = artifacts.calibration()
            source = calibration.model
            notes.update(int8="edgesdk's QDQ model: FakeQuantize on uint8 activations, int8 per-channel weights, "
                              "int8 embedding rows; float layers whose float16 weights kept the budget stored so, "
                              "computed in float32",
                         **self.write_ranges(calibration, folder))
        model = openvino_core().read_model(str(source))
        _stable_names(model)
        ov.save_model(model, str(folder / self.model_file), compress_to_fp16=False)
        return notes


def _stable_names(model: Any) -> None:
    """Rename OpenVINO's generated layer names (``Constant_6713``: a process-wide counter) by
    position, so the same model gives the same model.xml in any process."""
    for index, op in enumerate(model.get_ordered_ops()):
        if _GENERATED.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{index}")
