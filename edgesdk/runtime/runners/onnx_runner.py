"""Runs a bundle's .onnx file in an onnxruntime InferenceSession on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runner import Runner, import_runtime

__all__ = ["OnnxRuntimeRunner", "ort_session"]


def ort_session(model: Path | bytes, extensions: bool = False, threads: int | None = None):
    """An onnxruntime CPU session for a model file or its bytes; ``extensions`` registers
    onnxruntime-extensions' operators (the tokenizer of a string-in text model); ``threads``
    fixes the intra-op threads (one inter-op thread), onnxruntime's default otherwise."""
    ort = import_runtime("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if extensions:
        options.register_custom_ops_library(import_runtime("onnxruntime_extensions", "strings").get_library_path())
    # onnxruntime 1.32 rewrites int8 activations to uint8 (QDQS8ToU8Transformer) after propagating
    # Q/DQ pairs past reshapes, and fails to load a model where both apply: TensorRT's symmetric int8
    # QDQ of a MobileViT ("output_dtype INT8 does not match y_zero_point type UINT8"). Without the
    # rewrite it computes the same integers; edgesdk's uint8 models have nothing for it to rewrite.
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"], disabled_optimizers=["QDQS8ToU8Transformer"])


class OnnxRuntimeRunner(Runner):
    """Runs a .onnx file in an onnxruntime InferenceSession on the CPU."""

    def activate(self) -> None:
        self.session = ort_session(self.model_path, any(t.dtype == "string" for t in self.spec.inputs))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
