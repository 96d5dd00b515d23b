"""One runner per runtime, found by the bundle's target name (``RUNNERS.get("onnx")``).

Runners only load and run a model file; building bundles is ``edgesdk.targets``' job. The
loader, the verifier and the sample apps all run bundles through these classes, and
importing them never imports torch or a runtime (each runtime is imported on ``activate``).
"""

from ...registry import Registry
from ..runner import Runner
from .onnx_runner import OnnxRuntimeRunner
from .openvino_runner import OpenVinoRunner, openvino_core
from .tensorrt_runner import BUILD_SCRIPT, TensorRtRunner, tensorrt_unavailable_reason
from .tflite_runner import TfliteRunner

__all__ = ["RUNNERS", "OnnxRuntimeRunner", "OpenVinoRunner", "TensorRtRunner", "TfliteRunner",
           "tensorrt_unavailable_reason", "BUILD_SCRIPT", "openvino_core"]

RUNNERS: Registry[type[Runner]] = Registry("runtime")
for _name, _runner in (("onnx", OnnxRuntimeRunner), ("tflite", TfliteRunner), ("openvino", OpenVinoRunner),
                       ("tensorrt", TensorRtRunner)):
    RUNNERS.register(_name)(_runner)
