"""TensorRT bundles run as an engine built on the GPU they run on, by the bundle's own
``build_engine.py``; edgesdk does not run engines itself, so this runner says how."""

from __future__ import annotations

import importlib.util
import shutil

from ...errors import TargetError
from ..runner import Runner

__all__ = ["TensorRtRunner", "tensorrt_unavailable_reason", "BUILD_SCRIPT"]

BUILD_SCRIPT = "build_engine.py"


def tensorrt_unavailable_reason() -> str:
    """Why this machine cannot check a TensorRT engine (always a reason: engines are built on their GPU)."""
    gpu = shutil.which("nvidia-smi") is not None
    if importlib.util.find_spec("tensorrt") is None:
        no_gpu = "" if gpu else " and there is no NVIDIA GPU"
        return (f"the tensorrt package is not installed here (its pip packages fetch from NVIDIA's server){no_gpu}: "
                f"build the engine with {BUILD_SCRIPT} on the target GPU")
    if not gpu:
        return f"no NVIDIA GPU on this machine: build and check the engine with {BUILD_SCRIPT} on the target GPU"
    return f"engine parity runs on the target GPU after {BUILD_SCRIPT}; edgesdk does not run engines itself"


class TensorRtRunner(Runner):
    """Refuses to run: a TensorRT bundle carries the builder of its engine, not an engine. Its
    parity is checked by running the same model file in onnxruntime, said as such."""

    proxy_runtime = "onnx"
    proxy = ("TensorRT's model.onnx (for int8: its symmetric Q/DQ) run in onnxruntime as a proxy; the engine was "
             "not built here")

    @classmethod
    def unavailable_reason(cls) -> str:
        return tensorrt_unavailable_reason()

    def activate(self) -> None:
        raise TargetError(f"a TensorRT bundle runs as an engine built on its GPU: run {BUILD_SCRIPT} there "
                          f"({tensorrt_unavailable_reason()})")
