"""Runs a bundle's .onnx file in an onnxruntime InferenceSession on the CPU."""

from __future__ import annotations

import numpy as np

from ..runner import Runner, import_runtime

__all__ = ["OnnxRuntimeRunner"]


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
