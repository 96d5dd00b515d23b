"""ONNX Runtime target: the torch.export ONNX graph, run on onnxruntime's CPU provider.

int8 is edgesdk's QDQ model (``edgesdk.calibration``) with each quantized MatMul and its bias
written as onnxruntime's integer kernel (``onnx_integer``): uint8 activations, the fast path on
CPUs without VNNI; layers with int8 weight blocks keep int8 bytes in the file and run as float
MatMuls (their weights dequantized once, when onnxruntime loads the model). With
``text_input="string"`` a text bundle takes strings: the tokenizer graph (``string_input``) runs
before the model, and its ids are compared with Python's on every verification text (the
bundle fails where one differs).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgesdk.runtime.runner import import_runtime
from edgesdk.spec import ModelSpec
from edgesdk.tokenization import graph_tokenization_gate

from .base import TARGETS, Target
from .onnx_integer import onnxruntime_form
from .string_input import string_model, string_spec_inputs

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

    def bundle_spec(self, spec: ModelSpec, text_input: str) -> ModelSpec:
        if spec.kind != "text" or text_input != "string":
            return spec
        return replace(spec, inputs=string_spec_inputs(), preprocessing=replace(spec.preprocessing,
                                                                                text_input="string"))

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        import_runtime("onnxruntime", self.extra)
        notes: dict[str, Any] = {"exporter": "torch.onnx.export(dynamo=True)", "opset": artifacts.onnx_opset}
        out = folder / self.model_file
        if precision == "fp32":
            shutil.copyfile(artifacts.onnx_fp32(), out)
        else:
            import onnx

            calibration = artifacts.calibration()
            onnx.save_model(onnxruntime_form(onnx.load(str(calibration.model))), str(out))
            notes |= {"int8": "edgesdk's QDQ model with each quantized MatMul and its bias as one onnxruntime "
                              "MatMulIntegerToFloat: uint8 activations, int8 per-channel weights, int8 embedding rows; "
                              "a layer with a second int8 weight (its rounding residual) as two; "
                              "layers with int8 weight blocks dequantized to float weights at load; "
                              "float layers whose float16 weights kept the budget stored so, cast to float32 at load",
                      **self.write_ranges(calibration, folder)}
        if self.bundle_spec(artifacts.classifier.spec, artifacts.text_input) is artifacts.classifier.spec:
            return notes
        return {**notes, **self._string_model(artifacts, out, out)}

    @staticmethod
    def _string_model(artifacts: Any, model: Path, out: Path) -> dict[str, Any]:
        """Write the string-in model; returns its notes with the tokenization gate's counts."""
        classifier = artifacts.classifier
        extensions = import_runtime("onnxruntime_extensions", "strings")
        tokenize = string_model(model, classifier.encoder(), classifier.tokenizer_file,
                                [t.name for t in classifier.spec.inputs], out)
        tokenizer = f"onnxruntime-extensions {extensions.__version__}"
        notes: dict[str, Any] = {"text_input": "string", "custom_ops": tokenizer}
        if artifacts.verification is not None:
            notes["tokenization"] = graph_tokenization_gate(
                classifier.encoder(), tokenize, tokenizer,
                (samples.items for _, samples in artifacts.verification.data.chunks()))
        return notes
