"""Runs a bundle's OpenVINO IR on the CPU plugin, in fp32 inference precision (the plugin
would otherwise drop to bf16 or f16 on CPUs that have them)."""

from __future__ import annotations

import numpy as np

from ..runner import Runner, import_runtime

__all__ = ["OpenVinoRunner"]


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR on the CPU plugin in fp32 inference precision."""

    def activate(self) -> None:
        ov = import_runtime("openvino", "openvino")
        compiled = ov.Core().compile_model(str(self.model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = compiled.create_infer_request()
        self.outputs = {o.get_any_name(): o for o in compiled.outputs}

    def deactivate(self) -> None:
        self.request = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(feeds)
        return {name: np.array(result[port]) for name, port in self.outputs.items()}
