"""Runs a bundle's OpenVINO IR on the CPU plugin, in fp32 inference precision (the plugin
would otherwise drop to bf16 or f16 on CPUs that have them).

Every model in a process is read and compiled by one ``ov.Core`` (``openvino_core``): a
second Core in the same process, or a compiled model outliving the Core that made it, can
crash OpenVINO 2026 in native code (openvinotoolkit/openvino#35338), which a long test run
or a pipeline converting many bundles would hit sooner or later.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ..runner import Runner, import_runtime

__all__ = ["OpenVinoRunner", "openvino_core"]


@cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``."""
    return import_runtime("openvino", "openvino").Core()


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR on the CPU plugin in fp32 inference precision."""

    def activate(self) -> None:
        self.compiled = openvino_core().compile_model(str(self.model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.outputs = {o.get_any_name(): o for o in self.compiled.outputs}

    def deactivate(self) -> None:
        """Release the request, then the output ports, then the compiled model, here and in that
        order, rather than whenever the garbage collector gets to them."""
        self.request = None
        self.outputs = None
        self.compiled = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(feeds)
        return {name: np.array(result[port]) for name, port in self.outputs.items()}
